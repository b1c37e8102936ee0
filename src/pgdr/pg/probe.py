"""What each configured node is right now: reachable, role, timeline, positions.

One short query per node; the failover, status and diagnose commands all start
from these facts, so they are gathered the same way everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pgdr.config import Config, NodeConfig
from pgdr.errors import ConnectionFailed, PgdrError
from pgdr.pg.connect import session

NODE_STATE_SQL = """
select pg_is_in_recovery() as in_recovery,
       (select timeline_id from pg_control_checkpoint()) as checkpoint_timeline,
       case when pg_is_in_recovery() then null else pg_current_wal_lsn()::text end as current_lsn,
       pg_last_wal_receive_lsn()::text as receive_lsn,
       pg_last_wal_replay_lsn()::text as replay_lsn,
       pg_last_xact_replay_timestamp() as last_replay_time,
       (select system_identifier::text from pg_control_system()) as system_identifier,
       current_setting('server_version') as server_version,
       current_setting('server_version_num')::int as server_version_num,
       current_setting('wal_segment_size') as wal_segment_size_text,
       current_setting('data_checksums') = 'on' as data_checksums,
       now() as now
"""


@dataclass
class NodeState:
    node: NodeConfig
    reachable: bool
    error: str | None = None
    facts: dict[str, Any] | None = None

    @property
    def role(self) -> str:
        if not self.reachable or self.facts is None:
            return "unreachable"
        return "standby" if self.facts["in_recovery"] else "primary"


def probe(node: NodeConfig, timeout: float = 3) -> NodeState:
    try:
        with session(node.conninfo, timeout=timeout) as conn:
            row = conn.execute(NODE_STATE_SQL).fetchone()
            assert row is not None
            return NodeState(node, True, facts=dict(row))
    except PgdrError as exc:
        return NodeState(node, False, error=exc.message)


def probe_all(config: Config, timeout: float = 3) -> list[NodeState]:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, len(config.nodes))) as pool:
        return list(pool.map(lambda n: probe(n, timeout), config.nodes))


def find_primary(config: Config, states: list[NodeState] | None = None) -> NodeState:
    """The node that is writable now; the configured primary if it is one of several."""
    states = states if states is not None else probe_all(config)
    primaries = [s for s in states if s.role == "primary"]
    if len(primaries) == 1:
        return primaries[0]
    if len(primaries) > 1:
        configured = [s for s in primaries if s.node.role == "primary"]
        if configured:
            return configured[0]
        return primaries[0]
    configured_state = next(s for s in states if s.node.name == config.configured_primary.name)
    raise ConnectionFailed(
        f"no primary reachable: {config.configured_primary.name}: "
        f"{configured_state.error or configured_state.role}",
        hint="start the primary, or run `pgdr status` to see every node")
