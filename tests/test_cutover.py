"""`pgdr cutover` on the hand-built cluster (peer + scram, replicator role, pgbouncer with
scram, an app env file): restore to just before a mistake, put the restored instance into
service, then back up, verify and rejoin the old primary.

Everything is checked on the servers and files themselves, never from pgdr's report:
the rows the test committed (an independent count) tell what survived and what the
cutover gave up; psql as postgres over peer tells who accepts writes and who streams.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from pgdr.pg.connect import session
from pgdr.repo.layout import Repository
from pgdr.repo.manifest import scan_backups
from pgdr.repo.records import list_records
from pgdr.restore.pitr import stop_restored
from tests.conftest import run_cli, xid_of
from tests.real_cluster import RealCluster

LOST = 7  # commits after the mistake: acknowledged, and given up by the cutover


def _config(cluster: RealCluster, pause_log: Path, env_file: Path) -> Path:
    bouncer = cluster.start_pgbouncer()
    repl = f"host=127.0.0.1 user=replicator passfile={cluster.pghome / '.pgpass'}"
    extra = (
        bouncer.repoint_toml()
        + f'\n[[failover.repoint]]\nkind = "env_file"\npath = "{env_file}"\n'
        + f'\n[cutover]\npause_command = ["sh", "-c", "echo pause >> {pause_log}"]\n'
        + f'resume_command = ["sh", "-c", "echo resume >> {pause_log}"]\n'
        + '\n[[verify.checks]]\nname = "customers"\ndatabase = "app"\n'
        + 'sql = "select count(*) >= 500 from customers"\n')
    path = cluster.write_config("cutover", extra)
    text = path.read_text().replace('name = "db1"\n', f'name = "db1"\nreplication_conninfo = "{repl}"\n', 1)
    path.write_text(text)
    return path


def _writable(conninfo: str) -> bool:
    try:
        with psycopg.connect(conninfo, connect_timeout=3, autocommit=True) as conn:
            row = conn.execute("select pg_is_in_recovery()").fetchone()
            return row is not None and row[0] is False
    except psycopg.Error:
        return False


def _count(conninfo: str, sql: str) -> int:
    """Plain psycopg, as an application connects (pgbouncer refuses startup `options`)."""
    with psycopg.connect(conninfo, connect_timeout=5, autocommit=True, prepare_threshold=None) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return int(row[0])


def test_restore_before_a_mistake_then_cutover_backup_verify_and_rejoin(real_cluster: RealCluster,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = real_cluster
    db1 = cluster.primary
    env = cluster.env_with_passfile()
    monkeypatch.setenv("PGPASSFILE", env["PGPASSFILE"])  # this process's own checks, like the CLI's
    pause_log = cluster.root / "app-pause.log"
    env_file = cluster.root / "app.env"
    env_file.write_text(f"DATABASE_URL=postgresql://app@127.0.0.1:{db1.port}/app\nPGPORT={db1.port}\n")
    os.chmod(env_file, 0o640)
    config = _config(cluster, pause_log, env_file)
    repo = Repository(config.parent / "repo")
    outputs: list[str] = []

    def cli(*args: str, ok: int | None = 0, timeout: float = 300) -> str:
        result = run_cli(*args, config=config, env=env, timeout=timeout)
        outputs.extend([result.stdout, result.stderr])
        assert ok is None or result.returncode == ok, (args, result.stdout[-3000:], result.stderr[-3000:])
        return result.stdout

    cli("archiver", "start")
    cli("backup")
    app = cluster.tcp(db1, "app", "app")
    with session(app) as conn:
        conn.execute("create table kept (id int primary key)")
        for i in range(5):
            conn.execute("insert into kept values (%s)", (i,))
    mistake = xid_of(app, "delete from orders")
    with session(app) as conn:  # acknowledged after the mistake: lost by restoring before it
        conn.execute("create table after_mistake (id int primary key)")
        for i in range(LOST - 1):
            conn.execute("insert into after_mistake values (%s)", (i,))
    target = cluster.root / "restored"
    restored = json.loads(cli("restore", "--before-xid", str(mistake), "--target-dir", str(target), "--json"))
    new_port = int(restored["port"])
    _recycle_past(cluster, app, restored["reached"]["lsn"])
    try:
        _cutover_and_after(cluster, config, repo, target, new_port, pause_log, env_file, cli, outputs)
    finally:
        run_cli("archiver", "stop", config=config, env=env)
        stop_restored(target, cluster.programs)


def _cutover_and_after(cluster: RealCluster, config: Path, repo: Repository, target: Path, new_port: int,
                       pause_log: Path, env_file: Path, cli: Callable[..., str], outputs: list[str]) -> None:
    db1 = cluster.primary

    # the independent count of what the cutover gives up: every row after the mistake, the
    # CREATE TABLE, the DELETE itself
    given_up = int(cluster.psql("select count(*) from after_mistake", dbname="app")) + 2
    files = {p: p.read_bytes() for p in (config, env_file, cluster.start_pgbouncer().ini)}
    plan = json.loads(cli("cutover", "--to-dir", str(target), "--dry-run", "--json"))
    assert plan["outcome"] == "planned" and plan["old_primary"] == "db1"
    assert {p: p.read_bytes() for p in files} == files  # --dry-run changed nothing
    assert _writable(cluster.tcp(db1)) and not pause_log.exists()
    cli("cutover", "--to-dir", str(target), ok=2)  # no --yes, no terminal: refused
    assert {p: p.read_bytes() for p in files} == files and _writable(cluster.tcp(db1))
    # a smoke check that fails on the restored instance: refused before anything changes
    good = config.read_text()
    config.write_text(good.replace("count(*) >= 500 from customers", "count(*) > 500 from customers"))
    cli("cutover", "--to-dir", str(target), "--yes", ok=1)
    # the application's pause command fails: stopped before the fence, nothing changed
    config.write_text(good.replace('pause_command = ["sh", "-c", "echo pause', 'pause_command = ["sh", "-c", "exit 3; echo'))
    cli("cutover", "--to-dir", str(target), "--yes", ok=1)
    config.write_text(good)
    assert {p: p.read_bytes() for p in files} == files and _writable(cluster.tcp(db1))
    assert not pause_log.exists()
    refused = [r["outcome"] for r in list_records(repo, "cutover")]
    assert refused == ["refused", "failed"], refused

    record = json.loads(cli("cutover", "--to-dir", str(target), "--yes", "--json"))
    restored = record["new_primary"]
    # clients: the env file and pgbouncer point at the restored instance; mode kept
    assert f"127.0.0.1:{new_port}/app" in env_file.read_text() and f"PGPORT={new_port}" in env_file.read_text()
    assert oct(env_file.stat().st_mode & 0o777) == oct(0o640)
    assert f"port={new_port}" in cluster.start_pgbouncer().ini.read_text()
    assert pause_log.read_text().split() == ["pause", "resume"]
    through_bouncer = cluster.start_pgbouncer().conninfo()
    # the independent count: the mistake is undone, what came before it is there, the
    # LOST commits after it are not
    assert _count(through_bouncer, "select count(*) from orders") == 3000
    assert _count(through_bouncer, "select count(*) from kept") == 5
    assert _count(through_bouncer, "select count(*) from pg_tables where tablename = 'after_mistake'") == 0
    assert given_up >= LOST + 1 and record["rpo"]["known"] and record["rpo"]["commits"] >= given_up
    assert "in the archive" in record["rpo"]["detail"]
    # the old primary no longer accepts writes; its data directory is kept
    assert not _writable(cluster.tcp(db1))
    assert (db1.data_dir / "PG_VERSION").exists() and (db1.data_dir / "standby.signal").exists()
    assert restored in config.read_text()
    assert "recovery_target" not in (target / "postgresql.auto.conf").read_text()

    # backups and WAL archiving continue from the new primary, on its new timeline
    new_conn = cluster.tcp(db1).replace(f"port={db1.port}", f"port={new_port}")
    with session(new_conn) as conn:
        conn.execute("create table after_cutover (id int)")
    cli("backup")
    newest = scan_backups(repo)[0][-1]
    assert newest.timeline == record["new_timeline"] > 1
    cli("verify", timeout=600)
    # the forecast now has both rates (this verification, the restore above), and the
    # cutover's measured RTO/RPO reach /metrics
    forecast = json.loads(cli("status", "--json", ok=None))["forecast"]
    assert forecast["restore_rate"]["bytes_per_s"] > 0 and forecast["replay_rate"]["bytes_per_s"] > 0
    assert forecast["pitr_s"] >= forecast["full_restore_s"] > 0
    metrics = _metrics(config)
    assert metrics[("pgdr_last_operation_rto_seconds", (("operation", "cutover"),))] == record["rto_seconds"]
    assert metrics[("pgdr_last_operation_rpo", (("operation", "cutover"), ("unit", "commits")))] \
        == record["rpo"]["commits"]

    # the old primary becomes a standby of the restored instance
    cli("rejoin", "db1", "--yes", timeout=300)
    deadline = time.monotonic() + 60
    users = ""
    while time.monotonic() < deadline and not users:
        users = _streams(cluster, new_conn)
        time.sleep(0.2)
    assert users == "replicator"
    assert cluster.psql("select pg_is_in_recovery()", instance=db1) == "t"
    assert cluster.psql("select count(*) from orders", dbname="app", instance=db1) in ("3000",)
    for secret in cluster.secrets():
        assert not any(secret in text for text in outputs)


def _recycle_past(cluster: RealCluster, app: str, lsn: str) -> None:
    """Until the old primary's pg_wal no longer holds the segment of the restore point
    (switches, writes, checkpoints: recycled), so the cutover must count what it gives up
    from the repository's archive. The writes count as lost too."""
    hi, lo = (int(x, 16) for x in lsn.split("/"))
    segno = ((hi << 32) + lo) // (16 << 20)
    name = f"00000001{segno // 256:08X}{segno % 256:08X}"
    pg_wal = cluster.primary.data_dir / "pg_wal"
    for i in range(20):
        if not (pg_wal / name).exists():
            return
        with session(app) as conn:
            conn.execute("insert into after_mistake values (%s)", (1000 + i,))
        cluster.psql("select pg_switch_wal(); checkpoint;")
        time.sleep(0.2)  # the standby and the archiver confirm, so their slots let go
    raise AssertionError(f"{name} is still in the old primary's pg_wal")


def _metrics(config: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from pgdr.config import load_config
    from pgdr.server.metrics import PgdrCollector

    cfg = load_config(config)
    registry = CollectorRegistry()
    registry.register(PgdrCollector(cfg, Repository(cfg.repository.path)))
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(generate_latest(registry).decode()) for s in f.samples}


def _streams(cluster: RealCluster, primary_conninfo: str) -> str:
    with session(primary_conninfo) as conn:
        rows = conn.execute("select usename from pg_stat_replication where state = 'streaming' "
                            "and application_name not like 'pgdr%'").fetchall()
    return ",".join(r["usename"] for r in rows)


@pytest.mark.parametrize("args", [("--to-dir", "/nonexistent/restored")])
def test_cutover_of_a_folder_pgdr_did_not_restore_is_one_line_exit_2(real_cluster: RealCluster,
                                                                     args: tuple[str, ...]) -> None:
    config = real_cluster.write_config("cutover-bad")
    result = run_cli("cutover", *args, "--yes", config=config, env=real_cluster.env_with_passfile())
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "not an instance `pgdr restore` made" in result.stderr
