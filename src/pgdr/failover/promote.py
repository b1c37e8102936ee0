"""Promotion: replay everything received, promote, prove a write, name synchronous standbys."""

from __future__ import annotations

import time
from collections.abc import Callable

import psycopg
from psycopg import sql

from pgdr.config import NodeConfig
from pgdr.errors import PgdrError
from pgdr.failover.quorum import SyncSpec
from pgdr.pg.connect import session
from pgdr.pg.lsn import parse_lsn

# Replay has reached the last complete record when it has not moved for this many polls
# (at POLL seconds) while no WAL receiver streams: what remains is a torn tail.
STABLE_POLLS = 10
POLL = 0.02
PROMOTE_POLL = 0.005


class PromotionFailed(PgdrError):
    """The candidate did not become a writable primary."""


def wait_replayed(node: NodeConfig, timeout: float) -> tuple[str, str]:
    """Resume a paused replay and wait until it reaches the last complete record received.

    Returns (replayed LSN, why it stopped waiting). When the primary died mid-record the
    received position is past the last complete record and replay never reaches it:
    replay standing still for STABLE_POLLS polls with no WAL receiver streaming means
    exactly that, and is not an error. Replay still moving at the deadline is.
    """
    deadline = time.monotonic() + timeout
    with session(node.conninfo) as conn:
        row = conn.execute("select pg_is_wal_replay_paused() as paused").fetchone()
        if row and row["paused"]:
            conn.execute("select pg_wal_replay_resume()")
        last, stable = -1, 0
        while True:
            row = conn.execute("select pg_last_wal_receive_lsn()::text as rcv, "
                               "pg_last_wal_replay_lsn()::text as rpl, "
                               "exists (select 1 from pg_stat_wal_receiver where status = 'streaming') "
                               "as streaming").fetchone()
            assert row is not None
            received = parse_lsn(row["rcv"]) if row["rcv"] else 0
            replayed = parse_lsn(row["rpl"]) if row["rpl"] else 0
            if replayed >= received:
                return str(row["rpl"]), "replayed everything received"
            stable = stable + 1 if replayed == last else 0
            last = replayed
            if stable >= STABLE_POLLS and not row["streaming"]:
                return str(row["rpl"]), (f"replay stopped at the last complete record; {received - replayed} "
                                         f"bytes received after it are a torn tail (received {row['rcv']})")
            if time.monotonic() > deadline:
                raise PromotionFailed(f"{node.name} was still replaying after {timeout:.0f}s "
                                      f"(replayed {row['rpl']}, received {row['rcv']})",
                                      hint="raise failover.replay_timeout, or promote with --force")
            time.sleep(POLL)


def clear_synchronous(node: NodeConfig) -> None:
    """Before promotion: the candidate must not inherit a list of standbys that may never
    follow it (every write would then wait forever). Harmless while it is a standby."""
    with session(node.conninfo) as conn:
        conn.execute("alter system set synchronous_standby_names = ''")
        conn.execute("select pg_reload_conf()")


def promote(node: NodeConfig, timeout: float = 30, still_allowed: Callable[[], str | None] | None = None) -> int:
    """pg_promote over SQL (works for remote nodes too); returns the new timeline.

    still_allowed is asked right before pg_promote (watch: is the lease still ours?);
    a reason returned aborts the promotion.
    """
    if still_allowed is not None:
        why_not = still_allowed()
        if why_not:
            raise PromotionFailed(f"not promoting {node.name}: {why_not}")
    with session(node.conninfo) as conn:
        # pg_promote(wait => true) checks for the end of recovery every 100 ms on the server;
        # asking ourselves every PROMOTE_POLL seconds ends the wait up to ~0.1 s sooner
        row = conn.execute("select pg_promote(false) as ok").fetchone()
        if not row or not row["ok"]:
            raise PromotionFailed(f"{node.name} refused the promotion signal")
        deadline = time.monotonic() + timeout
        while True:
            row = conn.execute("select pg_is_in_recovery() as r").fetchone()
            assert row is not None
            if not row["r"]:
                break
            if time.monotonic() > deadline:
                raise PromotionFailed(f"{node.name} did not finish promotion within {timeout:.0f}s")
            time.sleep(PROMOTE_POLL)
    return timeline_of(node)


def timeline_of(node: NodeConfig) -> int:
    """The timeline the node writes on now (pg_control_checkpoint lags until the next checkpoint)."""
    with session(node.conninfo) as conn:
        row = conn.execute("select substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) as tli").fetchone()
        assert row is not None
        return int(row["tli"], 16)


