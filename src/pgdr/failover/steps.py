"""Steps shared by failover and switchover: clients paused around the change, and
promote → prove a write → others follow → synchronous set → repoint."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from pgdr.config import Config, NodeConfig
from pgdr.errors import PgdrError
from pgdr.failover import promote, topology
from pgdr.failover.quorum import SyncSpec
from pgdr.failover.repoint import Repointer
from pgdr.failover.standby_setup import follow
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
    except (PgdrError, psycopg.Error) as exc:  # a server error mid-change is recorded too
        reason = exc.message if isinstance(exc, PgdrError) else f"{type(exc).__name__}: {exc}".strip()
        record.update(outcome="failed", reason=reason, timeline=timeline.as_list())
        save_record(repo, kind, record)
        raise
    finally:
        if repointer.paused:
            with timeline.step("resume clients") as step:
                step.evidence["targets"] = [r.__dict__ for r in repointer.resume()]


def promote_prove_repoint(timeline: Timeline, config: Config, repo: Repository, candidate: NodeConfig,
                          repointer: Repointer, *, followers: list[NodeConfig], spec: SyncSpec,
                          fenced: list[str], record: dict[str, Any],
                          still_allowed: Callable[[], str | None] | None = None) -> int:
    """Promote, record the new primary at once (other watchers follow it), prove a write
    without waiting on standbys, point the other standbys at it, name as synchronous only
    those that stream (or degrade to asynchronous, recorded), then repoint clients.
    Returns the new timeline."""
    with timeline.step("clear synchronous standbys", candidate.name):
        promote.clear_synchronous(candidate)
    with timeline.step("promote", candidate.name) as step:
        new_timeline = promote.promote(candidate, still_allowed=still_allowed)
        step.evidence["timeline"] = new_timeline
    topology.write(config, repo, {"primary": candidate.name, "timeline": new_timeline, "fenced": fenced,
                                  "synchronous_standby_names": "", "sync_method": spec.method,
                                  "sync_num": spec.num})
    with timeline.step("prove write", candidate.name) as step:
        step.detail = promote.prove_writable(candidate)
    names: dict[str, NodeConfig | None] = {}
    for other in followers:
        try:
            with timeline.step("standby follows", other.name):
                names[follow(other, candidate)] = other
        except (PgdrError, psycopg.Error):
            pass  # recorded as a failed step; redundancy is restored by `pgdr rejoin`
    record["followers"] = sorted(names)
    if spec.synchronous:
        with timeline.step("synchronous standbys", candidate.name) as step:
            result = promote.set_synchronous(candidate, spec, names, config.failover.sync_wait,
                                             timeline=new_timeline)
            step.detail = str(result["detail"])
            step.evidence.update(result)
        record["synchronous_after"] = result
    with timeline.step("repoint clients") as step:
        step.evidence["targets"] = [r.__dict__ for r in repointer.apply(candidate)]
    return new_timeline
