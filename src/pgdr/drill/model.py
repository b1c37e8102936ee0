"""A scenario's result as data: measured RTO/RPO, the target, the timeline, the verdict."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Target:
    rto_s: float
    rpo: float
    rpo_unit: str  # "commits" | "rows" | "seconds"


@dataclass
class ScenarioResult:
    name: str
    passed: bool = False
    reason: str = ""
    rto_s: float | None = None
    rpo: float | None = None
    rpo_unit: str = "commits"
    target: Target | None = None
    wall_s: float = 0.0
    # the size of the databases the scenario ran on (a copy of the cluster, or a sandbox)
    data_bytes: int | None = None
    timeline: list[dict[str, Any]] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def slowest_step(self) -> str | None:
        steps = [s for s in self.timeline if s.get("seconds") is not None]
        if not steps:
            return None
        slow = max(steps, key=lambda s: s["seconds"])
        return f"{slow['name']} ({slow['seconds']:.2f}s)"

    def within_target(self) -> bool:
        if self.target is None:
            return True
        rto_ok = self.rto_s is None or self.rto_s <= self.target.rto_s
        rpo_ok = self.rpo is None or self.rpo <= self.target.rpo
        return rto_ok and rpo_ok

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["slowest_step"] = self.slowest_step
        return data
