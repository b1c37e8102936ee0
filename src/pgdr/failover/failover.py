"""`pgdr failover`: the unplanned promotion runbook, every step timed.

pause clients → fence the old primary → replay what the candidate received →
promote → prove a write → repoint clients → resume → other standbys follow →
measure what was lost. Refuses (exit 1, with the reason) when the primary is
healthy, when the candidate lags too far, or when the old primary cannot be fenced.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pgdr.config import Config, NodeConfig
from pgdr.errors import PgdrError
from pgdr.failover import fence as fencing
from pgdr.failover import preflight, promote, rpo
from pgdr.failover.repoint import Repointer
from pgdr.failover.steps import clients_paused, promote_prove_repoint
from pgdr.fsutil import exclusive_lock
from pgdr.pg.programs import Programs
from pgdr.repo.layout import Repository
from pgdr.repo.records import read_topology, save_record, write_topology
from pgdr.runbook.timeline import Timeline


class FailoverRefused(PgdrError):
    """pgdr would not fail over; the message says why (nothing was changed)."""


def previous_primary(config: Config, repo: Repository) -> NodeConfig:
    name = read_topology(repo).get("primary")
    if name:
        try:
            return config.node(name)
        except PgdrError:
            pass
    return config.configured_primary


def controldata(programs: Programs, data_dir: Path) -> dict[str, str]:
    out = programs.run("pg_controldata", [str(data_dir)]).stdout
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines()) if v}


def rewind_possible(node_facts: preflight.NodeFacts | None, old: NodeConfig, programs: Programs) -> dict[str, Any]:
    """Can the old primary rejoin by pg_rewind? Needs wal_log_hints or data checksums."""
    if node_facts is not None and node_facts.reachable:
        ok = bool(node_facts.facts.get("wal_log_hints") or node_facts.facts.get("data_checksums"))
        return {"possible": ok, "source": "server settings"}
    if old.data_dir is not None and (old.data_dir / "global" / "pg_control").exists():
        control = controldata(programs, old.data_dir)
        hints = control.get("wal_log_hints setting") == "on"
        checksums = control.get("Data page checksum version", "0") != "0"
        return {"possible": hints or checksums, "source": "pg_controldata",
                "wal_log_hints": hints, "data_checksums": checksums}
    return {"possible": None, "source": "unknown (old primary not reachable and not local)"}


def run_failover(config: Config, programs: Programs, repo: Repository, *, to: str | None = None,
                 force: bool = False, no_fence: bool = False, dry_run: bool = False,
                 trigger: str = "manual") -> dict[str, Any]:
    with exclusive_lock(repo.lock_path("failover"), "failover or switchover"):
        return _failover(config, programs, repo, to, force, no_fence, dry_run, trigger)


def _failover(config: Config, programs: Programs, repo: Repository, to: str | None, force: bool,
              no_fence: bool, dry_run: bool, trigger: str) -> dict[str, Any]:
    started = time.time()
    timeline = Timeline()
    with timeline.step("preflight") as step:
        nodes = preflight.gather(config)
        step.evidence["nodes"] = [n.row() for n in nodes]
    table = [n.row() for n in nodes]
    record: dict[str, Any] = {"operation": "failover", "trigger": trigger, "started_at": started,
                              "preflight": table, "dry_run": dry_run}
    healthy = [n for n in nodes if n.role == "primary"]
    old = previous_primary(config, repo)
    old_facts = next((n for n in nodes if n.node.name == old.name), None)
    record["old_primary"] = old.name
    record["rewind"] = rewind_possible(old_facts, old, programs)

    def refuse(reason: str, hint: str | None = None) -> FailoverRefused:
        record.update(outcome="refused", reason=reason, timeline=timeline.as_list())
        if not dry_run:
            save_record(repo, "failover", record)
        return FailoverRefused(reason, hint=hint)

    if healthy:
        raise refuse(f"{healthy[0].node.name} is a healthy primary: nothing to fail over",
                     "for a planned change use `pgdr switchover`")
    choice = preflight.choose_candidate(config, nodes, to, force)
    record["candidate"] = choice.candidate.node.name if choice.candidate else None
    record["synchronous"] = choice.synchronous
    record["choice"] = choice.reason
    if choice.refused or choice.candidate is None:
        raise refuse(f"not failing over: {choice.reason}")
    candidate = choice.candidate.node
    repointer = Repointer(config.failover.repoint)
    if dry_run:
        plan = fencing.fence(config, old, programs, no_fence=no_fence, dry_run=True)
        record.update(outcome="planned", plan=[
            "pause clients: " + (", ".join(t.kind for t in config.failover.repoint) or "none configured"),
            f"fence {old.name}: {plan.detail}",
            f"wait for {candidate.name} to replay all received WAL",
            f"promote {candidate.name}", "prove it accepts a write",
            "repoint clients and resume", "other standbys follow the new primary"])
        return record

    old_timeline = int(choice.candidate.facts.get("checkpoint_timeline") or 1)
    switch_lsn = None
    with clients_paused(timeline, repointer, record, repo, "failover"):
        with timeline.step("fence old primary", old.name) as step:
            fenced = fencing.fence(config, old, programs, no_fence=no_fence)
            step.detail = fenced.detail
            step.evidence["method"] = fenced.method
        with timeline.step("replay received WAL", candidate.name) as step:
            switch_lsn = promote.wait_replayed(candidate, config.failover.replay_timeout)
            step.evidence["replayed_to"] = switch_lsn
        new_timeline = promote_prove_repoint(timeline, candidate, repointer)
    rto = timeline.elapsed
    write_topology(repo, candidate.name, new_timeline, [old.name])
    followers = []
    for other in nodes:
        if other.role == "standby" and other.node.name != candidate.name:
            try:
                with timeline.step("standby follows", other.node.name):
                    promote.follow(other.node, candidate)
                followers.append(other.node.name)
            except PgdrError:
                pass  # recorded as a failed step; redundancy is restored by `pgdr rejoin`
    if choice.synchronous:
        with timeline.step("synchronous replication", candidate.name) as step:
            step.detail = promote.keep_synchronous(candidate, followers)
    with timeline.step("measure data loss") as step:
        lost = rpo.lost_after(programs, old.data_dir, switch_lsn, old_timeline) if switch_lsn else \
            rpo.LostWal(False, detail="no promotion point")
        step.detail = lost.detail
    record.update(outcome="promoted", new_primary=candidate.name, new_timeline=new_timeline,
                  promoted_at_lsn=switch_lsn, rto_seconds=round(rto, 3), rpo=lost.as_dict(),
                  followers=followers, timeline=timeline.as_list())
    record["record_path"] = str(save_record(repo, "failover", record))
    return record
