"""pgdr diagnose against real servers: idle in transaction, a blocking chain, a stuck
archive_command, a stopped standby — each shows up with the right evidence."""

from __future__ import annotations

import json
import time

import psycopg

from pgdr.diagnose.analyze import blocking_chains, diagnose
from pgdr.sandbox.sandbox import Sandbox
from tests.conftest import run_cli
from tests.diaghelp import Blocked, connect, diag_config, load, pg_admin, wait_for, waiting_pids


def test_idle_in_transaction_sessions_are_found(shared_sandbox: Sandbox) -> None:
    config = load(diag_config(shared_sandbox, idle_in_transaction="1s", long_transaction="1h"))
    held = [connect(shared_sandbox, app=f"idle_tx_{i}") for i in range(2)]
    try:
        pids = []
        for i, conn in enumerate(held):
            conn.execute("select count(*) from customers where id = %s", (i + 1,))
            pids.append(conn.info.backend_pid)
        time.sleep(1.3)
        report = diagnose(config)
        finding = next(f for f in report.by_concern("idle_in_transaction") if f.node == "primary")
        assert finding.severity == "warning"
        listed = {s["pid"]: s for s in finding.evidence["sessions"]}
        assert set(pids) <= set(listed)
        assert listed[pids[0]]["state"] == "idle in transaction"
        assert listed[pids[0]]["state_s"] >= 1.0
        assert "customers" in listed[pids[0]]["query"]
        assert "--idle-in-transaction" in (finding.action or "")
        conns = next(f for f in report.by_concern("connections") if f.node == "primary")
        assert conns.evidence["by_state"].get("idle in transaction", 0) >= 2
        assert conns.evidence["max_connections"] == 100
    finally:
        for conn in held:
            conn.close()


def test_blocking_chain_three_deep(shared_sandbox: Sandbox) -> None:
    config = load(diag_config(shared_sandbox, lock_wait="0s"))
    a, b, c = (connect(shared_sandbox, app=f"chain_{x}") for x in "abc")
    threads: list[Blocked] = []
    try:
        a.execute("update customers set name = name where id = 1")
        b.execute("update customers set name = name where id = 2")
        tb = Blocked(b, "update customers set name = name where id = 1")  # waits for a
        tb.start()
        threads.append(tb)
        wait_for(lambda: b.info.backend_pid in waiting_pids(shared_sandbox), what="b to wait")
        tc = Blocked(c, "update customers set name = name where id = 2")  # waits for b
        tc.start()
        threads.append(tc)
        wait_for(lambda: c.info.backend_pid in waiting_pids(shared_sandbox), what="c to wait")

        report = diagnose(config)
        finding = next(f for f in report.by_concern("lock_waits") if f.node == "primary")
        assert finding.severity in ("warning", "critical")
        ev = finding.evidence
        pa, pb, pc = a.info.backend_pid, b.info.backend_pid, c.info.backend_pid
        assert ev["root_blockers"] == [pa]
        assert ev["depth"] == 3
        root = ev["chains"][0]
        assert root["pid"] == pa and root["state"] == "idle in transaction"
        assert "id = 1" in root["query"]
        mid = root["blocks"][0]
        assert mid["pid"] == pb and "transactionid" in mid["waiting_for"]
        assert mid["blocks"][0]["pid"] == pc
        assert "id = 2" in mid["blocks"][0]["query"]
        assert f"--pid {pa}" in (finding.action or "")

        out = run_cli("diagnose", "--json", config=diag_config(shared_sandbox, lock_wait="0s"))
        data = json.loads(out.stdout)
        assert any(f["concern"] == "lock_waits" and f["evidence"]["root_blockers"] == [pa]
                   for f in data["findings"])
    finally:
        a.rollback()
        if threads:
            threads[0].join(10)
            b.rollback()
        if len(threads) > 1:
            threads[1].join(10)
            c.rollback()
        for conn in (a, b, c):
            conn.close()


def test_blocking_chains_handles_multiple_blockers_and_cycles() -> None:
    rows = [{"pid": 1, "blocked_by": []}, {"pid": 2, "blocked_by": [1]}, {"pid": 3, "blocked_by": [1, 2]},
            {"pid": 7, "blocked_by": [8]}, {"pid": 8, "blocked_by": [7]}]
    chains = blocking_chains(rows)
    assert chains[0]["pid"] == 1
    assert [c["pid"] for c in chains[0]["blocks"]] == [2, 3]
    assert chains[0]["blocks"][0]["blocks"][0]["pid"] == 3


def test_stuck_archive_command_and_stopped_standby(make_sandbox, programs) -> None:  # type: ignore[no-untyped-def]
    sandbox = make_sandbox("arch")
    config = load(diag_config(sandbox))
    with pg_admin(sandbox) as conn:
        conn.execute("alter system set archive_mode = on")
        conn.execute("alter system set archive_command = '/bin/false'")
    primary = sandbox.instance(sandbox.primary, programs)
    primary.stop()
    primary.start()
    with pg_admin(sandbox) as conn:
        conn.execute("create table t as select 1 as x")
        conn.execute("select pg_switch_wal()")

        def failed() -> int:
            row = conn.execute("select failed_count from pg_stat_archiver").fetchone()
            return int(row[0]) if row else 0
        wait_for(lambda: failed() > 0, timeout=30, what="archive_command to fail")

    report = diagnose(config)
    arch = report.by_concern("archive_command")[0]
    assert arch.severity == "critical"
    assert arch.evidence["failed_count"] > 0
    assert arch.evidence["last_failed_wal"]
    assert arch.evidence["archive_command"] == "/bin/false"
    assert arch.evidence["ready_count"] >= 1
    assert report.severity == "critical"

    standby = next(n for n in sandbox.nodes if n.role == "standby")
    sandbox.instance(standby, programs).stop()
    report = diagnose(config)
    conn_f = next(f for f in report.by_concern("connectivity") if f.node == standby.name)
    assert conn_f.severity == "critical" and conn_f.evidence["cause"] == "refused"
    rep = next(f for f in report.by_concern("replication") if f.evidence.get("standby") == standby.name)
    assert rep.severity == "critical"
    assert rep.evidence["standby_reachable"] is False
    assert rep.evidence["slot"]["active"] is False
    assert "not streaming" in rep.summary
    slot = next(f for f in report.by_concern("replication_slots")
                if f.evidence["slot_name"] == standby.name)
    assert slot.severity in ("warning", "critical")
    out = run_cli("diagnose", config=sandbox.config_path)
    assert out.returncode == 1
    assert "connection refused" in out.stdout


def test_diagnose_names_an_unreachable_primary(make_sandbox, programs) -> None:  # type: ignore[no-untyped-def]
    sandbox = make_sandbox("down", standbys=0)
    sandbox.instance(sandbox.primary, programs).stop()
    report = diagnose(load(sandbox.config_path))
    f = report.by_concern("connectivity")[0]
    assert f.evidence["cause"] == "refused" and f.severity == "critical"
    assert report.by_concern("primary")[0].severity == "critical"
    out = run_cli("diagnose", "--json", config=sandbox.config_path)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert json.loads(out.stdout)["nodes"]["primary"]["cause"] == "refused"


def test_psycopg_too_many_clients_is_classified() -> None:
    from pgdr.diagnose.gather import classify_failure

    assert classify_failure(psycopg.errors.TooManyConnections()) == "too_many_clients"
    assert classify_failure(psycopg.errors.CannotConnectNow()) == "starting_up"
    assert classify_failure(psycopg.errors.InvalidPassword()) == "auth_failed"
