"""The preflight table: every node's facts, and which standby may be promoted.

Lag is measured against the best position anyone knows: the old primary's current
LSN when it still answers, else the most advanced standby's received LSN. A
standby that has not replayed what it received will replay it before promotion
(that costs RTO); WAL it never received is lost (that is RPO).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pgdr.config import Config, NodeConfig
from pgdr.failover.quorum import parse_sync, quorum
from pgdr.pg.lsn import format_lsn, parse_lsn
from pgdr.pg.probe import probe_all


@dataclass
class NodeFacts:
    node: NodeConfig
    reachable: bool
    error: str | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    lag_bytes: int | None = None
    lag_seconds: float | None = None

    @property
    def role(self) -> str:
        if not self.reachable:
            return "unreachable"
        return "standby" if self.facts["in_recovery"] else "primary"

    @property
    def position(self) -> int:
        """The furthest WAL this node holds: current LSN for a primary, received or replayed for a standby."""
        if not self.reachable:
            return -1
        if self.facts.get("current_lsn"):
            return parse_lsn(self.facts["current_lsn"])
        # After a restart the receive position is reset to the start of the segment the WAL
        # receiver asks for, behind what was already replayed from pg_wal: take the further.
        held = [parse_lsn(lsn) for lsn in (self.facts.get("receive_lsn"), self.facts.get("replay_lsn")) if lsn]
        return max(held, default=-1)

    @property
    def replayed(self) -> int:
        lsn = self.facts.get("replay_lsn") or self.facts.get("current_lsn")
        return parse_lsn(lsn) if lsn else -1

    def row(self) -> dict[str, Any]:
        f = self.facts
        return {"name": self.node.name, "reachable": self.reachable, "role": self.role,
                "timeline": f.get("timeline") or f.get("checkpoint_timeline"), "receive_lsn": f.get("receive_lsn") or f.get("current_lsn"),
                "replay_lsn": f.get("replay_lsn"), "lag_bytes": self.lag_bytes,
                "lag_seconds": None if self.lag_seconds is None else round(self.lag_seconds, 3),
                "last_replay_time": str(f["last_replay_time"]) if f.get("last_replay_time") else None,
                "receiver": f.get("receiver_status"), "error": self.error}


def gather(config: Config, timeout: float = 3) -> list[NodeFacts]:
    nodes = [NodeFacts(st.node, st.reachable, st.error, dict(st.facts or {})) for st in probe_all(config, timeout)]
    reference = max((n.position for n in nodes), default=-1)
    for n in nodes:
        if n.role != "standby":
            continue
        n.lag_bytes = max(0, reference - n.replayed)
        last = n.facts.get("last_replay_time")
        if n.lag_bytes == 0 or last is None:
            n.lag_seconds = 0.0 if n.lag_bytes == 0 else None
        else:
            n.lag_seconds = max(0.0, (n.facts["now"] - last).total_seconds())
    return nodes


@dataclass
class Choice:
    candidate: NodeFacts | None
    reason: str
    refused: bool = False
    synchronous: bool = False
    sync_setting: str = ""
    forced: bool = False
    # With the quorum unproven: the position a reached standby holds, to estimate the loss.
    best_position: int | None = None


def sync_setting(config: Config, nodes: list[NodeFacts], topology: dict[str, Any]) -> str:
    """The synchronous_standby_names that held at the crash: the live primary's, else the
    one the topology last recorded from a live primary, else the config's starting point."""
    live = [n.facts.get("synchronous_standby_names") for n in nodes if n.role == "primary"]
    if live:
        return str(live[0] or "")
    if "synchronous_standby_names" in topology:
        return str(topology["synchronous_standby_names"] or "")
    return config.failover.synchronous_standby_names or ""


def _best(nodes: list[NodeFacts]) -> NodeFacts:
    return max(nodes, key=lambda n: (n.position, n.replayed))


def choose_candidate(config: Config, nodes: list[NodeFacts], to: str | None, force: bool,
                     topology: dict[str, Any] | None = None, old_primary: str | None = None,
                     planned: bool = False) -> Choice:
    """The standby to promote, quorum-aware under synchronous replication (see quorum.py).

    planned (switchover): the primary shuts down cleanly and the candidate replays its
    shutdown checkpoint first, so no quorum is needed to know it has everything.
    """
    standbys = [n for n in nodes if n.role == "standby"]
    if not standbys:
        return Choice(None, "no reachable standby to promote", refused=True)
    ssn = sync_setting(config, nodes, topology or {})
    spec = parse_sync(ssn)
    sync = spec.synchronous and not planned
    note = ""
    if sync:
        names = [n.name for n in config.nodes if n.name != old_primary]
        verdict = quorum(spec, names, [n.node.name for n in standbys])
        listed = [n for n in standbys if n.node.name in verdict.reached]
        if not verdict.proven or not listed:
            best = _best(listed or standbys)
            why = (f"replication is synchronous ({ssn}) and {verdict.explain()}: promoting "
                   f"{best.node.name} could lose acknowledged commits")
            if not force:
                return Choice(best, why + " — bring the other standbys back, or pass --force to accept",
                              refused=True, synchronous=True, sync_setting=ssn, best_position=best.position)
            note = f"; FORCED although {why}"
        safe = _best(listed or standbys)
        if to is not None:
            chosen = next((n for n in standbys if n.node.name == to), None)
            if chosen is None:
                return Choice(None, f"{to} is not a reachable standby", refused=True, synchronous=True, sync_setting=ssn)
            if chosen.position < safe.position:
                behind = (f"{to} has received {safe.position - chosen.position} bytes less than "
                          f"{safe.node.name}: it may lack acknowledged commits")
                if not force:
                    return Choice(chosen, behind + " — pass --force to accept", refused=True, synchronous=True,
                                  sync_setting=ssn, best_position=safe.position)
                note += f"; FORCED although {behind}"
        else:
            chosen = safe
    else:
        chosen = next((n for n in standbys if n.node.name == to), None) if to is not None else _best(standbys)
        if chosen is None:
            return Choice(None, f"{to} is not a reachable standby", refused=True)
    lag_b, lag_s = chosen.lag_bytes or 0, chosen.lag_seconds or 0.0
    over = lag_b > config.failover.max_lag_bytes or lag_s > config.failover.max_lag_seconds
    how = "chosen with --to" if to is not None else (
        "most advanced of the quorum" if sync else "most advanced standby")
    reason = f"{chosen.node.name}: {how}, {lag_b} bytes / {lag_s:.1f}s behind{note}"
    if over and not force:
        return Choice(chosen, f"{chosen.node.name} lags {lag_b} bytes / {lag_s:.1f}s, over the maximum "
                      f"({config.failover.max_lag_bytes} bytes / {config.failover.max_lag_seconds:.0f}s); "
                      "promoting it would lose or delay data — pass --force to accept", refused=True,
                      synchronous=sync, sync_setting=ssn)
    return Choice(chosen, reason, synchronous=sync, sync_setting=ssn, forced=force and (bool(note) or over))


def lsn_text(value: int) -> str:
    return format_lsn(value) if value >= 0 else "-"
