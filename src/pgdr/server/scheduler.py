"""Scheduled jobs ([[schedule]] in pgdr.toml) run inside `pgdr serve --schedule`: no cron needed.

One asyncio task per job. A job is due `every` seconds after the newest backup of its
kind (redis-backup: after the newest snapshot of each Redis it covers) (so a restart does not take an extra backup); the work runs in a thread with
the same function `pgdr backup` calls. Results are kept for /ready and /metrics.
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

    def _redis_entries(self, job: ScheduleConfig) -> list[RedisConfig]:
        return [self.config.redis_named(job.redis)] if job.redis else list(self.config.redis)

    def _run_job(self, job: ScheduleConfig) -> str:
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
        if job.job == "redis-backup":
            from pgdr.rdb.retention import snapshots
            from pgdr.rdb.store import SnapshotStore

            ages = []
            for rc in self._redis_entries(job):
                found = snapshots(SnapshotStore(self.repo.root, rc.name))
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
            state.next_due = time.time() + job.every

    def start(self) -> None:
        for job in self.config.schedule:
            state = JobState(job.job, job.every)
            self.jobs.append(state)
            self._tasks.append(asyncio.get_running_loop().create_task(self._loop(job, state)))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
