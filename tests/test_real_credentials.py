"""pgdr on a hand-built cluster (peer + scram, replicator role, pg_basebackup -R standby),
with passwords only in a root-only PGPASSFILE, and again only in PGPASSWORD.

Outcomes are checked on the servers themselves (psql as postgres over peer), not by
pgdr's own report; every run_cli has a timeout, so a password prompt cannot hang.
"""

from __future__ import annotations

import json
import pwd
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pgdr.restore.pitr import stop_restored
from tests.conftest import run_cli
from tests.real_cluster import RealCluster


def _no_secret(cluster: RealCluster, *texts: str) -> None:
    for secret in cluster.secrets():
        for text in texts:
            assert secret not in text


@pytest.mark.parametrize("variant", ["passfile", "password"])
def test_everything_works_with_passwords_only_outside_pgdr_toml(real_cluster: RealCluster,
                                                                variant: str) -> None:
    config = real_cluster.write_config(f"creds-{variant}")
    env = real_cluster.env_with_passfile() if variant == "passfile" else real_cluster.env_with_password()
    seen: list[str] = []

    def cli(*args: str, timeout: float = 180) -> str:
        result = run_cli(*args, config=config, env=env, timeout=timeout)
        seen.extend([result.stdout, result.stderr])
        assert result.returncode == 0, (args, result.stdout[-2000:], result.stderr)
        return result.stdout

    try:
        cli("archiver", "start", timeout=60)
        if variant == "passfile":
            private = _private_passfile_of_receiver(config)
            st, parent = private.stat(), private.parent.stat()
            postgres = pwd.getpwnam("postgres")
            assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (postgres.pw_uid, 0o600)
            assert (parent.st_uid, stat.S_IMODE(parent.st_mode)) == (postgres.pw_uid, 0o700)
            assert real_cluster.passwords["dba"] in private.read_text()
        app_name = json.loads(cli("archiver", "status", "--json")).get("application_name")
        streaming = real_cluster.psql("select application_name from pg_stat_replication "
                                      "where state = 'streaming' and application_name <> 'walreceiver'")
        assert streaming, "no archiver walsender streams on the primary"
        if app_name:
            assert app_name in streaming.splitlines()
        cli("backup")
        cli("verify", "latest", timeout=300)
        status = json.loads(run_cli("status", "--json", config=config, env=env, timeout=60).stdout)
        assert status["status"] == "ok", [c for c in status["checks"] if c["status"] != "ok"]
        standby = next(c for c in status["checks"] if c["name"] == "standby db2")
        assert standby["status"] == "ok"
        # a row written after the backup must come back through the archive
        new_id = 100001 if variant == "passfile" else 100002
        real_cluster.psql(f"insert into customers values ({new_id}, 'after{new_id}@example.com')", dbname="app")
        real_cluster.psql("select pg_switch_wal()")
        target = real_cluster.root / f"restored-{variant}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not _archived_past_switch(config):
            time.sleep(0.3)
        out = cli("restore", "--latest", "--target-dir", str(target), "--json", timeout=300)
        restored = json.loads(out)
        try:
            got = real_cluster.programs.run("psql", [
                "-X", "-A", "-t", "-h", restored["socket_dir"], "-p", str(restored["port"]), "-U", "postgres",
                "-d", "app", "-c", f"select count(*) from customers where id = {new_id}"], timeout=30)
            assert got.stdout.strip() == "1"
        finally:
            stop_restored(target, real_cluster.programs)
    finally:
        run_cli("archiver", "stop", config=config, env=env, timeout=60)
    _no_secret(real_cluster, *seen)
    if variant == "passfile":
        assert not private.exists() and not private.parent.exists()  # removed with pg_receivewal


def _private_passfile_of_receiver(config: Path) -> Path:
    """PGPASSFILE in the running pg_receivewal's environment (read from /proc, as root)."""
    incoming = str(config.parent / "repo" / "wal" / "incoming")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and cmdline[0].endswith(b"pg_receivewal") and incoming.encode() in cmdline:
            found = [e.split(b"=", 1)[1] for e in environ if e.startswith(b"PGPASSFILE=")]
            assert found, "pg_receivewal runs without a PGPASSFILE"
            return Path(found[0].decode())
    raise AssertionError("no pg_receivewal for this repository")


def _archived_past_switch(config: Path) -> bool:
    state = json.loads((config.parent / "repo" / "archiver" / "state.json").read_text())
    return bool(state.get("archived_count"))


