"""Run scenarios, score them, and keep the run in the drill history."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pgdr.config import Config, DrillConfig
from pgdr.drill.model import ScenarioResult, Target
from pgdr.drill.scenarios import SCENARIOS, DrillEnv, DrillTargets, run_scenario
from pgdr.errors import UsageError
from pgdr.pg.programs import Programs
from pgdr.repo.layout import Repository
from pgdr.repo.records import save_record


@dataclass
class DrillRun:
    started_at: str
    scenarios: list[ScenarioResult] = field(default_factory=list)
    wall_s: float = 0.0
    record_path: str | None = None

    @property
    def passed(self) -> bool:
        return bool(self.scenarios) and all(s.passed for s in self.scenarios)

    def as_dict(self) -> dict[str, Any]:
        return {"operation": "drill", "started_at": self.started_at, "passed": self.passed,
                "wall_s": round(self.wall_s, 3), "scenarios": [s.as_dict() for s in self.scenarios],
                "outcome": "passed" if self.passed else "failed"}


def targets_from(cfg: DrillConfig) -> DrillTargets:
    return DrillTargets(
        failover=Target(cfg.failover_rto, cfg.failover_rpo_commits, "commits"),
        pitr=Target(cfg.pitr_rto, cfg.pitr_rpo, "seconds"),
        full_restore=Target(cfg.full_restore_rto, cfg.full_restore_rpo, "seconds"),
    )


def run_drill(base: Path, programs: Programs, history: Repository, cfg: DrillConfig,
              names: list[str] | None = None, sabotage: frozenset[str] = frozenset(),
              cluster: tuple[Config, Repository] | None = None, sample_data: bool = False) -> DrillRun:
    chosen = names or list(SCENARIOS)
    unknown = [n for n in chosen if n not in SCENARIOS]
    if unknown:
        raise UsageError(f"unknown scenario {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    base.mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o755)
    env = DrillEnv(base, programs, targets_from(cfg), synchronous=cfg.synchronous, sabotage=sabotage,
                   cluster=cluster, sample_data=sample_data)
    run = DrillRun(datetime.now(UTC).isoformat())
    started = time.monotonic()
    for name in chosen:
        run.scenarios.append(run_scenario(env, name))
    run.wall_s = time.monotonic() - started
    history.ensure()
    run.record_path = str(save_record(history, "drill", run.as_dict()))
    return run
