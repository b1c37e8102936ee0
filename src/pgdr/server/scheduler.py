"""Scheduled jobs ([[schedule]] in pgdr.toml) run inside `pgdr serve --schedule`: no cron needed.

One asyncio task per job. A job is due `every` seconds after the newest result of its
kind — backup, verification, drill (redis-backup: after the newest snapshot of each Redis
it covers) — so a restart does not run an extra one; the work runs in a thread with the
same function `pgdr backup` / `pgdr verify latest` / `pgdr drill` calls. Results are
kept for /ready and /metrics; verifications and drills also renew the proof ages
`status` checks (pgdr/proof.py). A verification or drill that ran but failed counts as
a failure of its job.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from pgdr.config import Config, RedisConfig, ScheduleConfig
from pgdr.errors import PgdrError
from pgdr.pg.programs import Programs
from pgdr.repo.layout import Repository
from pgdr.repo.manifest import list_backups

log = logging.getLogger(__name__)


@dataclass
class JobState:
    job: str
    every: float
    runs: int = 0
    failures: int = 0
    last_started: float | None = None
    last_success: float | None = None
    last_error: str | None = None
    last_result: str | None = None
    next_due: float | None = None
    running: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Scheduler:
    config: Config
    programs: Programs
    repo: Repository
    jobs: list[JobState] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # One job at a time: a drill verifies the newest backup too, and two verifications of
    # one backup exclude each other (and would share two cores with the database).
    _one_at_a_time: asyncio.Lock = field(default_factory=asyncio.Lock)

    def _redis_entries(self, job: ScheduleConfig) -> list[RedisConfig]:
        return [self.config.redis_named(job.redis)] if job.redis else list(self.config.redis)

    def _run_job(self, job: ScheduleConfig) -> str:
        if job.job == "verify":
            from pgdr.restore.verify import verify_backup

            verified = verify_backup(self.config, self.programs, self.repo, "latest")
            if not verified.passed:
                raise PgdrError(f"verification of {verified.backup_id} failed: "
                                + "; ".join(f"{c.name}: {c.summary}" for c in verified.failed))
            return f"verified {verified.backup_id}"
        if job.job == "drill":
            from pgdr.drill.runner import run_drill

            base = (self.config.drill.dir or self.repo.root.parent / "drills").resolve()
            run = run_drill(base, self.programs, self.repo, self.config.drill, job.scenarios or None,
                            cluster=(self.config, self.repo))
            if not run.passed:
                raise PgdrError("drill failed: " + "; ".join(f"{s.name}: {s.reason}" for s in run.scenarios
                                                             if not s.passed))
            return f"drill passed ({len(run.scenarios)} scenarios)"
        if job.job == "redis-backup":
            from pgdr.rdb.snapshot import take_snapshot

            # each Redis in turn; the first failure fails the run (and is retried next time)
            return ", ".join(take_snapshot(self.config, self.repo, rc).meta["id"] for rc in self._redis_entries(job))
        if job.job == "backup":
            from pgdr.backup.physical import take_physical_backup

            return take_physical_backup(self.config, self.programs, self.repo).manifest.id
        from pgdr.backup.logical import take_logical_backup

        return take_logical_backup(self.config, self.programs, self.repo).manifest.id

    def _first_due(self, job: ScheduleConfig) -> float:
        if job.job in ("verify", "drill"):
            from pgdr import proof

            age = (proof.verify_age(self.repo) if job.job == "verify" else proof.drill_age(self.repo))[0]
            return time.time() if age is None else time.time() - age + job.every
        if job.job == "redis-backup":
            from pgdr.rdb.retention import snapshots
            from pgdr.rdb.store import SnapshotStore

            ages = []
            for rc in self._redis_entries(job):
                found = snapshots(SnapshotStore(self.repo, rc.name))
                ages.append(found[-1].age_s if found else float("inf"))
            oldest = max(ages, default=float("inf"))
            return time.time() if oldest == float("inf") else time.time() - oldest + job.every
        kind = "physical" if job.job == "backup" else "logical"
        try:
            backups = list_backups(self.repo, kind)
        except PgdrError:
            backups = []
        if not backups:
            return time.time()
        return backups[-1].stop_time.timestamp() + job.every

    async def _loop(self, job: ScheduleConfig, state: JobState) -> None:
        state.next_due = self._first_due(job)
        while True:
            await asyncio.sleep(max(0.0, state.next_due - time.time()))
            async with self._one_at_a_time:
                await self._run_once(job, state)
            state.next_due = time.time() + job.every

    async def _run_once(self, job: ScheduleConfig, state: JobState) -> None:
        state.running = True
        state.last_started = time.time()
        state.runs += 1
        try:
            state.last_result = await asyncio.to_thread(self._run_job, job)
            state.last_success = time.time()
            state.last_error = None
        except PgdrError as exc:
            state.failures += 1
            state.last_error = exc.message
            log.warning("scheduled %s failed: %s", job.job, exc.message)
        except Exception as exc:  # keep the service and the other jobs alive
            state.failures += 1
            state.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("scheduled %s crashed", job.job)
        finally:
            state.running = False

    def start(self) -> None:
        for job in self.config.schedule:
            state = JobState(job.job, job.every)
            self.jobs.append(state)
            self._tasks.append(asyncio.get_running_loop().create_task(self._loop(job, state)))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