def fork_point(node: NodeConfig, timeline: int) -> str | None:
    """Where `timeline` forked off its parent, as PostgreSQL recorded it: the last line of
    the new timeline's history file (parent timeline, switchpoint, reason). This is the
    server's own truth, not a position pgdr sampled before pg_promote; read with
    pg_read_file (superuser or pg_read_server_files), else from the local data directory.
    None when neither is readable."""
    name = f"pg_wal/{timeline:08X}.history"
    text: str | None = None
    try:
        with session(node.conninfo, timeout=3) as conn:
            row = conn.execute("select pg_read_file(%s) as t", (name,)).fetchone()
            text = str(row["t"]) if row and row["t"] is not None else None
    except (PgdrError, psycopg.Error):
        pass
    if text is None and node.data_dir is not None:
        try:
            text = (node.data_dir / name).read_text()
        except OSError:
            return None
    lines = [line.split() for line in (text or "").splitlines() if line.strip() and not line.startswith("#")]
    if not lines or len(lines[-1]) < 2 or "/" not in lines[-1][1]:
        return None
    return lines[-1][1]


def prove_writable(node: NodeConfig) -> str:
    """Assigning a transaction id fails on anything read-only: a real write, no schema change.

    synchronous_commit = local: the proof is about this server, and must never wait on
    synchronous replication to standbys that are not following yet.
    """
    try:
        with session(node.conninfo, timeout=3) as conn:
            conn.execute("set synchronous_commit = local")
            conn.execute("set statement_timeout = '5s'")
            row = conn.execute("select txid_current()::text as xid, pg_current_wal_lsn()::text as lsn").fetchone()
            assert row is not None
            return f"xid {row['xid']} at {row['lsn']}"
    except Exception as exc:
        raise PromotionFailed(f"{node.name} was promoted but does not accept writes: "
                              f"{getattr(exc, 'message', exc)}") from None


def streaming_names(primary: NodeConfig, names: list[str]) -> list[str]:
    """Which of `names` (application names) the primary shows as streaming."""
    with session(primary.conninfo) as conn:
        rows = conn.execute("select application_name from pg_stat_replication "
                            "where state = 'streaming' and application_name = any(%s)", (names,)).fetchall()
    return sorted({r["application_name"] for r in rows})


def on_timeline(standby: NodeConfig, timeline: int) -> bool:
    """Has the standby received WAL of `timeline`? A standby that forked off the old timeline
    after the promotion point shows 'streaming' on the new primary for a moment (it is sent
    the old timeline's last segment) and reports its own, further, flush position — but it
    never receives the new timeline, so only this proves it follows."""
    try:
        with session(standby.conninfo, timeout=3) as conn:
            row = conn.execute("select status, received_tli from pg_stat_wal_receiver").fetchone()
    except PgdrError:
        return False
    return bool(row and row["status"] == "streaming" and (row["received_tli"] or 0) >= timeline)


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


def set_synchronous(primary: NodeConfig, spec: SyncSpec, candidates: dict[str, NodeConfig | None],
                    timeout: float, timeline: int | None = None) -> dict[str, object]:
    """Name as synchronous only standbys that stream from `primary`, waiting up to `timeout`.

    candidates: application name → the standby's node (None: judged by the primary alone).
    With `timeline` (right after a promotion) a standby counts only once it received WAL of
    that timeline (see on_timeline). Keeps the method and number of the spec (capped by how
    many stream). None streaming: synchronous replication is degraded to asynchronous,
    explicitly — the result says so.
    """
    deadline = time.monotonic() + timeout
    streaming: list[str] = []
    names = sorted(candidates)
    while names:
        streaming = [n for n in streaming_names(primary, names)
                     if timeline is None or (node := candidates[n]) is None or on_timeline(node, timeline)]
        if len(streaming) >= min(spec.num, len(names)) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    value = SyncSpec(spec.method, min(spec.num, len(streaming)), tuple(streaming)).render() if streaming else ""
    with session(primary.conninfo) as conn:
        conn.execute(sql.SQL("alter system set synchronous_standby_names = {}").format(sql.Literal(value)))
        conn.execute("select pg_reload_conf()")
    waiting = sorted(set(names) - set(streaming))
    return {"synchronous_standby_names": value, "streaming": streaming, "not_streaming": waiting,
            "degraded": not streaming,
            "detail": (f"synchronous: {value}" if streaming else
                       "DEGRADED to asynchronous: no standby streams from the new primary yet")
            + (f"; not streaming: {', '.join(waiting)}" if waiting and streaming else "")}
