"""Replication slot names derived from node names.

A slot name may hold only lower-case letters, digits and underscores, at most 63
bytes; node names allow `-` and `.` (`db-1`), so using them raw breaks
pg_create_physical_replication_slot in the middle of a failover. Distinct node
names must keep distinct slots: a name that had to be changed gets a short hash.
"""

from __future__ import annotations

import hashlib
import re

from pgdr.pg.slots import ensure_physical_slot

MAX_SLOT = 63


def slot_name(node_name: str) -> str:
    """`db-1` → `db_1_<hash>`; an already valid name (`standby1`) is kept as it is."""
    if re.fullmatch(r"[a-z0-9_]{1,63}", node_name):
        return node_name
    base = re.sub(r"[^a-z0-9_]", "_", node_name.lower()) or "node"
    digest = hashlib.sha1(node_name.encode()).hexdigest()[:8]
    return f"{base[:MAX_SLOT - 9]}_{digest}"



def ensure_slot(primary_conninfo: str, slot: str) -> None:
    """A physical slot on the primary, so it keeps the WAL a (re)joining standby needs."""
    ensure_physical_slot(primary_conninfo, slot)
