"""`pgdr sandbox`: real servers, streaming standby, sample schema, local-only listening."""

from __future__ import annotations

import json

import psycopg
import pytest

from pgdr.pg.connect import session
from pgdr.sandbox import sandbox as sb
from tests.conftest import run_cli


def test_sandbox_up_creates_primary_standby_archiver_and_schema(shared_sandbox: sb.Sandbox) -> None:
    result = run_cli("sandbox", "status", "--dir", str(shared_sandbox.root), "--json")
    assert result.returncode == 0, result.stderr
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["primary"]["role"] == "primary" and rows["primary"]["state"] == "up"
    assert rows["standby1"]["role"] == "standby" and rows["standby1"]["state"] == "up"
    assert rows["archiver"]["state"] == "up"
    assert rows["primary"]["port"] != rows["standby1"]["port"]

    with session(shared_sandbox.conninfo(shared_sandbox.primary)) as conn:
        counts = conn.execute(
            "select (select count(*) from customers) + (select count(*) from products) + "
            "(select count(*) from orders) + (select count(*) from order_items) as n").fetchone()
        assert counts is not None and counts["n"] >= 100_000
        fks = conn.execute("select count(*) as n from pg_constraint where contype = 'f'").fetchone()
        assert fks is not None and fks["n"] >= 4
        assert conn.execute("show data_checksums").fetchone() == {"data_checksums": "on"}
        assert conn.execute("show listen_addresses").fetchone() == {"listen_addresses": "127.0.0.1"}
        rep = conn.execute("select application_name, state from pg_stat_replication").fetchall()
        assert {"application_name": "standby1", "state": "streaming"} in rep


def test_sandbox_refuses_tcp_login_without_password(shared_sandbox: sb.Sandbox) -> None:
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(host="127.0.0.1", port=shared_sandbox.primary.port, user="postgres",
                        dbname="postgres", connect_timeout=3)


def test_sandbox_up_again_restarts_a_stopped_node_and_down_keeps_folder(make_sandbox, programs) -> None:  # type: ignore[no-untyped-def]
    sandbox = make_sandbox("restart", standbys=1)
    standby = next(n for n in sandbox.nodes if n.role == "standby")
    sandbox.instance(standby, programs).stop()
    assert not sandbox.instance(standby, programs).is_running()

    result = run_cli("sandbox", "up", "--dir", str(sandbox.root))
    assert result.returncode == 0, result.stderr
    assert sandbox.instance(standby, programs).is_running()

    result = run_cli("sandbox", "down", "--dir", str(sandbox.root))
    assert result.returncode == 0, result.stderr
    assert not any(sandbox.instance(n, programs).is_running() for n in sandbox.nodes)
    assert (sandbox.root / "pgdr.toml").exists() and (sandbox.primary.data_dir / "PG_VERSION").exists()


def test_sandbox_status_without_sandbox_is_one_line_error(base_dir) -> None:  # type: ignore[no-untyped-def]
    result = run_cli("sandbox", "status", "--dir", str(base_dir / "nothing-here"))
    assert result.returncode == 1
    assert "no sandbox in" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
