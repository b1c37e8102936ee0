"""Physical replication slots: the one helper that creates them (archiver, failover)."""

from __future__ import annotations

from psycopg import errors as pgerrors

from pgdr.errors import PrivilegeMissing
from pgdr.pg.connect import session
from pgdr.pg.conninfo import parse


def ensure_physical_slot(conninfo: str, slot: str) -> None:
    """A physical slot named `slot` that reserves WAL from now on (immediately, so nothing
    is recycled before its consumer connects); a slot that exists is left as it is."""
    with session(conninfo, timeout=5, statement_timeout=30, what=f"creating slot {slot}") as conn:
        try:
            conn.execute(
                "select pg_create_physical_replication_slot(%s, true) "
                "where not exists (select 1 from pg_replication_slots where slot_name = %s)",
                (slot, slot))
        except pgerrors.InsufficientPrivilege:
            user = parse(conninfo).get("user") or "the role"
            raise PrivilegeMissing(
                f"role {user} may not create replication slot {slot}: it has neither REPLICATION "
                "nor superuser",
                hint=f"ALTER ROLE {user} REPLICATION, or set mode = \"logical\" for a managed "
                     "database (logical backups only)") from None
