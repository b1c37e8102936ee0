"""`pgdr switchover`: the planned, lossless change of primary.

pause clients → shut the primary down cleanly (its walsenders send everything,
including the shutdown checkpoint, to connected standbys) → wait until the
candidate has replayed that checkpoint → promote → prove a write → restart the
old primary as a standby of the new one → repoint → resume.
"""

from __future__ import annotations

import time
from typing import Any

from pgdr.config import Config
from pgdr.errors import PgdrError
from pgdr.failover import preflight, promote, topology
from pgdr.failover.failover import FailoverRefused, controldata
from pgdr.failover.fence import local_instance
from pgdr.failover.quorum import parse_sync
from pgdr.failover.repoint import Repointer
from pgdr.failover.standby_setup import configure_as_standby
from pgdr.failover.steps import clients_paused, promote_prove_repoint
from pgdr.fsutil import exclusive_lock
from pgdr.pg.connect import session
from pgdr.pg.lsn import parse_lsn
from pgdr.pg.programs import Programs
from pgdr.repo.layout import Repository
from pgdr.repo.records import save_record
from pgdr.runbook.timeline import Timeline


def run_switchover(config: Config, programs: Programs, repo: Repository, *, to: str | None = None,
                   dry_run: bool = False) -> dict[str, Any]:
    with exclusive_lock(repo.lock_path("failover"), "failover or switchover"):
        return _switchover(config, programs, repo, to, dry_run)


def _wait_replayed_past(node_conninfo: str, lsn: int, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    with session(node_conninfo) as conn:
        while True:
            row = conn.execute("select pg_last_wal_replay_lsn()::text as l").fetchone()
            assert row is not None
            if row["l"] and parse_lsn(row["l"]) > lsn:
                return str(row["l"])
            if time.monotonic() > deadline:
                raise PgdrError(f"standby did not replay the old primary's shutdown checkpoint within {timeout:.0f}s")
            time.sleep(0.02)


def _switchover(config: Config, programs: Programs, repo: Repository, to: str | None,
                dry_run: bool) -> dict[str, Any]:
    timeline = Timeline()
    with timeline.step("preflight"):
        nodes = preflight.gather(config)
    record: dict[str, Any] = {"operation": "switchover", "preflight": [n.row() for n in nodes], "dry_run": dry_run}
    primaries = [n for n in nodes if n.role == "primary"]
    if len(primaries) != 1:
        raise FailoverRefused("switchover needs exactly one healthy primary; found "
                              f"{len(primaries)}", hint="use `pgdr failover` when the primary has failed")
    old = primaries[0].node
    old_inst = local_instance(old, programs)
    if old_inst is None:
        raise FailoverRefused(f"switchover must shut {old.name} down cleanly, but its data directory "
                              "is not on this machine", hint="run pgdr on the primary's host")
    streaming = [n for n in nodes if n.role == "standby" and n.facts.get("receiver_status") == "streaming"]
    choice = preflight.choose_candidate(config, streaming or nodes, to, force=False, planned=True)
    if choice.refused or choice.candidate is None:
        raise FailoverRefused(f"not switching over: {choice.reason}")
    candidate = choice.candidate.node
    record.update(old_primary=old.name, candidate=candidate.name)
    if dry_run:
        record.update(outcome="planned", plan=[
            "pause clients", f"shut down {old.name} cleanly", f"wait for {candidate.name} to replay its shutdown checkpoint",
            f"promote {candidate.name}", "prove a write", f"restart {old.name} as a standby of {candidate.name}",
            "repoint clients and resume"])
        return record
    repointer = Repointer(config.failover.repoint)
    topo = topology.read(config, repo)
    spec = topology.intended_sync(topo, parse_sync(preflight.sync_setting(config, nodes, topo)))
    with clients_paused(timeline, repointer, record, repo, "switchover"):
        with timeline.step("clean shutdown", old.name) as step:
            old_inst.stop(mode="fast")
            control = controldata(programs, old_inst.data_dir)
            state = control.get("Database cluster state", "?")
            step.evidence["cluster_state"] = state
            if state != "shut down":  # only then is the latest checkpoint the shutdown checkpoint
                raise PgdrError(f"{old.name} did not shut down cleanly (pg_control says {state!r}); "
                                "its last checkpoint is not the end of its WAL", hint="use `pgdr failover`")
            checkpoint = control["Latest checkpoint location"]
            step.evidence["shutdown_checkpoint"] = checkpoint
        with timeline.step("replay shutdown checkpoint", candidate.name) as step:
            step.evidence["replayed_to"] = _wait_replayed_past(candidate.conninfo, parse_lsn(checkpoint),
                                                               config.failover.replay_timeout)
        followers = [n.node for n in nodes if n.role == "standby" and n.node.name != candidate.name]
        new_timeline = promote_prove_repoint(timeline, config, repo, candidate, repointer, followers=followers,
                                             spec=spec, fenced=[], record=record)
    with timeline.step("clients reach the new primary") as step:
        step.evidence["targets"] = [r.__dict__ for r in repointer.clients_reach()]
    rto = timeline.elapsed
    with timeline.step("old primary becomes standby", old.name):
        app_name = configure_as_standby(old_inst.data_dir, old, candidate, programs)
        old_inst.start()
        promote.wait_streaming(candidate, app_name)
    if spec.synchronous:
        with timeline.step("synchronous standbys", candidate.name) as step:
            result = promote.set_synchronous(candidate, spec,
                                             {**dict.fromkeys(record.get("followers", [])), app_name: old},
                                             config.failover.sync_wait)
            step.detail = str(result["detail"])
        record["synchronous_after"] = result
    record["topology_after"] = topology.record_live(config, repo, candidate, fenced=[], sync_method=spec.method,
                                                    sync_num=spec.num)
    record.update(outcome="switched", new_primary=candidate.name, new_timeline=new_timeline,
                  rto_seconds=round(rto, 3), rpo={"known": True, "bytes": 0, "commits": 0,
                                                  "detail": "clean shutdown replayed before promotion"},
                  timeline=timeline.as_list())
    record["record_path"] = str(save_record(repo, "switchover", record))
    return record
