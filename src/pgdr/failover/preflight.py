"""The preflight table: every node's facts, and which standby may be promoted.

Lag is measured against the best position anyone knows: the old primary's current
LSN when it still answers, else the most advanced standby's received LSN. A
standby that has not replayed what it received will replay it before promotion
(that costs RTO); WAL it never received is lost (that is RPO).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pgdr.config import Config, NodeConfig
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
        """The furthest WAL this node holds: current LSN for a primary, received for a standby."""
        if not self.reachable:
            return -1
        lsn = self.facts.get("current_lsn") or self.facts.get("receive_lsn") or self.facts.get("replay_lsn")
        return parse_lsn(lsn) if lsn else -1

    @property
    def replayed(self) -> int:
        lsn = self.facts.get("replay_lsn") or self.facts.get("current_lsn")
        return parse_lsn(lsn) if lsn else -1

    def row(self) -> dict[str, Any]:
        f = self.facts
        return {"name": self.node.name, "reachable": self.reachable, "role": self.role,
                "timeline": f.get("checkpoint_timeline"), "receive_lsn": f.get("receive_lsn") or f.get("current_lsn"),
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


_SSN_RE = re.compile(r"^\s*(?:(?:ANY|FIRST)\s+\d+\s*)?\((.*)\)\s*$", re.IGNORECASE)


def synchronous_names(setting: str) -> set[str] | None:
    """Names in synchronous_standby_names, or None when replication is asynchronous."""
    if not setting or not setting.strip():
        return None
    match = _SSN_RE.match(setting)
    body = match.group(1) if match else setting
    names = {part.strip().strip('"') for part in body.split(",") if part.strip()}
    if re.match(r"^\s*\d+\s*\(", setting):  # legacy "2 (a, b)"
        names = {part.strip().strip('"') for part in setting.split("(", 1)[1].rstrip(")").split(",")}
    return names


@dataclass
class Choice:
    candidate: NodeFacts | None
    reason: str
    refused: bool = False
    synchronous: bool = False


def choose_candidate(config: Config, nodes: list[NodeFacts], to: str | None, force: bool) -> Choice:
    standbys = [n for n in nodes if n.role == "standby"]
    if not standbys:
        return Choice(None, "no reachable standby to promote", refused=True)
    live = [n.facts.get("synchronous_standby_names") for n in nodes if n.role == "primary"]
    ssn = live[0] if live else (config.failover.synchronous_standby_names or next(
        (n.facts.get("synchronous_standby_names") for n in nodes if n.reachable
         and n.facts.get("synchronous_standby_names")), ""))
    sync_names = synchronous_names(ssn or "")
    eligible = standbys
    if sync_names is not None and "*" not in sync_names:
        eligible = [n for n in standbys if n.node.name in sync_names]
        if not eligible:
            return Choice(None, f"replication is synchronous ({ssn}) but no synchronous standby is reachable",
                          refused=True, synchronous=True)
    if to is not None:
        chosen = next((n for n in eligible if n.node.name == to), None)
        if chosen is None:
            why = "is not a reachable standby" if all(n.node.name != to for n in standbys) else \
                "is not a synchronous standby; promoting it could lose acknowledged commits"
            return Choice(None, f"{to} {why}", refused=True, synchronous=sync_names is not None)
    else:
        chosen = max(eligible, key=lambda n: (n.position, n.replayed))
    lag_b, lag_s = chosen.lag_bytes or 0, chosen.lag_seconds or 0.0
    over = lag_b > config.failover.max_lag_bytes or lag_s > config.failover.max_lag_seconds
    reason = (f"{chosen.node.name}: most advanced eligible standby, {lag_b} bytes / {lag_s:.1f}s behind"
              if to is None else f"{chosen.node.name}: chosen with --to, {lag_b} bytes / {lag_s:.1f}s behind")
    if over and not force:
        return Choice(chosen, f"{chosen.node.name} lags {lag_b} bytes / {lag_s:.1f}s, over the maximum "
                      f"({config.failover.max_lag_bytes} bytes / {config.failover.max_lag_seconds:.0f}s); "
                      "promoting it would lose or delay data — pass --force to accept", refused=True,
                      synchronous=sync_names is not None)
    return Choice(chosen, reason, synchronous=sync_names is not None)


def lsn_text(value: int) -> str:
    return format_lsn(value) if value >= 0 else "-"
