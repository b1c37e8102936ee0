"""A finding is data: concern, severity, summary, evidence, the runbook action.

Domain code builds these; the CLI renders them as a table or JSON (the snapshot
to attach to an incident ticket) and the HTTP service serves the same JSON.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Severity = Literal["ok", "info", "warning", "critical"]
SEVERITY_ORDER: dict[str, int] = {"ok": 0, "info": 1, "warning": 2, "critical": 3}


@dataclass
class Finding:
    concern: str
    severity: Severity
    summary: str
    node: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    action: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DiagnoseReport:
    cluster: str
    checked_at: str
    duration_s: float
    findings: list[Finding]
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def severity(self) -> Severity:
        worst: Severity = "ok"
        for f in self.findings:
            if SEVERITY_ORDER[f.severity] > SEVERITY_ORDER[worst]:
                worst = f.severity
        return worst

    def by_concern(self, concern: str) -> list[Finding]:
        return [f for f in self.findings if f.concern == concern]

    def as_dict(self) -> dict[str, Any]:
        return {"cluster": self.cluster, "severity": self.severity, "checked_at": self.checked_at,
                "duration_s": round(self.duration_s, 3),
                "findings": [f.as_dict() for f in self.findings], "nodes": self.nodes}
