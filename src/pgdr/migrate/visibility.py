"""The last migration for `pgdr status` (a check) and `/metrics` (gauges).

A record still "running" whose pgdr is dead was interrupted: its command was ended
with pgdr, the freeze point is on record, and the rollback can use it.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pgdr.checks import Check, Status
from pgdr.migrate.records import migrations, rollbacks_of
from pgdr.repo.layout import Repository
from pgdr.repo.unfinished import owner_dead

if TYPE_CHECKING:  # `pgdr status` does not need prometheus_client
    from prometheus_client.core import Metric

OUTCOMES = ("ok", "failed", "refused", "running", "interrupted")


def outcome(record: dict[str, Any]) -> str:
    if record.get("outcome") == "running" and owner_dead(record):
        return "interrupted"
    return str(record.get("outcome"))


def age_seconds(record: dict[str, Any]) -> float | None:
    try:
        started = datetime.fromisoformat(str(record["started_at"]))
    except (KeyError, ValueError):
        return None
    return (datetime.now(UTC) - started).total_seconds()


def last_migration(repo: Repository) -> dict[str, Any] | None:
    found = migrations(repo)
    return found[-1] if found else None


def status_check(repo: Repository) -> Check | None:
    last = last_migration(repo)
    if last is None:
        return None
    result = outcome(last)
    freeze = last.get("freeze") or {}
    age = age_seconds(last)
    back = [r for r in rollbacks_of(repo, last["id"]) if r.get("outcome") == "ok"]
    revisions = (f", revision {last.get('revision_before')} -> {last.get('revision_after')}"
                 if last.get("revision_before") or last.get("revision_after") else "")
    summary = (f"last migration {last['id'][:15]}: {result}{revisions}"
               + (f", {age / 60:.0f} min ago" if age is not None else "")
               + (f"; freeze point {freeze['restore_point']}" if freeze else "")
               + (f"; rolled back ({back[-1]['plan']['action']})" if back else ""))
    status: Status = "ok" if result in ("ok", "running") or back else "warn"
    return Check("last migration", status, summary,
                 evidence={"id": last["id"], "outcome": result, "revision": last.get("revision_after"),
                           "rolled_back": back[-1]["id"] if back else None,
                           "restore_point": freeze.get("restore_point"), "age_s": age},
                 hint=None if status == "ok" else f"roll back: pgdr migrate --rollback {last['id']} --dry-run")


def metrics(repo: Repository) -> Iterator[Metric]:
    from prometheus_client.core import GaugeMetricFamily

    last = last_migration(repo)
    state = GaugeMetricFamily("pgdr_migration_last_outcome", "1 for the last migration's outcome",
                              labels=["outcome"])
    age = GaugeMetricFamily("pgdr_migration_last_age_seconds", "seconds since the last migration started")
    duration = GaugeMetricFamily("pgdr_migration_last_duration_seconds", "how long the last migration's command ran")
    if last is not None:
        result = outcome(last)
        for name in OUTCOMES:
            state.add_metric([name], 1.0 if name == result else 0.0)
        seconds = age_seconds(last)
        if seconds is not None:
            age.add_metric([], seconds)
        if last.get("duration_s") is not None:
            duration.add_metric([], float(last["duration_s"]))
    yield from (state, age, duration)