@pytest.mark.parametrize("env_of", [RealCluster.env_with_passfile, RealCluster.env_with_password],
                         ids=["passfile", "password"])
def test_wrong_password_is_one_line_naming_user_and_host(real_cluster: RealCluster,
                                                         env_of: Callable[..., dict[str, str]]) -> None:
    config = real_cluster.write_config("creds-wrong")
    env = env_of(real_cluster, wrong=True)
    where = f"dba at 127.0.0.1:{real_cluster.primary.port}"
    for args in (["backup"], ["backup", "--logical"], ["archiver", "start"]):
        result = run_cli(*args, config=config, env=env, timeout=60)
        assert result.returncode != 0, args
        assert f"password authentication failed for user {where}" in result.stderr, (args, result.stderr)
        assert "PGPASSFILE" in result.stderr and "fail over" not in result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    state = json.loads((config.parent / "repo" / "archiver" / "state.json").read_text())
    assert state["failures"] >= 1 and "password authentication failed" in state["last_failure"]
    assert not state["receiving"]
    status = run_cli("status", "--json", config=config, env=env, timeout=60)
    assert status.returncode == 1
    primary = next(c for c in json.loads(status.stdout)["checks"] if c["name"] == "primary")
    assert "PGPASSFILE" in primary["hint"] and "fail over" not in primary["hint"]
    diag = run_cli("diagnose", "--json", config=config, env=env, timeout=60)
    assert diag.returncode == 1
    for finding in json.loads(diag.stdout)["findings"]:
        if finding["severity"] == "critical":
            assert "failover" not in (finding["action"] or ""), finding


def test_hand_built_standby_is_healthy_in_status_and_diagnose(real_cluster: RealCluster) -> None:
    """pg_basebackup -R: application_name `walreceiver`, a slot not named after the node."""
    assert real_cluster.psql("select application_name from pg_stat_replication") == "walreceiver"
    config = real_cluster.write_config("creds-standby")
    env = real_cluster.env_with_passfile()
    status = run_cli("status", "--json", config=config, env=env, timeout=60)
    standby = next(c for c in json.loads(status.stdout)["checks"] if c["name"] == "standby db2")
    assert standby["status"] == "ok", standby
    node = next(n for n in json.loads(status.stdout)["nodes"] if n["name"] == "db2")
    assert node["streaming"] is True and node["replay_lag_s"] is not None
    if node["replay_lag_bytes"] == 0:  # idle and caught up: no lag, however old the last commit
        assert node["replay_lag_s"] == 0.0
    diag = run_cli("diagnose", "--json", config=config, env=env, timeout=60)
    findings = json.loads(diag.stdout)["findings"]
    replication = [f for f in findings if f["concern"] == "replication"]
    assert any(f["severity"] == "ok" and "db2" in f["summary"] for f in replication), replication
    assert not any(f["severity"] == "critical" for f in replication), replication
    for f in findings:
        assert real_cluster.standby_slot not in (f.get("action") or "") or "drop" not in (f.get("action") or ""), f


def test_archive_lag_is_this_repositorys_and_unknown_is_not_green(real_cluster: RealCluster) -> None:
    config = real_cluster.write_config("lag-own")
    env = real_cluster.env_with_passfile()
    assert run_cli("archiver", "start", config=config, env=env, timeout=60).returncode == 0
    try:
        own = json.loads(run_cli("status", "--json", config=config, env=env, timeout=60).stdout)
        lag = next(c for c in own["checks"] if c["name"] == "archive lag")
        assert lag["status"] == "ok", lag
        # another repository on the same primary: that archiver is not ours
        other = real_cluster.write_config("lag-other")
        theirs = json.loads(run_cli("status", "--json", config=other, env=env, timeout=60).stdout)
        lag = next(c for c in theirs["checks"] if c["name"] == "archive lag")
        assert lag["status"] == "fail" and "not streaming" in lag["summary"], lag
        # the same repository seen by a role without pg_monitor: positions are NULL
        plain = real_cluster.write_config("lag-plain", user="app", repo=str(config.parent / "repo"))
        # physical mode forced: auto-detection would call this role logical-only
        plain.write_text(plain.read_text().replace('name = "lag-plain"', 'name = "lag-plain"\nmode = "physical"'))
        hidden = json.loads(run_cli("status", "--json", config=plain, env=env, timeout=60).stdout)
        lag = next(c for c in hidden["checks"] if c["name"] == "archive lag")
        assert lag["status"] == "fail" and "unknown" in lag["summary"] and "pg_monitor" in lag["hint"], lag
    finally:
        run_cli("archiver", "stop", config=config, env=env, timeout=60)


