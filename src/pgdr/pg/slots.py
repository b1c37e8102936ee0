"""Physical replication slots: the one helper that creates them (archiver, failover)."""

from __future__ import annotations

from pgdr.pg.connect import session


def ensure_physical_slot(conninfo: str, slot: str) -> None:
    """A physical slot named `slot` that reserves WAL from now on (immediately, so nothing
    is recycled before its consumer connects); a slot that exists is left as it is."""
    with session(conninfo, timeout=5, statement_timeout=30, what=f"creating slot {slot}") as conn:
        conn.execute(
            "select pg_create_physical_replication_slot(%s, true) "
            "where not exists (select 1 from pg_replication_slots where slot_name = %s)",
            (slot, slot))
