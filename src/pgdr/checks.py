"""A check result is data (Barman's habit): name, status, summary, evidence, hint.

Domain code returns these; the CLI renders them as a table or JSON, and later the
HTTP service as metrics. One code path, many formats.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Status = Literal["ok", "warn", "fail"]


@dataclass
class Check:
    name: str
    status: Status
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict)
    hint: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def worst(checks: list[Check]) -> Status:
    order = {"ok": 0, "warn": 1, "fail": 2}
    return max((c.status for c in checks), key=order.__getitem__, default="ok")
