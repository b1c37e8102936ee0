"""`pgdr backup` starts pg_basebackup before pydantic (issue 17 item 4, round 2): a few keys
are read by hand (backup/early.py) and the config is validated beside the copy. What that
must never cost:
- the hand reading is the model's: every key it reads has the model's default, and on
  thousands of random files it either declines (the backup validates first, as before) or
  reads exactly what the validated config says;
- an invalid config (bad type, unknown key, bad value, in a key the early reader reads or
  one it does not) still gives one line and exit 2, the same line as the full CLI, with no
  pg_basebackup left (/proc), nothing complete or partial in the repository, and nothing
  left on the server (no walsender, no temporary slot, no backup in progress);
- SIGKILL of pgdr at any moment of the new early phase leaves no pg_basebackup and nothing
  complete, and the next backup completes.
Processes are found through /proc and the server's views, never through pgdr's report.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pgdr.backup.early import EARLY_DEFAULTS, NODE_NAME, CopyPlan, read_early
from pgdr.config import Config, NodeConfig, validate_config
from pgdr.config_file import read_config_file
from pgdr.errors import ConfigError
from pgdr.pg.connect import session
from pgdr.sandbox import sandbox as sb
from tests.conftest import run_cli
from tests.procs import basebackups, wait_for

# ---- the hand reading against the model -------------------------------------------------


def test_every_key_read_early_has_the_models_default() -> None:
    models: dict[str, Any] = {name: field.annotation for name, field in Config.model_fields.items()}
    for (section, key), default in EARLY_DEFAULTS.items():
        field = NodeConfig.model_fields[key] if section == "nodes" else models[section].model_fields[key]
        assert field.default == default, (section, key, field.default, default)
    pattern = next(m.pattern for m in NodeConfig.model_fields["name"].metadata if hasattr(m, "pattern"))
    assert pattern == NODE_NAME.pattern


# Values for the keys the early reader reads, valid and not: types pydantic may coerce or
# refuse (bool for a number, int for a string), durations, paths, a table for a scalar.
CANDIDATES: dict[tuple[str, str], list[object]] = {
    ("cluster", "mode"): ["auto", "physical", "logical", "AUTO", 1, True],
    ("backup", "compression"): ["server-zstd:1", "none", "client-gzip:5", "bogus-zstd", "", 17, ["none"]],
    ("backup", "checkpoint"): ["fast", "spread", "Fast", "slow", 1, False],
    ("pg", "bindir"): ["/usr/lib/postgresql/15/bin", "bin", "~/pg", 15, True],
    ("pg", "os_user"): ["postgres", "other", "", 0, ["postgres"]],
    ("pg", "stall_timeout"): [120, 0.5, "5m", "90s", " 2h ", "10x", 0, -1, "0s", True, False, "1e3", 1e308, "inf"],
    ("repository", "url"): ["s3://b/p", "http://x"],
    ("repository", "encryption_key_env"): ["PGDR_KEY"],
}


def _random_config(rng: random.Random) -> str:
    sections: dict[str, list[str]] = {"cluster": [], "repository": ['path = "repo"'], "backup": [], "pg": []}
    for (section, key), values in CANDIDATES.items():
        if rng.random() < 0.4:  # mostly one of the first two (valid) values, so many files are valid
            value = rng.choice(values[:2] if rng.random() < 0.8 else values)
            sections[section].append(f"{key} = {json.dumps(value)}")
    if rng.random() < 0.1:
        sections["backup"].append('compresion = "none"')  # a key no model has
    text = "".join(f"[{name}]\n" + "".join(f"{line}\n" for line in lines) + "\n"
                   for name, lines in sections.items() if lines or name == "repository")
    roles = rng.choice([["primary", "standby"], ["primary"], [None, "primary"]] if rng.random() < 0.8 else
                       [["standby", "standby"], ["primary", "primary"], ["Primary"]])
    for i, role in enumerate(roles):
        name = rng.choice([f"db{i}", "db.1-x_"] if rng.random() < 0.9 else ["bad name"])
        conninfo = rng.choice(["host=/tmp port=5432", "postgresql://u@h/db", ""] if rng.random() < 0.9
                              else ["host='unterminated"])
        text += f'[[nodes]]\nname = "{name}"\nconninfo = "{conninfo}"\n'
        text += f'role = "{role}"\n\n' if role is not None else "\n"
    return text


def test_the_early_reading_is_the_validated_configs_or_none(tmp_path: Path) -> None:
    """Random files: wherever the early reader answers and the config is valid, its plan is
    exactly the validated config's; it never answers for a config the full CLI refuses
    before starting (logical mode, object store) and answers for most plain valid ones."""
    rng = random.Random(4)
    path = tmp_path / "pgdr.toml"
    answered = valid_answered = valid = 0
    for _ in range(3000):
        path.write_text(_random_config(rng))
        raw = read_config_file(path)
        plan = read_early(json.loads(json.dumps(raw)))  # the reader must not depend on the dict's identity
        try:
            config: Config | None = validate_config(raw, path)
        except ConfigError:
            config = None
        answered += plan is not None
        if config is None:
            continue
        valid += 1
        if plan is not None:
            valid_answered += 1
            assert plan == CopyPlan.of(config), path.read_text()
            assert config.cluster.mode != "logical" and not plan.store
    assert valid > 200 and valid_answered > valid // 3 and answered > valid_answered


def test_a_difference_between_the_readings_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "pgdr.toml"
    path.write_text('[repository]\npath = "repo"\n[[nodes]]\nname = "db1"\nrole = "primary"\nconninfo = "host=/tmp"\n')
    raw = read_config_file(path)
    plan = read_early(raw)
    assert plan is not None
    config = validate_config(raw, path)
    plan.hold_to(config, path)
    other = config.model_copy(update={"backup": config.backup.model_copy(update={"checkpoint": "spread"})})
    with pytest.raises(ConfigError) as caught:
        plan.hold_to(other, path)
    assert caught.value.exit_code == 2 and "checkpoint" in caught.value.message


# ---- against a real server ----------------------------------------------------------------

def server_leftovers(box: sb.Sandbox) -> list[str]:
    """What a killed or vetoed base backup could leave on the primary."""
    with session(box.conninfo(box.primary, "postgres")) as conn:
        rows = conn.execute(
            "select 'walsender ' || pid from pg_stat_activity where backend_type = 'walsender' "
            "and application_name = 'pgdr_backup' "
            "union all select 'slot ' || slot_name from pg_replication_slots where temporary "
            "union all select 'backup in progress ' || pid from pg_stat_progress_basebackup").fetchall()
    return [next(iter(r.values())) if isinstance(r, dict) else r[0] for r in rows]


def assert_server_clean(box: sb.Sandbox) -> None:
    left: list[str] = []

    def clean() -> bool:
        nonlocal left
        left = server_leftovers(box)
        return not left
    deadline = time.monotonic() + 15
    while not clean():
        assert time.monotonic() < deadline, f"left on the server after 15 s: {left}"
        time.sleep(0.05)


def complete_or_partial(repo: Path) -> list[str]:
    backups = repo / "backups"
    return sorted(p.name for p in backups.iterdir()) if backups.is_dir() else []


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def early_config(box: sb.Sandbox, name: str, extra: str = "") -> Path:
    """The sandbox's config with its own repository (and `extra` appended)."""
    folder = box.root / f"early-{name}"
    folder.mkdir(exist_ok=True)
    text = box.config_path.read_text().replace('path = "repo"', f'path = "{folder / "repo"}"')
    text = re.sub(r'(data_dir|log_file) = "(?!/)', lambda m: f'{m.group(1)} = "{box.root}/', text)
    path = folder / "pgdr.toml"
    path.write_text(text + "\n" + extra)
    return path