def test_waiting_for_an_instance_stops_at_once_on_authentication_failure(real_cluster: RealCluster) -> None:
    """The old bug: peer refused pgdr and the wait retried silently for 600 s. The primary's
    socket is peer-only, so waiting on it as a restored instance must raise at once."""
    from pgdr.errors import AuthenticationFailed
    from pgdr.restore.recovery import wait_until_promoted

    with pytest.raises(AuthenticationFailed) as err:
        wait_until_promoted(real_cluster.primary, timeout=600)  # pytest's 300 s timeout would fire first
    assert "peer authentication failed for user postgres" in err.value.message


def test_missing_replication_privilege_names_the_grant(real_cluster: RealCluster) -> None:
    config = real_cluster.write_config("priv-missing", user="app")
    config.write_text(config.read_text().replace('name = "priv-missing"', 'name = "priv-missing"\nmode = "physical"'))
    result = run_cli("backup", config=config, env=real_cluster.env_with_passfile(), timeout=60)
    assert result.returncode == 1
    assert "neither REPLICATION nor superuser" in result.stderr and "ALTER ROLE app REPLICATION" in result.stderr
    assert "fail over" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_archiver_without_replication_privilege_records_the_grant(real_cluster: RealCluster) -> None:
    config = real_cluster.write_config("priv-archiver", user="app")
    config.write_text(config.read_text().replace('name = "priv-archiver"', 'name = "priv-archiver"\nmode = "physical"'))
    env = real_cluster.env_with_passfile()
    result = run_cli("archiver", "start", config=config, env=env, timeout=60)
    assert result.returncode == 1, result.stdout
    assert "REPLICATION" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    state = json.loads((config.parent / "repo" / "archiver" / "state.json").read_text())
    assert state["failures"] >= 1 and not state["receiving"] and "REPLICATION" in state["last_failure"]


def test_archiver_is_not_streaming_when_its_replication_connection_is_refused(real_cluster: RealCluster) -> None:
    """SQL works, the replication connection does not (pg_hba rejects it): pg_receivewal
    fails, and `archiver start` must say so instead of "streaming"."""
    hba = real_cluster.primary.data_dir / "pg_hba.conf"
    original = hba.read_text()
    hba.write_text("host replication dba 127.0.0.1/32 reject\n" + original)
    real_cluster.psql("select pg_reload_conf()")
    config = real_cluster.write_config("repl-refused")
    env = real_cluster.env_with_passfile()
    try:
        result = run_cli("archiver", "start", config=config, env=env, timeout=60)
        assert result.returncode == 1, result.stdout
        assert "pg_hba.conf rejects replication connection" in result.stderr, result.stderr
        assert "streaming (pid" not in result.stdout
        state = json.loads((config.parent / "repo" / "archiver" / "state.json").read_text())
        assert not state["receiving"] and state["failures"] >= 1
        assert real_cluster.psql("select count(*) from pg_stat_replication "
                                 "where application_name like 'pgdr_archiver%'") == "0"
    finally:
        hba.write_text(original)
        real_cluster.psql("select pg_reload_conf()")
        run_cli("archiver", "stop", config=config, env=env, timeout=60)


def test_passfile_named_in_the_conninfo_reaches_the_programs(real_cluster: RealCluster) -> None:
    """conninfo = "... passfile=/root-only/pgpass": libpq in pgdr reads it; pg_basebackup
    and pg_receivewal, running as postgres, get a private copy instead of that path."""
    passfile = real_cluster.root_passfile()
    config = real_cluster.write_config("creds-conninfo-passfile")
    config.write_text(config.read_text().replace("dbname=postgres", f"dbname=postgres passfile={passfile}"))
    env = {k: v for k, v in real_cluster.env_with_password().items() if k != "PGPASSWORD"}
    try:
        for args in (["archiver", "start"], ["backup"]):
            result = run_cli(*args, config=config, env=env, timeout=120)
            assert result.returncode == 0, (args, result.stderr)
    finally:
        run_cli("archiver", "stop", config=config, env=env, timeout=60)
