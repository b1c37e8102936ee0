"""`pgdr failover`: the unplanned promotion runbook, every step timed.

pause clients → fence the old primary (verified) → replay to the last complete
record → promote (the lease re-checked just before, under watch) → prove a write →
other standbys follow → name synchronous only those that stream → repoint →
resume → wait until clients through pgbouncer reach the new primary (the RTO a
client sees) → measure what was lost (after clients are back, so it never lengthens
the outage). Refuses (exit 1, with the reason) when the primary is healthy, when
no standby is known to hold every acknowledged commit (quorum, see quorum.py), when
the candidate lags too far, or when the old primary cannot be fenced.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pgdr.config import Config, NodeConfig
from pgdr.errors import PgdrError
from pgdr.failover import fence as fencing
from pgdr.failover import preflight, promote, rpo, topology
from pgdr.failover.quorum import parse_sync
from pgdr.failover.repoint import Repointer
from pgdr.failover.steps import clients_paused, promote_prove_repoint
from pgdr.fsutil import exclusive_lock
from pgdr.pg.lsn import format_lsn
from pgdr.pg.programs import Programs
from pgdr.repo.layout import Repository
from pgdr.repo.records import save_record
from pgdr.runbook.timeline import Timeline


class FailoverRefused(PgdrError):
    """pgdr would not fail over; the message says why (nothing was changed)."""


def previous_primary(config: Config, repo: Repository, topo: dict[str, Any] | None = None) -> NodeConfig:
    name = (topo if topo is not None else topology.read(config, repo)).get("primary")
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
                 trigger: str = "manual", detected_at: float | None = None,
                 still_allowed: Callable[[], str | None] | None = None, actor: str | None = None) -> dict[str, Any]:
    """detected_at (time.time()) starts the RTO clock when the failure was seen earlier (watch);
    still_allowed is asked right before pg_promote (watch: is the lease still ours?); actor
    names who acted (a watcher's host:pid) in the record."""
    with exclusive_lock(repo.lock_path("failover"), "failover or switchover"):
        return _failover(config, programs, repo, to, force, no_fence, dry_run, trigger,
                         detected_at, still_allowed, actor)


def _failover(config: Config, programs: Programs, repo: Repository, to: str | None, force: bool,
              no_fence: bool, dry_run: bool, trigger: str, detected_at: float | None,
              still_allowed: Callable[[], str | None] | None, actor: str | None) -> dict[str, Any]:
    started = time.time()
    clock_start = detected_at if detected_at is not None else started
    timeline = Timeline()
    with timeline.step("preflight") as step:
        nodes = preflight.gather(config)
        step.evidence["nodes"] = [n.row() for n in nodes]
    table = [n.row() for n in nodes]
    topo = topology.read(config, repo)
    record: dict[str, Any] = {"operation": "failover", "trigger": trigger, "actor": actor, "started_at": started,
                              "preflight": table, "dry_run": dry_run, "topology_before": topo}
    healthy = [n for n in nodes if n.role == "primary"]
    old = previous_primary(config, repo, topo)
    old_facts = next((n for n in nodes if n.node.name == old.name), None)
    record["old_primary"] = old.name
    record["rewind"] = rewind_possible(old_facts, old, programs)
    old_timeline = rpo.current_timeline(programs, old.data_dir) or topo.get("timeline")

    def refuse(reason: str, hint: str | None = None) -> FailoverRefused:
        record.update(outcome="refused", reason=reason, timeline=timeline.as_list())
        if not dry_run:
            save_record(repo, "failover", record)
        return FailoverRefused(reason, hint=hint)

    if healthy:
        raise refuse(f"{healthy[0].node.name} is a healthy primary: nothing to fail over",
                     "for a planned change use `pgdr switchover`")
    choice = preflight.choose_candidate(config, nodes, to, force, topo, old.name)
    record.update(candidate=choice.candidate.node.name if choice.candidate else None,
                  synchronous=choice.synchronous, synchronous_standby_names=choice.sync_setting,
                  choice=choice.reason, forced=choice.forced)
    if choice.refused or choice.candidate is None:
        reason = f"not failing over: {choice.reason}"
        if choice.candidate is not None and old_timeline and old.data_dir is not None:
            at_risk = rpo.lost_after(programs, old.data_dir, format_lsn(choice.candidate.position),
                                     int(old_timeline))
            record["at_risk"] = at_risk.as_dict()
            if at_risk.known and at_risk.bytes:
                reason += (f" ({at_risk.commits} commits / {at_risk.bytes} bytes in {old.name}'s WAL "
                           f"are not on {choice.candidate.node.name})")
        raise refuse(reason)
    candidate = choice.candidate.node
    repointer = Repointer(config.failover.repoint)
    if dry_run:
        plan = fencing.fence(config, old, programs, no_fence=no_fence, dry_run=True)
        record.update(outcome="planned", plan=[
            "pause clients: " + (", ".join(t.kind for t in config.failover.repoint) or "none configured"),
            f"fence {old.name}: {plan.detail}",
            f"wait for {candidate.name} to replay up to the last complete record received",
            f"promote {candidate.name}", "prove it accepts a write (synchronous_commit = local)",
            "other standbys follow the new primary",
            "synchronous standbys: only those streaming from it" if choice.synchronous else "asynchronous",
            "repoint clients and resume", "measure data loss from the old primary's WAL"])
        return record

    switch_lsn = None
    # the policy to restore after promotion: the crash-time setting, or the recorded one if degraded
    intended = topology.intended_sync(topo, parse_sync(choice.sync_setting))
    followers = [n.node for n in nodes if n.role == "standby" and n.node.name != candidate.name]
    with clients_paused(timeline, repointer, record, repo, "failover"):
        with timeline.step("fence old primary", old.name) as step:
            fenced = fencing.fence(config, old, programs, no_fence=no_fence)
            step.detail = fenced.detail
            step.evidence["method"] = fenced.method
        with timeline.step("replay to the last complete record", candidate.name) as step:
            switch_lsn, step.detail = promote.wait_replayed(candidate, config.failover.replay_timeout)
            step.evidence["replayed_to"] = switch_lsn
        new_timeline = promote_prove_repoint(
            timeline, config, repo, candidate, repointer, followers=followers,
            spec=intended, fenced=[old.name], record=record,
            still_allowed=still_allowed)
    promoted_rto = time.time() - clock_start
    with timeline.step("clients reach the new primary") as step:
        reach = repointer.clients_reach()
        step.evidence["targets"] = [r.__dict__ for r in reach]
    client_rto = time.time() - clock_start
    with timeline.step("measure data loss") as step:
        if old_timeline is None:
            lost = rpo.LostWal(False, detail="old primary's timeline unknown (its pg_wal is not on this machine)")
        else:
            lost = rpo.lost_after(programs, old.data_dir, switch_lsn, int(old_timeline))
        step.detail = lost.detail
        step.evidence["old_timeline"] = old_timeline
    topo_after = topology.record_live(config, repo, candidate, fenced=[old.name],
                                      sync_method=intended.method, sync_num=intended.num)
    record.update(outcome="promoted", new_primary=candidate.name, new_timeline=new_timeline,
                  promoted_at_lsn=switch_lsn, rto_seconds=round(client_rto, 3),
                  promotion_rto_seconds=round(promoted_rto, 3),
                  rto_measured=("from the failure seen by watch" if detected_at is not None
                                else "from the start of the command")
                  + (" until a client through pgbouncer reached the new primary" if reach
                     else " until clients were repointed"),
                  rpo=lost.as_dict(), old_timeline=old_timeline, topology_after=topo_after,
                  timeline=timeline.as_list())
    record["record_path"] = str(save_record(repo, "failover", record))
    return record
