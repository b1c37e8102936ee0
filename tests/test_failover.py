"""Failover, switchover and rejoin against real servers, pgbouncer and a counting writer."""

from __future__ import annotations

import json
import time

from pgdr.pg.connect import session
from pgdr.repo.records import list_records
from pgdr.sandbox import sandbox as sb
from pgdr.sandbox.workload import Writer
from tests.conftest import run_cli
from tests.fo_helpers import Pgbouncer


def _missing(conninfo: str, ids: list[int]) -> set[int]:
    with session(conninfo) as conn:
        rows = conn.execute("select id from orders where id = any(%s)", (ids,)).fetchall()
    return set(ids) - {r["id"] for r in rows}


def _node(sandbox: sb.Sandbox, name: str) -> sb.SandboxNode:
    return next(n for n in sandbox.nodes if n.name == name)


def _wait_more_commits(writer: Writer, than: int, timeout: float = 20) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(writer.stats.acknowledged) > than + 20:
            return len(writer.stats.acknowledged)
        time.sleep(0.05)
    raise AssertionError(f"writer made no progress after {than} commits")


def test_failover_after_kill9_through_pgbouncer_then_rejoin(make_sandbox, programs) -> None:  # type: ignore[no-untyped-def]
    sandbox = make_sandbox("failover", standbys=1)
    bouncer = Pgbouncer(sandbox, programs)
    try:
        with open(sandbox.config_path, "a") as conf:
            conf.write(bouncer.repoint_toml())
        assert run_cli("backup", config=sandbox.config_path).returncode == 0
        plan = run_cli("failover", "--dry-run", "--json", config=sandbox.config_path)
        assert plan.returncode == 1 and "healthy primary" in plan.stderr  # nothing to fail over yet

        writer = Writer(bouncer.conninfo("postgres")).start()
        _wait_more_commits(writer, 0)
        sandbox.instance(sandbox.primary, programs).kill9()
        at_kill = len(writer.stats.acknowledged)

        dry = run_cli("failover", "--dry-run", "--json", config=sandbox.config_path)
        assert dry.returncode == 0, dry.stderr
        assert json.loads(dry.stdout)["candidate"] == "standby1"
        with session(sandbox.conninfo(_node(sandbox, "standby1"))) as conn:  # dry run changed nothing
            assert conn.execute("select pg_is_in_recovery() as r").fetchone() == {"r": True}

        result = run_cli("failover", "--yes", "--json", config=sandbox.config_path)
        assert result.returncode == 0, result.stderr
        record = json.loads(result.stdout)
        assert record["new_primary"] == "standby1" and record["new_timeline"] == 2
        assert [s["result"] for s in record["timeline"] if s["result"] != "ok"] == []
        # clients through pgbouncer continue on the new primary
        _wait_more_commits(writer, at_kill)
        stats = writer.stop()
        new_primary = sandbox.conninfo(_node(sandbox, "standby1"))
        missing = _missing(new_primary, stats.acknowledged)
        # RPO read from the old primary's WAL covers every acknowledged commit that is missing;
        # at most the one commit in flight at the kill (plus a stray autovacuum) is unacknowledged.
        assert record["rpo"]["known"] is True
        assert len(missing) <= record["rpo"]["commits"] <= len(missing) + 2, (missing, record["rpo"])
        assert (sandbox.primary.data_dir / "standby.signal").exists()  # fenced

        again = run_cli("failover", "--yes", "--json", config=sandbox.config_path)
        assert again.returncode == 1 and "healthy primary" in again.stderr
        with session(new_primary) as conn:
            tli = conn.execute("select substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) as t").fetchone()
        assert tli == {"t": "00000002"}  # not promoted twice

        rejoined = run_cli("rejoin", "primary", "--yes", "--json", config=sandbox.config_path)
        assert rejoined.returncode == 0, rejoined.stderr
        assert json.loads(rejoined.stdout)["method"] == "pg_rewind"
        with session(new_primary) as conn:
            rep = conn.execute("select application_name, state from pg_stat_replication "
                               "where application_name = 'primary'").fetchone()
        assert rep == {"application_name": "primary", "state": "streaming"}
        # the archive followed the new timeline without a gap
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            status = run_cli("status", "--json", config=sandbox.config_path)
            if status.returncode == 0:
                break
            time.sleep(0.5)
        assert status.returncode == 0, status.stdout
        assert any(f.name.startswith("00000002") for f in sandbox.repo.wal_dir.iterdir())
        kinds = [r["kind"] for r in list_records(sandbox.repo)]
        assert kinds.count("failover") == 2 and "rejoin" in kinds  # promoted, then refused (dry runs keep none)
    finally:
        bouncer.stop()


