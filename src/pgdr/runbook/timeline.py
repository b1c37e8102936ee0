"""A timeline of runbook steps: start, end, result, evidence — measured, never estimated.

Every failover, restore or drill runs its steps inside `timeline.step(...)`; the
resulting list is what the incident report prints and what RTO is computed from.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any


@dataclass
class Step:
    name: str
    started_at: str
    ended_at: str | None = None
    seconds: float | None = None
    result: str = "running"  # ok | failed | skipped
    detail: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)


class Timeline:
    def __init__(self) -> None:
        self.steps: list[Step] = []
        self._t0 = time.monotonic()

    @contextmanager
    def step(self, name: str, detail: str = "") -> Iterator[Step]:
        """Time one step; an exception marks it failed (with the reason) and propagates."""
        entry = Step(name, datetime.now(UTC).isoformat(), detail=detail)
        self.steps.append(entry)
        start = time.monotonic()
        try:
            yield entry
        except BaseException as exc:
            entry.result = "failed"
            entry.evidence.setdefault("error", getattr(exc, "message", str(exc)) or type(exc).__name__)
            raise
        else:
            if entry.result == "running":
                entry.result = "ok"
        finally:
            entry.seconds = round(time.monotonic() - start, 4)
            entry.ended_at = datetime.now(UTC).isoformat()

    def skip(self, name: str, why: str) -> None:
        now = datetime.now(UTC).isoformat()
        self.steps.append(Step(name, now, now, 0.0, "skipped", why))

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    def as_list(self) -> list[dict[str, Any]]:
        return [asdict(s) for s in self.steps]
