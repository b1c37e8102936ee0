"""Config loading and the errors a user meets: one line, the right exit code."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pgdr.config import load_config, parse_duration
from pgdr.errors import ConfigError
from tests.conftest import run_cli

VALID = """
[cluster]
name = "prod"
[repository]
path = "repo"
[[nodes]]
name = "db1"
role = "primary"
conninfo = "host=/nonexistent/socket-dir port=1 user=postgres dbname=postgres password=s3cret"
[retention]
keep_last = 3
keep_within = "2d"
"""


def test_valid_config_resolves_paths_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "pgdr.toml").write_text(VALID)
    config = load_config(tmp_path / "pgdr.toml")
    assert config.repository.path == tmp_path / "repo"
    assert config.retention.keep_within == 2 * 86400
    assert config.configured_primary.name == "db1"


@pytest.mark.parametrize("text", ["7d", "12h", "30m", "90s", "15"])
def test_durations(text: str) -> None:
    assert parse_duration(text) > 0


def test_unknown_key_is_named(tmp_path: Path) -> None:
    (tmp_path / "pgdr.toml").write_text(VALID.replace("keep_last = 3", "keep_lats = 3"))
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "pgdr.toml")
    assert "retention.keep_lats" in err.value.message


def test_malformed_toml_is_one_line_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "pgdr.toml"
    bad.write_text("[repository\npath = 1\n")
    result = run_cli("status", config=bad)
    assert result.returncode == 2
    assert "not valid TOML" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_wrong_type_names_key_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "pgdr.toml"
    bad.write_text(VALID.replace("keep_last = 3", 'keep_last = "many"'))
    result = run_cli("list", config=bad)
    assert result.returncode == 2
    assert "retention.keep_last" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_config_exit_2(tmp_path: Path) -> None:
    result = run_cli("--config", str(tmp_path / "absent.toml"), "status")
    assert result.returncode == 2 and "config file not found" in result.stderr


def test_unreachable_primary_is_one_line_exit_1_and_hides_password(tmp_path: Path) -> None:
    (tmp_path / "pgdr.toml").write_text(VALID)
    result = run_cli("backup", config=tmp_path / "pgdr.toml")
    assert result.returncode == 1
    assert "no primary reachable" in result.stderr
    assert "s3cret" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_status_with_unreachable_primary_fails_without_leaking_password(tmp_path: Path) -> None:
    (tmp_path / "pgdr.toml").write_text(VALID)
    result = run_cli("status", "--json", config=tmp_path / "pgdr.toml")
    assert result.returncode == 1
    assert "s3cret" not in result.stdout + result.stderr
    assert '"status": "fail"' in result.stdout


def test_every_duration_key_takes_the_one_duration_type(tmp_path: Path) -> None:
    (tmp_path / "pgdr.toml").write_text(VALID + '[pg]\nstall_timeout = "2m"\nstatement_timeout = 0\n'
                                        '[status]\nmax_backup_age = "1d"\n[serve]\nhealth_timeout = "1.5s"\n'
                                        '[[schedule]]\njob = "backup"\nevery = "1w"\n')
    config = load_config(tmp_path / "pgdr.toml")
    assert config.pg.stall_timeout == 120 and config.pg.statement_timeout == 0
    assert config.status.max_backup_age == 86400 and config.serve.health_timeout == 1.5
    assert config.schedule[0].every == 7 * 86400


@pytest.mark.parametrize("key, value", [("stall_timeout", '"soon"'), ("stall_timeout", "0"),
                                        ("connect_timeout", '"-5s"')])
def test_a_bad_duration_is_one_line_exit_2(tmp_path: Path, key: str, value: str) -> None:
    (tmp_path / "pgdr.toml").write_text(VALID + f"[pg]\n{key} = {value}\n")
    result = run_cli("status", config=tmp_path / "pgdr.toml")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and f"pg.{key}" in result.stderr


ENV_REF = VALID.replace(
    'conninfo = "host=/nonexistent/socket-dir port=1 user=postgres dbname=postgres password=s3cret"',
    'conninfo = "${PGDR_TEST_URL}"')


def test_conninfo_from_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pgdr.toml").write_text(ENV_REF)
    monkeypatch.setenv("PGDR_TEST_URL", "postgresql://app:s3cret@127.0.0.1:1/app")
    config = load_config(tmp_path / "pgdr.toml")
    assert config.configured_primary.conninfo == "postgresql://app:s3cret@127.0.0.1:1/app"


def test_missing_environment_variable_is_one_line_exit_2(tmp_path: Path) -> None:
    (tmp_path / "pgdr.toml").write_text(ENV_REF)
    env = {k: v for k, v in os.environ.items() if k != "PGDR_TEST_URL"}
    result = run_cli("status", config=tmp_path / "pgdr.toml", env=env)
    assert result.returncode == 2
    assert "nodes.0.conninfo: environment variable PGDR_TEST_URL is not set" in result.stderr
    assert "Traceback" not in result.stderr


def test_expanded_url_password_is_never_printed(tmp_path: Path) -> None:
    (tmp_path / "pgdr.toml").write_text(ENV_REF)
    env = {**os.environ, "PGDR_TEST_URL": "postgresql://app:s3cretURL@127.0.0.1:1/app"}
    for args in (["status", "--json"], ["backup"], ["diagnose"]):
        result = run_cli(*args, config=tmp_path / "pgdr.toml", env=env)
        assert result.returncode != 0
        assert "s3cretURL" not in result.stdout + result.stderr, args

