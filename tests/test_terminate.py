"""pgdr terminate removes exactly the matching sessions and nothing else; dry-run removes none."""

from __future__ import annotations

import json
import time
from typing import Any

import psycopg
import pytest

from pgdr.sandbox.sandbox import Sandbox
from tests.conftest import run_cli
from tests.diaghelp import connect, pg_admin


def _alive(conn: psycopg.Connection[Any]) -> bool:
    try:
        conn.execute("select 1")
        return True
    except psycopg.OperationalError:
        return False


def _live_pids(sandbox: Sandbox) -> set[int]:
    with pg_admin(sandbox) as conn:
        return {r[0] for r in conn.execute("select pid from pg_stat_activity where pid <> pg_backend_pid()")}


@pytest.fixture
def tester_role(shared_sandbox: Sandbox) -> str:
    with pg_admin(shared_sandbox) as conn:
        conn.execute("do $$ begin if not exists (select from pg_roles where rolname = 'tester') "
                     "then create role tester login; end if; end $$")
        conn.execute("grant select on all tables in schema public to tester")
    return "tester"


def test_terminate_idle_in_transaction_exactly(shared_sandbox: Sandbox, tester_role: str) -> None:
    cfg = shared_sandbox.config_path
    victims = [connect(shared_sandbox, user=tester_role, app=f"victim{i}") for i in range(2)]
    idle = connect(shared_sandbox, user=tester_role, app="bystander_idle")
    superuser_tx = connect(shared_sandbox, user="postgres", app="bystander_super")
    young_tx = None
    try:
        for conn in victims + [superuser_tx]:
            conn.execute("select count(*) from customers")
        idle.execute("select 1")
        idle.commit()
        time.sleep(3.2)
        victim_pids = sorted(c.info.backend_pid for c in victims)
        before = _live_pids(shared_sandbox)

        dry = run_cli("terminate", "--idle-in-transaction", "3s", "--dry-run", "--json", config=cfg)
        assert dry.returncode == 0, dry.stderr
        plan = json.loads(dry.stdout)
        assert sorted(s["pid"] for s in plan["sessions"]) == victim_pids
        assert plan["outcomes"] == [] and plan["dry_run"] is True
        assert before - _live_pids(shared_sandbox) == set()

        refused = run_cli("terminate", "--idle-in-transaction", "3s", config=cfg, input_text="")
        assert refused.returncode == 2
        assert "--yes" in refused.stderr and "Traceback" not in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
        assert set(victim_pids) <= _live_pids(shared_sandbox)  # (querying them would reset their state)

        young_tx = connect(shared_sandbox, user=tester_role, app="bystander_young")
        young_tx.execute("select 1")  # idle in transaction, but for less than the threshold
        before = _live_pids(shared_sandbox)
        done = run_cli("terminate", "--idle-in-transaction", "3s", "--yes", "--json", config=cfg)
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert sorted(o["pid"] for o in result["outcomes"]) == victim_pids
        assert {o["result"] for o in result["outcomes"]} == {"terminated"}
        gone = before - _live_pids(shared_sandbox)
        assert gone == set(victim_pids)
        assert not any(_alive(c) for c in victims)
        assert _alive(idle) and _alive(superuser_tx) and _alive(young_tx)
    finally:
        for conn in victims + [idle, superuser_tx] + ([young_tx] if young_tx else []):
            conn.close()


def test_terminate_pid_never_touches_replication_or_superusers(shared_sandbox: Sandbox) -> None:
    cfg = shared_sandbox.config_path
    with pg_admin(shared_sandbox) as conn:
        walsender = conn.execute("select pid from pg_stat_activity where backend_type = 'walsender' "
                                 "limit 1").fetchone()
        autovac = conn.execute("select pid from pg_stat_activity where backend_type = "
                               "'autovacuum launcher'").fetchone()
    assert walsender is not None
    for pid in [walsender[0]] + ([autovac[0]] if autovac else []):
        out = run_cli("terminate", "--pid", str(pid), "--include-superusers", "--yes", "--json", config=cfg)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["sessions"] == []
        assert pid in _live_pids(shared_sandbox)
    superuser = connect(shared_sandbox, user="postgres", app="su")
    try:
        pid = superuser.info.backend_pid
        out = run_cli("terminate", "--pid", str(pid), "--yes", "--json", config=cfg)
        assert json.loads(out.stdout)["sessions"] == [] and _alive(superuser)
        out = run_cli("terminate", "--pid", str(pid), "--include-superusers", "--yes", "--json", config=cfg)
        assert [o["result"] for o in json.loads(out.stdout)["outcomes"]] == ["terminated"]
        assert not _alive(superuser)
    finally:
        superuser.close()


def test_terminate_usage_errors(shared_sandbox: Sandbox) -> None:
    cfg = shared_sandbox.config_path
    out = run_cli("terminate", config=cfg)
    assert out.returncode == 2 and "exactly one of" in out.stderr
    out = run_cli("terminate", "--idle", "5m", "--pid", "1", config=cfg)
    assert out.returncode == 2
    out = run_cli("terminate", "--idle", "soon", config=cfg)
    assert out.returncode == 2 and "not a duration" in out.stderr
