"""Promotion: replay everything received, promote, prove a write, let others follow."""

from __future__ import annotations

import time

from psycopg import sql

from pgdr.config import NodeConfig
from pgdr.errors import PgdrError
from pgdr.pg.connect import session
from pgdr.pg.conninfo import with_params
from pgdr.pg.lsn import parse_lsn
from pgdr.pg.slots import ensure_physical_slot


class PromotionFailed(PgdrError):
    """The candidate did not become a writable primary."""


def wait_replayed(node: NodeConfig, timeout: float) -> str:
    """Resume a paused replay and wait until everything received is replayed; returns the LSN."""
    deadline = time.monotonic() + timeout
    with session(node.conninfo) as conn:
        row = conn.execute("select pg_is_wal_replay_paused() as paused").fetchone()
        if row and row["paused"]:
            conn.execute("select pg_wal_replay_resume()")
        while True:
            row = conn.execute("select pg_last_wal_receive_lsn()::text as rcv, "
                               "pg_last_wal_replay_lsn()::text as rpl").fetchone()
            assert row is not None
            received = parse_lsn(row["rcv"]) if row["rcv"] else 0
            replayed = parse_lsn(row["rpl"]) if row["rpl"] else 0
            if replayed >= received:
                return str(row["rpl"])
            if time.monotonic() > deadline:
                raise PromotionFailed(f"{node.name} did not replay received WAL within {timeout:.0f}s "
                                      f"(replayed {row['rpl']}, received {row['rcv']})")
            time.sleep(0.02)


def promote(node: NodeConfig, timeout: float = 30) -> int:
    """pg_promote over SQL (works for remote nodes too); returns the new timeline."""
    with session(node.conninfo) as conn:
        row = conn.execute("select pg_promote(true, %s) as ok", (int(timeout),)).fetchone()
        if not row or not row["ok"]:
            raise PromotionFailed(f"{node.name} did not finish promotion within {timeout:.0f}s")
        deadline = time.monotonic() + timeout
        while True:
            row = conn.execute("select pg_is_in_recovery() as r, "
                               "(select timeline_id from pg_control_checkpoint()) as tli").fetchone()
            assert row is not None
            if not row["r"]:
                break
            if time.monotonic() > deadline:
                raise PromotionFailed(f"{node.name} is still in recovery after promotion")
            time.sleep(0.02)
    return timeline_of(node)


def timeline_of(node: NodeConfig) -> int:
    """The timeline the node writes on now (pg_control_checkpoint lags until the next checkpoint)."""
    with session(node.conninfo) as conn:
        row = conn.execute("select substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) as tli").fetchone()
        assert row is not None
        return int(row["tli"], 16)


def prove_writable(node: NodeConfig) -> str:
    """Assigning a transaction id fails on anything read-only: a real write, no schema change."""
    try:
        with session(node.conninfo, timeout=3) as conn:
            row = conn.execute("select txid_current()::text as xid, pg_current_wal_lsn()::text as lsn").fetchone()
            assert row is not None
            return f"xid {row['xid']} at {row['lsn']}"
    except Exception as exc:
        raise PromotionFailed(f"{node.name} was promoted but does not accept writes: "
                              f"{getattr(exc, 'message', exc)}") from None


def ensure_slot(primary: NodeConfig, slot: str) -> None:
    ensure_physical_slot(primary.conninfo, slot)


def primary_conninfo_for(standby_name: str, primary: NodeConfig) -> str:
    return with_params(primary.conninfo, application_name=standby_name, dbname=None)


def follow(standby: NodeConfig, primary: NodeConfig) -> None:
    """Point a running standby at the new primary (primary_conninfo reloads since PG 13)."""
    ensure_slot(primary, standby.name)
    with session(standby.conninfo) as conn:
        conn.execute(sql.SQL("alter system set primary_conninfo = {}").format(
            sql.Literal(primary_conninfo_for(standby.name, primary))))
        conn.execute(sql.SQL("alter system set primary_slot_name = {}").format(sql.Literal(standby.name)))
        conn.execute("select pg_reload_conf()")


def wait_streaming(primary: NodeConfig, standby_name: str, timeout: float = 30) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    with session(primary.conninfo) as conn:
        while True:
            row = conn.execute("select state, sync_state, replay_lsn::text as replay_lsn "
                               "from pg_stat_replication where application_name = %s", (standby_name,)).fetchone()
            if row and row["state"] == "streaming":
                return dict(row)
            if time.monotonic() > deadline:
                raise PgdrError(f"{standby_name} is not streaming from {primary.name} after {timeout:.0f}s")
            time.sleep(0.1)


def keep_synchronous(primary: NodeConfig, standbys: list[str]) -> str:
    """After a synchronous failover, the new primary waits for the standbys that remain.

    With none left, synchronous replication is suspended rather than blocking every write.
    """
    value = f"ANY 1 ({', '.join(standbys)})" if standbys else ""
    with session(primary.conninfo) as conn:
        conn.execute(sql.SQL("alter system set synchronous_standby_names = {}").format(sql.Literal(value)))
        conn.execute("select pg_reload_conf()")
    return value or "suspended: no standby left to wait for"
