"""Failover, switchover and rejoin against real servers, pgbouncer and a counting writer."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from pgdr.config import NodeConfig, RepointTarget
from pgdr.failover.quorum import SyncSpec, parse_sync, quorum
from pgdr.failover.repoint import Repointer
from pgdr.failover.slots import slot_name
from pgdr.failover.standby_setup import read_auto_conf, replication_conninfo, rewrite_auto_conf
from pgdr.pg.connect import session
from pgdr.pg.conninfo import parse
from pgdr.pg.lsn import format_lsn, parse_lsn
from pgdr.repo.records import list_records
from pgdr.sandbox import sandbox as sb
from pgdr.sandbox.workload import Writer
from tests.conftest import run_cli
from tests.fo_helpers import CommitLog, Pgbouncer, multi_host, writable_nodes


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

        # Commits are counted by (writer, n) values the client chooses and never reuses: an
        # identity column is not an independent count, since the new primary hands out again
        # the ids the lost commits had used (sequences are WAL-logged 32 values ahead).
        # autovacuum off on the table: an ANALYZE commit is not the application's.
        CommitLog.create_table(sandbox.conninfo(sandbox.primary))
        with session(sandbox.conninfo(sandbox.primary)) as conn:
            conn.execute(f"alter table {CommitLog.TABLE} set (autovacuum_enabled = off)")
        writer = CommitLog(bouncer.conninfo("app"), 1).start()
        writer.wait_progress()
        sandbox.instance(sandbox.primary, programs).kill9()

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
        writer.wait_progress()
        writer.stop()
        new_primary = sandbox.conninfo(_node(sandbox, "standby1"))
        missing = writer.missing(new_primary)
        # the attempts whose acknowledgement never came and that are not on the new primary:
        # each may or may not be in the old primary's WAL
        uncertain = set(writer.unacked) - writer.present(new_primary, writer.unacked)
        # reported loss = counted loss: every acknowledged commit missing, plus at most the one
        # attempt in flight on the one connection to the old primary when it broke (later
        # attempts could not reach it: its postmaster was dead, its backends fenced)
        assert record["rpo"]["known"] is True
        assert record["fork_point_source"] == "timeline history file"
        assert len(missing) <= record["rpo"]["commits"] <= len(missing) + min(1, len(uncertain)), \
            (missing, uncertain, record["rpo"], record["promoted_at_lsn"], record["replayed_to_lsn"])
        assert (sandbox.primary.data_dir / "standby.signal").exists()  # fenced

        again = run_cli("failover", "--yes", "--json", config=sandbox.config_path)
        assert again.returncode == 1 and "healthy primary" in again.stderr
        with session(new_primary) as conn:
            tli = conn.execute("select substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) as t").fetchone()
        assert tli == {"t": "00000002"}  # not promoted twice

        # The SIGKILLed postmaster stays a zombie until init reaps it (late under load, or never):
        # PostgreSQL's stale-lock test succeeds on a zombie, so pg_rewind's crash recovery would
        # refuse the lock file. Inject it for sure: postmaster.pid names a zombie of ours, owned
        # by the server's user (as the postmaster was: PostgreSQL takes EPERM as "stale").
        zombie = subprocess.Popen(["true"], user=sandbox.primary.data_dir.stat().st_uid)
        while Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            time.sleep(0.01)
        pidfile = sandbox.primary.data_dir / "postmaster.pid"
        lines = pidfile.read_text().splitlines()
        pidfile.write_text("\n".join([str(zombie.pid), *lines[1:]]) + "\n")
        # and so does the unix socket's lock file, which the restart after pg_rewind checks
        socket_lock = Path(lines[4].strip()) / f".s.PGSQL.{lines[3].strip()}.lock"
        lock_lines = socket_lock.read_text().splitlines()
        socket_lock.write_text("\n".join([str(zombie.pid), *lock_lines[1:]]) + "\n")
        rejoined = run_cli("rejoin", "primary", "--yes", "--json", config=sandbox.config_path)
        zombie.wait()
        assert rejoined.returncode == 0, rejoined.stderr
        rejoin_record = json.loads(rejoined.stdout)
        assert rejoin_record["method"] == "pg_rewind", rejoin_record.get("rewind_failed")
        stale = next(s for s in rejoin_record["timeline"] if s["name"] == "stale lock file")
        assert f"pid {zombie.pid} is a zombie" in stale["detail"] and socket_lock.name in stale["detail"], stale
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


# ---- units: no server needed ---------------------------------------------------------

def test_synchronous_standby_names_parse_like_postgresql() -> None:
    assert parse_sync("ANY 1 (s1, s2)") == SyncSpec("any", 1, ("s1", "s2"))
    assert parse_sync("first 2 (a, \"db-1\", c)") == SyncSpec("first", 2, ("a", "db-1", "c"))
    assert parse_sync("2 (a, b)") == SyncSpec("first", 2, ("a", "b"))
    assert parse_sync("a, b") == SyncSpec("first", 1, ("a", "b"))
    assert not parse_sync("").synchronous and not parse_sync(None).synchronous
    assert parse_sync("ANY 1 (s1, \"db-1\")").render() == 'ANY 1 (s1, "db-1")'
    # ANY 1 of 2: both must be reached; ANY 2 of 3: two; FIRST 1 of 3: three (any of them may have been first)
    assert quorum(parse_sync("ANY 1 (s1, s2)"), ["s1", "s2"], ["s2"]).proven is False
    assert quorum(parse_sync("ANY 1 (s1, s2)"), ["s1", "s2"], ["s1", "s2"]).proven is True
    assert quorum(parse_sync("ANY 2 (a, b, c)"), ["a", "b", "c"], ["a", "c"]).proven is True
    assert quorum(parse_sync("FIRST 1 (a, b, c)"), ["a", "b", "c"], ["a", "b"]).need == 3
    assert quorum(parse_sync("*"), ["a", "b"], ["a"]).need == 2


def test_slot_names_are_valid_and_unique() -> None:
    names = ["standby1", "db-1", "db_1", "DB-1", "node.with.dots", "x" * 80]
    slots = [slot_name(n) for n in names]
    assert slot_name("standby1") == "standby1"
    assert all(re.fullmatch(r"[a-z0-9_]{1,63}", s) for s in slots), slots
    assert len(set(slots)) == len(slots)


def test_primary_conninfo_keeps_the_standbys_credentials(tmp_path: Path) -> None:
    node = NodeConfig(name="db-1", conninfo="host=/run/pg port=5433 user=postgres password=pgdrsecret dbname=postgres")
    primary = NodeConfig(name="db-2", conninfo="host=10.0.0.2 port=5434 user=postgres password=pgdrsecret")
    kept = parse(replication_conninfo(node, primary, "host=10.0.0.1 port=5432 user=replicator "
                                      "passfile=/etc/pgpass sslmode=verify-full application_name=db1"))
    assert kept == {"host": "10.0.0.2", "port": "5434", "user": "replicator", "passfile": "/etc/pgpass",
                    "sslmode": "verify-full", "application_name": "db1"}
    fresh = parse(replication_conninfo(node, primary, ""))
    assert "password" not in fresh and fresh["application_name"] == "db-1" and "dbname" not in fresh
    # the one line is replaced (duplicates dropped), owner and mode kept
    auto = tmp_path / "postgresql.auto.conf"
    auto.write_text("# Do not edit\nprimary_conninfo = 'host=a'\nwork_mem = '8MB'\nprimary_conninfo = 'host=b'\n")
    os.chmod(auto, 0o600)
    rewrite_auto_conf(tmp_path, {"primary_conninfo": "host=c user=o'neil", "primary_slot_name": "db_1"})
    text = auto.read_text()
    assert text.count("primary_conninfo") == 1 and "host=c user=o''neil" in text and "work_mem = '8MB'" in text
    assert read_auto_conf(tmp_path)["primary_conninfo"] == "host=c user=o'neil"
    assert stat.S_IMODE(auto.stat().st_mode) == 0o600


# ---- repeated failovers under a Jepsen-style checker --------------------------------------

def _current_sync(sandbox: sb.Sandbox, primary: str) -> str:
    with session(sandbox.conninfo(_node(sandbox, primary), "postgres")) as conn:
        row = conn.execute("show synchronous_standby_names").fetchone()
    assert row is not None
    return str(row["synchronous_standby_names"])


@pytest.mark.parametrize("sync", [True, False], ids=["sync-any1-of-2", "async"])
def test_kill9_failover_rejoin_switchover_cycles_lose_no_acknowledged_commit(  # type: ignore[no-untyped-def]
        make_sandbox, programs, sync: bool) -> None:
    sandbox = make_sandbox("cycles", standbys=2, sync=sync)
    bouncer = Pgbouncer(sandbox, programs)  # pgbouncer's default server_login_retry (15 s)
    ini_mode = stat.S_IMODE(bouncer.ini.stat().st_mode)
    ini_owner = (bouncer.ini.stat().st_uid, bouncer.ini.stat().st_gid)
    with open(sandbox.config_path, "a") as conf:
        conf.write(bouncer.repoint_toml())
    CommitLog.create_table(sandbox.conninfo(sandbox.primary))
    writers = [CommitLog(bouncer.conninfo("app"), 1).start(), CommitLog(multi_host(sandbox), 2).start()]
    lost: set[tuple[int, int]] = set()

    def missing_on(primary: str) -> set[tuple[int, int]]:
        for w in writers:
            w.wait_progress()
        assert writable_nodes(sandbox) == [primary]  # exactly one writable primary
        conninfo = sandbox.conninfo(_node(sandbox, primary))
        return {(w.writer, n) for w in writers for n in w.missing(conninfo)}

    def replication_settings(name: str) -> dict[str, str]:
        with session(sandbox.conninfo(_node(sandbox, name), "postgres")) as conn:
            row = conn.execute("show primary_conninfo").fetchone()
        assert row is not None
        return {k: v for k, v in parse(row["primary_conninfo"]).items() if k not in ("host", "port")}

    before = {name: replication_settings(name) for name in ("standby1", "standby2")}
    try:
        primary = "primary"
        for cycle in range(3):
            for w in writers:
                w.wait_progress()
            sandbox.instance(_node(sandbox, primary), programs).kill9()
            result = run_cli("failover", "--yes", "--json", config=sandbox.config_path)
            assert result.returncode == 0, (cycle, result.stderr)
            record = json.loads(result.stdout)
            old, primary = primary, record["new_primary"]
            assert record["synchronous"] is sync and record["rpo"]["known"] is True
            missing = missing_on(primary)
            if sync:
                assert missing == set(), (cycle, sorted(missing)[:10])
                assert record["synchronous_after"]["degraded"] is False
                assert _current_sync(sandbox, primary) != ""  # the follower streams and is synchronous
            else:  # what pgdr reports lost is what the clients lost (+ the attempts in flight at the kill)
                new_lost = missing - lost
                assert len(new_lost) <= record["rpo"]["commits"] <= len(new_lost) + len(writers) + 1, \
                    (cycle, len(new_lost), record["rpo"])
                lost |= missing
            assert record["old_timeline"] == cycle * 2 + 1  # read from the old primary's own WAL
            if cycle == 0:  # the follower kept its own replication settings; only host and port changed
                follower = next(n for n in ("standby1", "standby2") if n != primary)
                assert replication_settings(follower) == before[follower]

            rejoined = run_cli("rejoin", old, "--yes", "--json", config=sandbox.config_path)
            assert rejoined.returncode == 0, (cycle, rejoined.stderr)
            if sync:
                assert old in _current_sync(sandbox, primary)  # back in the synchronous set once streaming
            assert missing_on(primary) - lost == set()

            switched = run_cli("switchover", "--yes", "--json", config=sandbox.config_path)
            assert switched.returncode == 0, (cycle, switched.stderr)
            primary = json.loads(switched.stdout)["new_primary"]
            assert missing_on(primary) - lost == set(), cycle
        for w in writers:
            w.stop()
        # no write waited long: pgbouncer did not sit out server_login_retry, sync rep never hung
        assert max(w.longest_block for w in writers) < 8, [w.longest_block for w in writers]
        st = bouncer.ini.stat()
        assert (stat.S_IMODE(st.st_mode), (st.st_uid, st.st_gid)) == (ini_mode, ini_owner)
        topo = json.loads((sandbox.repo.root / "topology.json").read_text())
        assert topo["primary"] == primary and topo["timeline"] == 7
    finally:
        for w in writers:
            w.stop()
        bouncer.stop()


def test_cut_off_standby_is_never_promoted_without_quorum(make_sandbox, programs) -> None:  # type: ignore[no-untyped-def]
    sandbox = make_sandbox("cutoff", standbys=2, sync=True)
    CommitLog.create_table(sandbox.conninfo(sandbox.primary))
    writer = CommitLog(multi_host(sandbox), 1).start()
    try:
        writer.wait_progress()
        # standby2 is cut off from the primary; ANY 1 (standby1, standby2) goes on with standby1 alone
        with session(sandbox.conninfo(_node(sandbox, "standby2"), "postgres")) as conn:
            conn.execute("alter system set primary_conninfo = ''")
            conn.execute("select pg_reload_conf()")
        writer.wait_progress(200)
        sandbox.instance(sandbox.primary, programs).kill9()
        # the one that has everything is down too (stopped, so that it can be started again at once)
        sandbox.instance(_node(sandbox, "standby1"), programs).stop(mode="immediate")
    finally:
        writer.stop()
    refused = run_cli("failover", "--yes", config=sandbox.config_path)
    assert refused.returncode == 1 and "could lose acknowledged commits" in refused.stderr, refused.stderr
    at_risk = int(re.search(r"\((\d+) commits / \d+ bytes in primary's WAL", refused.stderr).group(1))  # type: ignore[union-attr]
    assert at_risk >= 200 - 5
    chosen = run_cli("failover", "--yes", "--to", "standby2", config=sandbox.config_path)
    assert chosen.returncode == 1
    forced = run_cli("failover", "--dry-run", "--force", "--json", config=sandbox.config_path)
    assert forced.returncode == 0 and json.loads(forced.stdout)["forced"] is True
    with session(sandbox.conninfo(_node(sandbox, "standby2"))) as conn:
        assert conn.execute("select pg_is_in_recovery() as r").fetchone() == {"r": True}

    sandbox.instance(_node(sandbox, "standby1"), programs).start()
    plan = run_cli("failover", "--dry-run", "--json", config=sandbox.config_path)
    assert plan.returncode == 0 and json.loads(plan.stdout)["candidate"] == "standby1"  # quorum met: the one with everything
    assert writer.missing(sandbox.conninfo(_node(sandbox, "standby1"))) == set()

    # Forced onto the cut-off standby: standby1, ahead of it, cannot follow ("forked off");
    # it must not be named synchronous, or every write would wait for it forever.
    result = run_cli("failover", "--yes", "--to", "standby2", "--force", "--json", config=sandbox.config_path)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["forced"] is True and record["new_primary"] == "standby2"
    assert record["synchronous_after"]["degraded"] is True, (record["synchronous_after"], record["followers"])
    missing = writer.missing(sandbox.conninfo(_node(sandbox, "standby2")))
    assert len(missing) <= record["rpo"]["commits"] <= len(missing) + 2, (len(missing), record["rpo"])
    with session(sandbox.conninfo(_node(sandbox, "standby2")), statement_timeout=10) as conn:
        assert conn.execute("show synchronous_standby_names").fetchone() == {"synchronous_standby_names": ""}
        conn.execute(f"insert into {CommitLog.TABLE} values (99, 1)")  # returns: nobody to wait for
    assert writable_nodes(sandbox) == ["standby2"]


def test_failover_ends_replay_at_the_last_complete_record_of_a_torn_tail(make_sandbox, programs) -> None:  # type: ignore[no-untyped-def]
    sandbox = make_sandbox("torn", standbys=1)
    with open(sandbox.config_path, "a") as conf:  # a torn tail must not cost the whole replay timeout
        conf.write('\n[failover]\nreplay_timeout = "20s"\nmax_lag_bytes = 1073741824\n')
    standby = sandbox.conninfo(_node(sandbox, "standby1"), "postgres")

    def received() -> tuple[int, int]:
        with session(standby) as conn:
            row = conn.execute("select pg_last_wal_receive_lsn()::text as r, pg_last_wal_replay_lsn()::text as p"
                               ).fetchone()
        assert row is not None
        return parse_lsn(row["r"]), parse_lsn(row["p"])

    def one_huge_record() -> None:  # a single 150 MB WAL record, streamed while it is being written
        try:
            with session(sandbox.conninfo(sandbox.primary, "postgres"), statement_timeout=300) as conn:
                conn.execute("select pg_logical_emit_message(false, 'pgdr', repeat('x', 150 * 1024 * 1024))")
        except Exception:
            pass  # the primary is killed under it

    start = received()[0]
    threading.Thread(target=one_huge_record, daemon=True).start()
    deadline = time.monotonic() + 60
    while received()[0] - start < 20 * 1024 * 1024:  # the standby holds the first 20 MB of it
        assert time.monotonic() < deadline, "the standby received nothing"
        time.sleep(0.01)
    sandbox.instance(sandbox.primary, programs).kill9()  # mid-record
    rcv, replayed = received()
    assert rcv - replayed > 16 * 1024 * 1024  # replay cannot reach what was received: a torn tail

    result = run_cli("failover", "--yes", "--json", config=sandbox.config_path)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    step = next(s for s in record["timeline"] if s["name"] == "replay to the last complete record")
    assert "torn tail" in step["detail"] and step["seconds"] < 20, step
    assert record["promoted_at_lsn"] == format_lsn(replayed)
    assert writable_nodes(sandbox) == ["standby1"]


def test_fence_kills_a_hung_primary_and_db_1_rejoins(make_sandbox, programs) -> None:  # type: ignore[no-untyped-def]
    """A SIGSTOPped postmaster ignores pg_ctl stop (exit 1) while its backends keep serving:
    pgdr must prove it gone before promoting. The node is called db-1 (not a valid slot name)."""
    sandbox = make_sandbox("hung", standbys=1)
    text = sandbox.config_path.read_text().replace('name = "primary"', 'name = "db-1"', 1)
    sandbox.config_path.write_text(text)
    CommitLog.create_table(sandbox.conninfo(sandbox.primary))
    writer = CommitLog(sandbox.conninfo(sandbox.primary), 1).start()  # a session on the old primary itself
    old = sandbox.instance(sandbox.primary, programs)
    pid = old.pid()
    assert pid is not None
    try:
        writer.wait_progress()
        os.kill(pid, signal.SIGSTOP)  # the postmaster hangs; its backend keeps committing for the writer
        writer.wait_progress()
        result = run_cli("failover", "--yes", "--json", config=sandbox.config_path)
        assert result.returncode == 0, result.stderr
        record = json.loads(result.stdout)
        fence_step = next(s for s in record["timeline"] if s["name"] == "fence old primary")
        assert "SIGKILLed" in fence_step["detail"], fence_step
        assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
        # nothing of the old primary still acknowledges writes: every acknowledged commit is on the new one
        # (asynchronous: up to what the record says was lost)
        writer.stop()
        missing = writer.missing(sandbox.conninfo(_node(sandbox, "standby1")))
        assert len(missing) <= record["rpo"]["commits"]
        assert writable_nodes(sandbox) == ["standby1"]
    finally:
        writer.stop()
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    rejoined = run_cli("rejoin", "db-1", "--yes", "--json", config=sandbox.config_path)
    assert rejoined.returncode == 0, rejoined.stderr
    with session(sandbox.conninfo(_node(sandbox, "standby1"), "postgres")) as conn:
        slots = conn.execute("select slot_name, active from pg_replication_slots where slot_name like 'db_1%'"
                             ).fetchall()
    assert len(slots) == 1 and slots[0]["active"] is True
    auto = read_auto_conf(sandbox.primary.data_dir)
    assert auto["primary_slot_name"] == slots[0]["slot_name"]
    assert "password" not in auto["primary_conninfo"] and "dbname" not in auto["primary_conninfo"]
    assert (sandbox.primary.data_dir / "postgresql.auto.conf").read_text().count("primary_conninfo") == 1


def test_fence_kills_backends_that_outlive_their_postmaster(make_sandbox, programs) -> None:  # type: ignore[no-untyped-def]
    """kill -9 of a postmaster leaves its backends running until they notice: one that is
    descheduled (here SIGSTOPped) at that moment must not commit for a client after promotion."""
    sandbox = make_sandbox("orphans", standbys=1)
    with session(sandbox.conninfo(sandbox.primary)) as client:
        backend = client.execute("select pg_backend_pid() as p").fetchone()["p"]  # type: ignore[index]
        os.kill(backend, signal.SIGSTOP)
        try:
            sandbox.instance(sandbox.primary, programs).kill9()
            result = run_cli("failover", "--yes", "--json", config=sandbox.config_path)
            assert result.returncode == 0, result.stderr
            step = next(s for s in json.loads(result.stdout)["timeline"] if s["name"] == "fence old primary")
            assert "leftover server process" in step["detail"], step
            stat_file = Path(f"/proc/{backend}/stat")
            assert not stat_file.exists() or stat_file.read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
        finally:
            try:
                os.kill(backend, signal.SIGCONT)
            except ProcessLookupError:
                pass
    assert writable_nodes(sandbox) == ["standby1"]


def test_repoint_rewrites_an_env_file_keeping_owner_mode_and_secrets(tmp_path: Path) -> None:
    env = tmp_path / "database.env"
    env.write_text("export DATABASE_URL='postgresql://app:s3cret@10.0.0.1:5432/app?sslmode=require'\n"
                   "PGHOST=10.0.0.1\nPGPORT=5432\nOTHER=kept\n")
    os.chmod(env, 0o640)
    os.chown(env, 1234, 4321)
    target = RepointTarget(kind="env_file", path=env)
    Repointer([target]).apply(NodeConfig(name="db-2", conninfo="host=10.0.0.2 port=5434 user=postgres"))
    text = env.read_text()
    assert "postgresql://app:s3cret@10.0.0.2:5434/app?sslmode=require" in text
    assert "PGHOST=10.0.0.2\nPGPORT=5434\nOTHER=kept\n" in text
    st = env.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 1234, 4321)
    assert [p.name for p in tmp_path.iterdir()] == ["database.env"]  # no temporary file left
    link = tmp_path / "link.env"
    link.symlink_to(env)
    Repointer([RepointTarget(kind="env_file", path=link)]).apply(
        NodeConfig(name="db-3", conninfo="host=10.0.0.3 port=5435"))
    assert link.is_symlink() and "PGHOST=10.0.0.3" in env.read_text()
