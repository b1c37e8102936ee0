"""What each configured node is right now: reachable, role, timeline, positions.

One short query per node; the failover, status and diagnose commands all start
from these facts, so they are gathered the same way everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pgdr.config import Config, NodeConfig
from pgdr.errors import AuthenticationFailed, ConnectionFailed, PgdrError
from pgdr.pg.connect import session
from pgdr.pg.sql import load


@dataclass
class NodeState:
    node: NodeConfig
    reachable: bool
    error: str | None = None
    facts: dict[str, Any] | None = None
    # What to do about error: an authentication failure needs credentials, not a failover.
    hint: str | None = None
    auth_failed: bool = False

    @property
    def role(self) -> str:
        if not self.reachable or self.facts is None:
            return "unreachable"
        return "standby" if self.facts["in_recovery"] else "primary"


def probe(node: NodeConfig, timeout: float = 3) -> NodeState:
    try:
        with session(node.conninfo, timeout=timeout) as conn:
            row = conn.execute(load("node_state")).fetchone()
            assert row is not None
            return NodeState(node, True, facts=dict(row))
    except PgdrError as exc:
        return NodeState(node, False, error=exc.message, hint=exc.hint,
                         auth_failed=isinstance(exc, AuthenticationFailed))


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
    if configured_state.auth_failed:
        raise AuthenticationFailed(f"{config.configured_primary.name}: {configured_state.error}",
                                   hint=configured_state.hint)
    raise ConnectionFailed(
        f"no primary reachable: {config.configured_primary.name}: "
        f"{configured_state.error or configured_state.role}",
        hint="start the primary, or run `pgdr status` to see every node")
