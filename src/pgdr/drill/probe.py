"""Clients' view of an outage: a multi-host writer and a writability probe."""

from __future__ import annotations

import time
from datetime import datetime

import psycopg
from psycopg.conninfo import make_conninfo

from pgdr.sandbox import sandbox as sb


def any_primary_conninfo(sandbox: sb.Sandbox, dbname: str = "app") -> str:
    """libpq tries every node and keeps the writable one: how a real app reconnects."""
    hosts = ",".join(str(sandbox.socket_dir) for _ in sandbox.nodes)
    ports = ",".join(str(n.port) for n in sandbox.nodes)
    return make_conninfo(host=hosts, port=ports, dbname=dbname, user="postgres",
                         target_session_attrs="read-write", connect_timeout=1)


def wait_writable(conninfo: str, timeout: float = 60) -> float:
    """Monotonic time at which a write first succeeds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(conninfo, autocommit=True, connect_timeout=1) as conn:
                conn.execute("select txid_current()")
                return time.monotonic()
        except psycopg.Error:
            time.sleep(0.01)
    raise TimeoutError(f"nothing writable within {timeout:.0f}s")


def missing_rows(conninfo: str, rows: list[tuple[int, datetime]]) -> set[int]:
    """Ids of acknowledged orders the server lacks, matched on (id, created_at): after a
    failover the new primary hands out again the ids that lost commits had used (a
    sequence is WAL-logged 32 values ahead), so matching ids alone hides lost commits."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        found = conn.execute("select id, created_at from orders where id = any(%s)",
                             ([r[0] for r in rows],)).fetchall()
    present = {(int(r[0]), r[1]) for r in found}
    return {r[0] for r in rows if r not in present}


def missing_ids(conninfo: str, ids: list[int], table: str = "orders") -> set[int]:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        rows = conn.execute(f"select id from {table} where id = any(%s)", (ids,)).fetchall()
    return set(ids) - {r[0] for r in rows}
