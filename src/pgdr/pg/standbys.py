"""Which walsender on the primary feeds which configured standby.

The cluster identifies a standby by its slot, its application_name or its client
address — not by the name pgdr's config gives it. `pg_basebackup -R` leaves the
application_name at `walreceiver` for every standby, so matching by node name alone
calls a healthy hand-built standby "not streaming". In order of certainty:

1. slot: the standby's pg_stat_wal_receiver.slot_name is the slot whose active_pid
   is the walsender's pid;
2. application_name: the node's configured name, or the name the standby really
   sends (application_name in its primary_conninfo, else its cluster_name), unless
   that is libpq's default `walreceiver`, which says nothing;
3. client address: the walsender's client_addr is the standby's configured host,
   and no other walsender comes from there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pgdr.config import NodeConfig
from pgdr.errors import PgdrError
from pgdr.pg.conninfo import parse

DEFAULT_APPLICATION_NAME = "walreceiver"


def sent_application_name(facts: dict[str, Any]) -> str | None:
    """The application_name a standby's walreceiver announces, from its own facts."""
    conninfo = facts.get("receiver_conninfo")
    if conninfo:
        try:
            name = parse(str(conninfo)).get("application_name")
        except PgdrError:
            name = None
        if name:
            return name
    cluster = facts.get("cluster_name")
    return str(cluster) if cluster else None


def _host_of(node: NodeConfig) -> str | None:
    try:
        host = parse(node.conninfo).get("host")
    except PgdrError:
        return None
    return host if host and not host.startswith("/") else None


def _addr(value: object) -> str | None:
    """inet as text may carry a /32 or /128 suffix."""
    return str(value).split("/", 1)[0] if value else None


def match_standbys(senders: Sequence[dict[str, Any]], slots: Sequence[dict[str, Any]],
                   standbys: Sequence[tuple[NodeConfig, dict[str, Any] | None]]) -> dict[str, dict[str, Any]]:
    """node name -> its walsender row (from pg_stat_replication), for standbys found."""
    slot_of_pid = {s["active_pid"]: s["slot_name"] for s in slots if s.get("active_pid") is not None}
    free = list(senders)
    found: dict[str, dict[str, Any]] = {}

    def take(name: str, row: dict[str, Any]) -> None:
        found[name] = {**row, "slot_name": slot_of_pid.get(row.get("pid"))}
        free.remove(row)

    # 1. by slot
    for node, facts in standbys:
        slot = (facts or {}).get("receiver_slot")
        row = next((r for r in free if slot and slot_of_pid.get(r.get("pid")) == slot), None)
        if row is not None:
            take(node.name, row)
    # 2. by application_name
    for node, facts in standbys:
        if node.name in found:
            continue
        names = {node.name}
        sent = sent_application_name(facts or {})
        if sent and sent != DEFAULT_APPLICATION_NAME:
            names.add(sent)
        row = next((r for r in free if r.get("application_name") in names), None)
        if row is not None:
            take(node.name, row)
    # 3. by client address, only when unambiguous
    for node, _facts in standbys:
        host = _host_of(node)
        if node.name in found or host is None:
            continue
        rows = [r for r in free if _addr(r.get("client_addr")) == host]
        others = [n for n, _f in standbys if n.name not in found and n is not node and _host_of(n) == host]
        if len(rows) == 1 and not others:
            take(node.name, rows[0])
    return found