def watched_run(config: Path, marker: Path) -> tuple[subprocess.CompletedProcess[str], bool]:
    """Run `pgdr backup` (the fast path: python -m pgdr) and watch /proc for its copy."""
    env = {**os.environ, "PGDR_CONFIG": str(config)}
    proc = subprocess.Popen([sys.executable, "-m", "pgdr", "backup"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = False
    try:
        while proc.poll() is None:
            seen = seen or bool(basebackups(marker))
    finally:
        out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), seen


# (case, text appended to the config, the early reader accepts it so the copy starts first;
# None: pg_basebackup refuses the argument at once, so it may end before /proc shows it)
INVALID: list[tuple[str, str, bool | None]] = [
    ("unknown key in a section read early", '[backup]\ncompresion = "none"\n', True),
    ("bad type in a key not read early", '[retention]\nkeep_last = "many"\n', True),
    ("bad value in a key not read early", "[diagnose]\nquery_chars = 5\n", True),
    ("unknown section", "[backups]\ncompression = \"none\"\n", True),
    # pg_basebackup takes `--compress=5` (gzip level 5); the model does not: the veto stops it
    ("bad value in a key read early", '[backup]\ncompression = "5"\n', True),
    # pg_basebackup fails at once on this one: the config's error is still what is said
    ("bad value that pg_basebackup refuses too", '[backup]\ncompression = "bogus-zstd:1"\n', None),
    ("bad type in a key read early", "[backup]\ncompression = 17\n", False),
    ("bad literal in a key read early", '[backup]\ncheckpoint = "slow"\n', False),
]


@pytest.mark.parametrize(("case", "extra", "copy_first"), INVALID, ids=[c[0] for c in INVALID])
def test_an_invalid_config_is_one_line_exit_2_and_leaves_nothing(shared_sandbox: sb.Sandbox, case: str,
                                                                  extra: str, copy_first: bool | None) -> None:
    config = early_config(shared_sandbox, re.sub(r"\W+", "-", case), extra)
    marker = config.parent
    result, copy_started = watched_run(config, marker)
    line = one_line(result.stderr)
    assert result.returncode == 2, (result.returncode, line)
    # the copy started before the validation for the files the early reader accepts, and
    # never for the ones it declines (those are validated first, as before)
    assert copy_first is None or copy_started == copy_first, (case, copy_started)
    assert not basebackups(marker)
    assert not [n for n in complete_or_partial(marker / "repo")], complete_or_partial(marker / "repo")
    assert_server_clean(shared_sandbox)
    # the same line as the full (Typer) CLI, which validates before anything starts
    full = subprocess.run([sys.executable, "-c", "import sys; from pgdr.cli.main import run; "
                           "sys.argv = ['pgdr', 'backup']; run()"], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PGDR_CONFIG": str(config)})
    assert full.returncode == 2 and one_line(full.stderr) == line


def test_sigkill_in_the_early_phase_leaves_no_copy_and_nothing_complete(shared_sandbox: sb.Sandbox) -> None:
    """Kills at fixed delays from launch (before and around pg_basebackup's start), the
    moment pg_basebackup appears, and while the config is being validated beside it."""
    config = early_config(shared_sandbox, "kills")
    marker = config.parent
    repo = marker / "repo"
    env = {**os.environ, "PGDR_CONFIG": str(config)}
    moments: list[float | str] = [0.0, 0.02, 0.04, 0.06, 0.08, 0.1, 0.13, 0.16, "copy seen", "copy + 30 ms"]
    for moment in moments:
        before = [n for n in complete_or_partial(repo) if not n.endswith(".partial")]
        proc = subprocess.Popen([sys.executable, "-m", "pgdr", "backup"], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            if isinstance(moment, float):
                time.sleep(moment)
            else:
                wait_for("pg_basebackup", lambda p=proc: basebackups(marker) or p.poll() is not None)  # type: ignore[misc]
                if moment == "copy + 30 ms":
                    time.sleep(0.03)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
        wait_for(f"pg_basebackup to end with pgdr (kill at {moment})", lambda: not basebackups(marker),
                 timeout=15)
        time.sleep(0.2)  # nothing may come back (a child started late)
        assert not basebackups(marker), moment
        after = [n for n in complete_or_partial(repo) if not n.endswith(".partial")]
        assert after == before, (moment, before, after)
        assert_server_clean(shared_sandbox)
    result = run_cli("backup", "--json", config=config)
    assert result.returncode == 0, result.stderr
    done = Path(json.loads(result.stdout)["path"])
    assert (done / "pgdr.json").is_file() and not [n for n in complete_or_partial(repo) if n.endswith(".partial")]
