"""`pgdr rejoin NAME`: a fenced former primary becomes a standby of the current primary.

pg_rewind when possible (it runs crash recovery itself since PostgreSQL 13, so a
SIGKILLed primary is fine); otherwise, saying why, a fresh base backup, with the
old data directory kept aside as the safety copy.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg

from pgdr.config import Config, NodeConfig
from pgdr.errors import PgdrError
from pgdr.failover import promote, topology
from pgdr.failover.failover import FailoverRefused
from pgdr.failover.fence import clear_stale_pidfile, local_instance
from pgdr.failover.quorum import SyncSpec, parse_sync
from pgdr.failover.slots import ensure_slot, slot_name
from pgdr.failover.standby_setup import (
    application_name,
    configure_as_standby,
    read_auto_conf,
    restore_own_config,
    save_own_config,
)
from pgdr.pg.connect import session
from pgdr.pg.conninfo import split_password
from pgdr.pg.probe import find_primary
from pgdr.pg.process import dir_progress
from pgdr.pg.programs import Programs
from pgdr.repo.layout import Repository
from pgdr.repo.records import save_record
from pgdr.runbook.timeline import Timeline


def intended_sync(config: Config, repo: Repository) -> SyncSpec:
    """The synchronous policy to restore (a failover may have degraded the live setting)."""
    topo = topology.read(config, repo)
    live = parse_sync(str(topo.get("synchronous_standby_names") or "")) if topo else SyncSpec("off", 0, ())
    spec = topology.intended_sync(topo, live)
    return spec if spec.synchronous else parse_sync(config.failover.synchronous_standby_names)


def _standby_app_names(config: Config, primary: NodeConfig) -> dict[str, NodeConfig | None]:
    """The configured standbys that answer, by the application_name the primary sees them
    under — never another program that streams (an archiver's pg_receivewal)."""
    out: dict[str, NodeConfig | None] = {}
    for node in config.nodes:
        if node.name == primary.name:
            continue
        try:
            with session(node.conninfo, timeout=3) as conn:
                row = conn.execute("select pg_is_in_recovery() as r, "
                                   "current_setting('primary_conninfo') as ci").fetchone()
        except (PgdrError, psycopg.Error):
            continue
        if row and row["r"]:
            out[application_name(row["ci"] or "", node.name)] = node
    return out


def run_rejoin(config: Config, programs: Programs, repo: Repository, name: str) -> dict[str, Any]:
    node = config.node(name)
    primary = find_primary(config).node
    if primary.name == name:
        raise FailoverRefused(f"{name} is the current primary; nothing to rejoin")
    if node.data_dir is not None:
        # pg_rewind and pg_basebackup of the node's own major version (PG_VERSION), never
        # the newest installed: a 15 cluster rewound by 18's pg_rewind is refused anyway.
        programs = programs.for_server(data_dir=node.data_dir, what=name)
    inst = local_instance(node, programs)
    if inst is None:
        raise FailoverRefused(f"{name}'s data directory is not on this machine",
                              hint="run pgdr rejoin on that node's host")
    timeline = Timeline()
    record: dict[str, Any] = {"operation": "rejoin", "node": name, "primary": primary.name}
    with timeline.step("stop", name):
        if inst.is_running():
            inst.stop(mode="fast")
    with timeline.step("stale lock file", name) as step:
        step.detail = clear_stale_pidfile(inst.data_dir) or "none"
    saved = save_own_config(inst.data_dir)
    (inst.data_dir / "standby.signal").unlink(missing_ok=True)  # single-user crash recovery refuses standby mode
    method = "pg_rewind"
    plain, password = split_password(primary.conninfo)
    # A just-promoted primary's pg_control still names the old timeline until its first
    # checkpoint; pg_rewind would then see "same timeline" and rewind nothing.
    with timeline.step("checkpoint on the primary", primary.name), session(primary.conninfo) as conn:
        conn.execute("checkpoint")
    try:
        with timeline.step("pg_rewind", name) as step:
            result = programs.run("pg_rewind", ["-D", str(inst.data_dir), "--source-server", plain],
                                  password=password, timeout=1800)
            said = (result.stdout + result.stderr).strip().splitlines()
            step.detail = said[-1] if said else "done"
    except PgdrError as exc:
        method = "base backup"
        record["rewind_failed"] = exc.message
        with timeline.step("fresh base backup", f"pg_rewind impossible: {exc.message}") as step:
            aside = inst.data_dir.with_name(f"{inst.data_dir.name}.pgdr-old-{time.strftime('%Y%m%dT%H%M%S')}")
            inst.data_dir.rename(aside)
            step.evidence["safety_copy"] = str(aside)
            inst.data_dir.mkdir(mode=0o700)
            programs.run_as.chown(inst.data_dir)
            ensure_slot(primary.conninfo, read_auto_conf(aside).get("primary_slot_name") or slot_name(name))
            programs.run("pg_basebackup", ["-d", plain, "-D", str(inst.data_dir), "-X", "stream",
                                           "--checkpoint=fast"], password=password, timeout=3600,
                         stall_timeout=config.pg.stall_timeout, progress=dir_progress(inst.data_dir),
                         stalled_what=f"nothing written to {inst.data_dir} by {primary.name}")
    restore_own_config(inst.data_dir, saved, programs)
    with timeline.step("start as standby", name):
        app_name = configure_as_standby(inst.data_dir, node, primary, programs)
        inst.start()
    with timeline.step("streaming", name) as step:
        step.evidence.update(promote.wait_streaming(primary, app_name))
    spec = intended_sync(config, repo)
    if spec.synchronous:
        # Back into the synchronous set now that it streams (never before: every commit would wait).
        with timeline.step("synchronous standbys", primary.name) as step:
            standbys = _standby_app_names(config, primary)
            streaming = promote.streaming_names(primary, sorted(standbys))
            sync = promote.set_synchronous(primary, spec, {**{n: standbys[n] for n in streaming}, app_name: node},
                                           config.failover.sync_wait)
            step.detail = str(sync["detail"])
        record["synchronous_after"] = sync
    record["topology_after"] = topology.record_live(config, repo, primary, sync_method=spec.method,
                                                    sync_num=spec.num)
    record.update(outcome="rejoined", method=method, timeline=timeline.as_list())
    record["record_path"] = str(save_record(repo, "rejoin", record))
    return record