def test_lagging_standby_is_refused_without_force(make_sandbox, programs) -> None:  # type: ignore[no-untyped-def]
    sandbox = make_sandbox("lagging", standbys=1)
    with open(sandbox.config_path, "a") as conf:
        conf.write("\n[failover]\nmax_lag_bytes = 1000000\n")
    standby = sandbox.conninfo(_node(sandbox, "standby1"))
    with session(standby) as conn:
        conn.execute("select pg_wal_replay_pause()")
    with session(sandbox.conninfo(sandbox.primary)) as conn:
        conn.execute("insert into documents (customer_id, body) select 1, md5(g::text) from generate_series(1, 100000) g")
        row = conn.execute("select count(*) as n from documents").fetchone()
    time.sleep(0.5)
    sandbox.instance(sandbox.primary, programs).kill9()
    refused = run_cli("failover", "--yes", config=sandbox.config_path)
    assert refused.returncode == 1 and "--force" in refused.stderr and "lags" in refused.stderr
    with session(standby) as conn:
        assert conn.execute("select pg_is_in_recovery() as r").fetchone() == {"r": True}
    forced = run_cli("failover", "--yes", "--force", "--json", config=sandbox.config_path)
    assert forced.returncode == 0, forced.stderr
    with session(standby) as conn:  # replay was resumed and finished before promotion
        assert conn.execute("select count(*) as n from documents").fetchone() == row


def test_switchover_loses_nothing_and_old_primary_streams(make_sandbox, programs) -> None:  # type: ignore[no-untyped-def]
    sandbox = make_sandbox("switchover", standbys=1)
    bouncer = Pgbouncer(sandbox, programs)
    try:
        with open(sandbox.config_path, "a") as conf:
            conf.write(bouncer.repoint_toml())
        writer = Writer(bouncer.conninfo("postgres")).start()
        _wait_more_commits(writer, 0)
        result = run_cli("switchover", "--yes", "--json", config=sandbox.config_path)
        assert result.returncode == 0, result.stderr
        record = json.loads(result.stdout)
        assert record["new_primary"] == "standby1"
        _wait_more_commits(writer, len(writer.stats.acknowledged))
        stats = writer.stop()
        new_primary = sandbox.conninfo(_node(sandbox, "standby1"))
        assert _missing(new_primary, stats.acknowledged) == set()
        with session(new_primary) as conn:
            rep = conn.execute("select state from pg_stat_replication where application_name = 'primary'").fetchone()
        assert rep == {"state": "streaming"}
        with session(sandbox.conninfo(sandbox.primary)) as conn:
            assert conn.execute("select pg_is_in_recovery() as r").fetchone() == {"r": True}
    finally:
        bouncer.stop()


def test_synchronous_failover_loses_no_acknowledged_commit(make_sandbox, programs) -> None:  # type: ignore[no-untyped-def]
    sandbox = make_sandbox("sync", standbys=1, sync=True)
    writer = Writer(sandbox.conninfo(sandbox.primary, "postgres")).start()
    _wait_more_commits(writer, 0)
    sandbox.instance(sandbox.primary, programs).kill9()
    stats = writer.stop()
    result = run_cli("failover", "--yes", "--json", config=sandbox.config_path)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["synchronous"] is True
    assert _missing(sandbox.conninfo(_node(sandbox, "standby1")), stats.acknowledged) == set()
    assert record["rpo"]["commits"] <= 1  # only a commit the client never saw acknowledged
