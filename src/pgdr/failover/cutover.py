"""`pgdr cutover --to-dir DIR`: put a restored instance (from `pgdr restore`) into service.

The runbooks end a restore with "stop application traffic → smoke test → swap the
connection string → restart the app → monitor". Here, every step timed:
find the restore's record (the instance must be one pgdr restored, of this cluster) →
promote it if it was left paused at the target → run the user's smoke checks
([[verify.checks]]) on it → pause clients (pgbouncer PAUSE, `cutover.pause_command`) →
fence the current primary (stopped, standby.signal; its data directory is kept, never
deleted) → record the restored instance as a node (appended to pgdr.toml) and as the
primary (topology) → drop the restore's recovery settings so it can later follow as a
standby → repoint clients with failover's targets → resume → wait for clients → measure
what the old primary wrote after the restore point (the data this cutover gives up,
shown) → restart the background archiver so WAL archiving continues from the new
primary, on its new timeline, into the same repository → the incident record.

Afterwards `pgdr rejoin <old primary>` makes the old primary a standby of the new one.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pgdr.config import Config, NodeConfig, expand_env_refs, load_config
from pgdr.errors import ConfigError, PgdrError, UsageError
from pgdr.failover import fence as fencing
from pgdr.failover import preflight, promote, rpo, topology
from pgdr.failover.failover import FailoverRefused, previous_primary
from pgdr.failover.repoint import Repointer
from pgdr.failover.standby_setup import rewrite_auto_conf
from pgdr.failover.steps import clients_paused
from pgdr.fsutil import exclusive_lock, replace_file_keeping_owner
from pgdr.pg import process
from pgdr.pg.connect import session
from pgdr.pg.conninfo import mask, parse, split_password
from pgdr.pg.instance import Instance
from pgdr.pg.programs import Programs
from pgdr.repo.layout import Repository
from pgdr.repo.records import list_records, save_record
from pgdr.runbook.timeline import Timeline

# What `pgdr restore` wrote into postgresql.auto.conf to recover; once the instance is a
# cluster node they must go: a recovery target left there would stop (or promote) it the
# day it is started as a standby.
RESTORE_ONLY_SETTINGS = ("restore_command", "recovery_target", "recovery_target_time", "recovery_target_lsn",
                         "recovery_target_xid", "recovery_target_name", "recovery_target_action",
                         "recovery_target_inclusive", "recovery_target_timeline")


class CutoverRefused(FailoverRefused):
    """pgdr would not cut over; the message says why (nothing was changed)."""


@dataclass
class CutoverResult:
    outcome: str                      # planned | cut over
    new_primary: str
    record: dict[str, Any] = field(default_factory=dict)
    record_path: Path | None = None


def restore_record(repo: Repository, to_dir: Path) -> dict[str, Any]:
    """The newest successful `pgdr restore` into to_dir: how to reach it, what it reached."""
    target = str(to_dir.resolve())
    found = [r for r in list_records(repo, "restore") if r.get("data_dir") == target and r.get("passed")]
    if not found:
        raise UsageError(f"{to_dir} is not an instance `pgdr restore` made from this repository",
                         hint="restore first: pgdr restore --to-time ... --to-dir DIR")
    return found[-1]


def node_conninfo(old: NodeConfig, port: int, socket_dir: Path) -> str:
    """How the cluster reaches the restored instance: the old primary's conninfo (user,
    dbname, sslmode...) without any password, at the restored instance's address (it
    listens on 127.0.0.1 and its own socket folder)."""
    from psycopg.conninfo import make_conninfo

    plain, _ = split_password(old.conninfo)
    params = {k: v for k, v in parse(plain).items() if k not in ("host", "hostaddr", "port")}
    host = parse(plain).get("host", "")
    params["host"] = str(socket_dir) if host.startswith("/") else "127.0.0.1"
    params["port"] = str(port)
    return make_conninfo(**params)


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def add_node(config: Config, name: str, conninfo_as_written: str, data_dir: Path) -> Config:
    """Append the node to pgdr.toml (owner and mode kept), prove the file still loads,
    and return the new config. A file that would not load is put back as it was."""
    if config.source is None:
        raise ConfigError("cutover must record the new node in pgdr.toml, but the config has no file")
    before = config.source.read_bytes()
    block = (f"\n# added by `pgdr cutover` at {datetime.now(UTC).isoformat(timespec='seconds')}: the restored "
             f"instance in {data_dir} became the primary (pgdr's topology.json says who is primary now)\n"
             f"[[nodes]]\nname = {_toml_str(name)}\nrole = \"standby\"\nconninfo = {_toml_str(conninfo_as_written)}\n"
             f"data_dir = {_toml_str(str(data_dir))}\n")
    replace_file_keeping_owner(config.source, before + block.encode())
    try:
        return load_config(config.source)
    except PgdrError:
        replace_file_keeping_owner(config.source, before)
        raise


def _run_command(argv: list[str], what: str, timeout: float) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PGPASSWORD"}
    proc = process.run(argv, env=env, timeout=timeout, ok_codes=range(256))
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        raise PgdrError(f"cutover.{what} failed: {tail[0]}")
    return f"{argv[0]}: exit 0"


@contextmanager
def _app_paused(config: Config, timeline: Timeline) -> Iterator[None]:
    """The application's own pause/resume commands around the change; resume always runs
    once pause did."""
    cmds = config.cutover
    if cmds.pause_command:
        with timeline.step("pause application") as step:
            step.detail = _run_command(cmds.pause_command, "pause_command", cmds.command_timeout)
    try:
        yield
    finally:
        if cmds.resume_command:
            try:
                with timeline.step("resume application") as step:
                    step.detail = _run_command(cmds.resume_command, "resume_command", cmds.command_timeout)
            except PgdrError:
                pass  # recorded as a failed step; the cutover's own outcome stands


def _restored_admin(rec: dict[str, Any], data_dir: Path, programs: Programs) -> Instance:
    """The restored instance as pgdr reaches it: its private socket, its own superuser."""
    inst = Instance("restored", data_dir, int(rec["port"]), Path(rec["socket_dir"]), programs)
    inst.superuser = parse(str(rec["conninfo"])).get("user") or inst.superuser
    return inst


def _state(conninfo: str) -> dict[str, Any]:
    with session(conninfo, timeout=5) as conn:
        row = conn.execute("select pg_is_in_recovery() as in_recovery, "
                           "(select system_identifier::text from pg_control_system()) as sysid, "
                           "case when pg_is_in_recovery() then pg_get_wal_replay_pause_state() end as pause"
                           ).fetchone()
    assert row is not None
    return dict(row)


def cutover(config: Config, programs: Programs, repo: Repository, to_dir: Path, *,
            name: str | None = None, conninfo: str | None = None, dry_run: bool = False,
            assume_yes: bool = False, no_fence: bool = False) -> CutoverResult:
    """Put the instance `pgdr restore` left in to_dir into service as the primary.

    Refuses without assume_yes unless dry_run (the caller asks the operator). name: the
    node's name in pgdr.toml (default: the folder's name); conninfo: how the cluster
    reaches it (default: the old primary's, at the restored address), `${VAR}` allowed
    and written as given."""
    if not dry_run and not assume_yes:
        raise UsageError("cutover fences the current primary and repoints clients: confirm (--yes), "
                         "or see the plan with --dry-run")
    with exclusive_lock(repo.lock_path("failover"), "failover, switchover or cutover"):
        return _cutover(config, programs, repo, to_dir.resolve(), name, conninfo, dry_run, no_fence)


def _cutover(config: Config, programs: Programs, repo: Repository, to_dir: Path, name: str | None,
             conninfo: str | None, dry_run: bool, no_fence: bool) -> CutoverResult:
    started = time.time()
    timeline = Timeline()
    rec = restore_record(repo, to_dir)
    admin = _restored_admin(rec, to_dir, programs)
    record: dict[str, Any] = {"operation": "cutover", "started_at": started, "dry_run": dry_run,
                              "data_dir": str(to_dir), "restore_record": rec.get("id"),
                              "backup_id": rec.get("backup_id"), "restore_target": rec.get("target"),
                              "restore_reached": rec.get("reached")}
    with timeline.step("preflight") as step:
        nodes = preflight.gather(config)
        state = _state(admin.conninfo())
        step.evidence.update(restored=state)
    record["preflight"] = [n.row() for n in nodes]
    identity = repo.identity() or {}
    if str(identity.get("system_identifier")) != str(state["sysid"]):
        raise CutoverRefused(f"{to_dir} holds cluster {state['sysid']}, not this repository's "
                             f"{identity.get('system_identifier')}")
    existing = next((n for n in config.nodes if n.data_dir is not None and n.data_dir.resolve() == to_dir), None)
    topo = topology.read(config, repo)
    healthy = [n for n in nodes if n.role == "primary" and (existing is None or n.node.name != existing.name)]
    old = healthy[0].node if len(healthy) == 1 else previous_primary(config, repo, topo)
    if existing is not None and old.name == existing.name:
        raise CutoverRefused(f"{existing.name} ({to_dir}) is already the primary: nothing to cut over")
    if len(healthy) > 1:
        raise CutoverRefused("more than one node accepts writes: " + ", ".join(n.node.name for n in healthy),
                             hint="fence all but one first (`pgdr status`)")
    node_name = existing.name if existing else (name or to_dir.name)
    if existing is None and any(n.name == node_name for n in config.nodes):
        raise UsageError(f"a node named {node_name!r} already exists with another data directory",
                         hint="pass --name for the restored instance")
    written = conninfo or (existing.conninfo if existing else node_conninfo(old, admin.port, admin.socket_dir))
    new_node = existing or NodeConfig(name=node_name, conninfo=expand_env_refs(written, "--conninfo"),
                                      data_dir=to_dir)
    reach = f"the restored instance as {mask(new_node.conninfo)}"
    with timeline.step("reach the restored instance as the cluster does"), \
            session(new_node.conninfo, timeout=5, what=reach):
        pass
    old_timeline = rpo.current_timeline(programs, old.data_dir) or topo.get("timeline")
    record.update(old_primary=old.name, new_primary=node_name, node_conninfo=mask(new_node.conninfo),
                  old_timeline=old_timeline)
    repointer = Repointer(config.failover.repoint)
    if dry_run:
        plan = fencing.fence(config, old, programs, no_fence=no_fence, dry_run=True)
        record.update(outcome="planned", plan=[
            ("promote the restored instance (it is paused at the target)" if state["in_recovery"]
             else "the restored instance is already promoted"),
            f"smoke checks on it: {len(config.verify.checks)} from [[verify.checks]]",
            "pause clients: " + (", ".join(t.kind for t in config.failover.repoint) or "no repoint targets")
            + (" + cutover.pause_command" if config.cutover.pause_command else ""),
            f"fence {old.name}: {plan.detail} (its data directory is kept)",
            f"add node {node_name} ({mask(new_node.conninfo)}) to {config.source} and record it as the primary",
            "repoint clients and resume", "restart the background archiver on the new primary's timeline",
            f"measure what {old.name} wrote after the restore point (lost by this cutover)"])
        return CutoverResult("planned", node_name, record)

    try:
        if state["in_recovery"]:
            with timeline.step("promote the restored instance", node_name) as step:
                step.evidence["timeline"] = promote.promote(new_node)
        with timeline.step("smoke checks", node_name) as step:
            from pgdr.restore.dbchecks import user_check

            results = [(c.name, *user_check(admin, c)) for c in config.verify.checks]
            step.evidence["checks"] = [{"name": n, "ok": ok, "summary": s, **ev} for n, ok, s, ev in results]
            failed = [f"{n}: {s}" for n, ok, s, _ in results if not ok]
            step.detail = f"{len(results) - len(failed)}/{len(results)} passed"
            if failed:
                raise CutoverRefused("smoke checks failed on the restored instance: " + "; ".join(failed),
                                     hint="nothing was changed; fix the restore or the checks")
    except PgdrError as exc:
        record.update(outcome="refused", reason=exc.message, timeline=timeline.as_list())
        save_record(repo, "cutover", record)
        raise
    new_timeline = promote.timeline_of(new_node)
    try:
        with _app_paused(config, timeline), clients_paused(timeline, repointer, record, repo, "cutover"):
            with timeline.step("fence old primary", old.name) as step:
                fenced = fencing.fence(config, old, programs, no_fence=no_fence)
                step.detail = fenced.detail
                step.evidence["method"] = fenced.method
            with timeline.step("record the new node", node_name) as step:
                if existing is None:
                    config = add_node(config, node_name, written, to_dir)
                    new_node = config.node(node_name)
                    step.detail = f"added to {config.source}"
                rewrite_auto_conf(to_dir, dict.fromkeys(RESTORE_ONLY_SETTINGS))
                topology.write(config, repo, {"primary": node_name, "timeline": new_timeline, "fenced": [old.name],
                                              "synchronous_standby_names": "", "cutover_from": str(to_dir)})
            with timeline.step("prove write", node_name) as step:
                step.detail = promote.prove_writable(new_node)
            with timeline.step("repoint clients") as step:
                step.evidence["targets"] = [r.__dict__ for r in repointer.apply(new_node)]
    except PgdrError as exc:
        if record.get("outcome") != "failed":  # clients_paused records what fails inside it
            record.update(outcome="failed", reason=exc.message, timeline=timeline.as_list())
            save_record(repo, "cutover", record)
        raise
    with timeline.step("clients reach the new primary") as step:
        step.evidence["targets"] = [r.__dict__ for r in repointer.clients_reach()]
    rto = time.time() - started
    # Measured before the archiver restarts: once it follows the new timeline it sets the
    # old timeline's open segment aside and archives the new timeline's history, and the
    # old timeline's WAL after the restore point is what is counted here.
    with timeline.step("measure data loss") as step:
        fork = promote.fork_point(new_node, new_timeline)
        step.evidence.update(fork_point=fork, old_timeline=old_timeline)
        if fork is None or old_timeline is None:
            lost = rpo.LostWal(False, detail="restore point or old timeline unknown")
        else:
            lost = rpo.lost_since(programs, repo, old.data_dir, fork, int(old_timeline))
        step.detail = lost.detail
    with timeline.step("archiving continues", node_name) as step:
        try:
            step.detail = _restart_archiver(config, repo)
        except PgdrError as exc:  # the cutover is done; say what is not, do not undo it
            step.result, step.detail = "failed", f"{exc.message} (start it: pgdr archiver start)"
    record.update(outcome="cut over", new_timeline=new_timeline, restore_point_lsn=fork,
                  rto_seconds=round(rto, 3), rto_measured="from the start of the command until clients "
                  "reached the new primary", rpo={**lost.as_dict(), "what": "everything after the restore point"},
                  old_data_dir_kept=str(old.data_dir) if old.data_dir else None,
                  next_steps=[f"pgdr rejoin {old.name} --yes  (the old primary becomes a standby of {node_name})"]
                  + [f"pgdr rejoin {n.node.name} --yes  (it followed {old.name} past the restore point)"
                     for n in nodes if n.role == "standby"],
                  topology_after=topology.record_live(config, repo, new_node, fenced=[old.name]),
                  timeline=timeline.as_list())
    path = save_record(repo, "cutover", record)
    record["record_path"] = str(path)
    return CutoverResult("cut over", node_name, record, path)


def _restart_archiver(config: Config, repo: Repository) -> str:
    """A running `pgdr archiver` knows the nodes it was started with: restart it so it finds
    the new primary and follows its timeline (timeline_follow sets the old timeline's WAL
    after the restore point aside, never deletes it)."""
    from pgdr.backup import archiver

    if not archiver.is_running(repo):
        return "no background archiver running: start it with `pgdr archiver start`"
    assert config.source is not None
    archiver.stop_background(repo)
    pid = archiver.start_background(config.source, repo)
    return f"background archiver restarted (pid {pid})"
