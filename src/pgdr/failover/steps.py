"""Runbook steps shared by failover and switchover: clients paused around the change,
and promote → prove a write → repoint."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pgdr.config import NodeConfig
from pgdr.errors import PgdrError
from pgdr.failover import promote
from pgdr.failover.repoint import Repointer
from pgdr.repo.layout import Repository
from pgdr.repo.records import save_record
from pgdr.runbook.timeline import Timeline


@contextmanager
def clients_paused(timeline: Timeline, repointer: Repointer, record: dict[str, Any], repo: Repository,
                   kind: str) -> Iterator[None]:
    """Pause clients for the change; on failure keep the record; always resume them."""
    try:
        with timeline.step("pause clients") as step:
            step.evidence["targets"] = [r.__dict__ for r in repointer.pause()]
        yield
    except PgdrError as exc:
        record.update(outcome="failed", reason=exc.message, timeline=timeline.as_list())
        save_record(repo, kind, record)
        raise
    finally:
        if repointer.paused:
            with timeline.step("resume clients") as step:
                step.evidence["targets"] = [r.__dict__ for r in repointer.resume()]


def promote_prove_repoint(timeline: Timeline, candidate: NodeConfig, repointer: Repointer) -> int:
    """Returns the new timeline."""
    with timeline.step("promote", candidate.name) as step:
        new_timeline = promote.promote(candidate)
        step.evidence["timeline"] = new_timeline
    with timeline.step("prove write", candidate.name) as step:
        step.detail = promote.prove_writable(candidate)
    with timeline.step("repoint clients") as step:
        step.evidence["targets"] = [r.__dict__ for r in repointer.apply(candidate)]
    return new_timeline
