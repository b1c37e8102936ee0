"""The cluster's topology as state: who is primary, its timeline, who is synchronous.

The config's node list and synchronous_standby_names are only the starting point:
after failovers, rejoins and switchovers the live settings drift from them, and a
dead primary can no longer be asked. So every failover, switchover, rejoin and
watch decision records what the live servers said — the primary's own
`synchronous_standby_names` (as the server has it: `SHOW`), and from its
pg_stat_replication which standbys stream and which are `sync`/`quorum` — in the
repository (`topology.json`) and, when `[watch.etcd]` is configured, in etcd, so
watchers on other hosts read the same truth.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import psycopg

from pgdr.config import Config, NodeConfig
from pgdr.errors import PgdrError
from pgdr.failover.lease import EtcdClient
from pgdr.failover.quorum import SyncSpec
from pgdr.fsutil import write_json_durable
from pgdr.pg.connect import session
from pgdr.repo.layout import Repository
from pgdr.repo.records import read_topology, topology_path

OBSERVE_SQL = """
select current_setting('synchronous_standby_names') as synchronous_standby_names,
       substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) as tli,
       coalesce((select json_agg(json_build_object('name', application_name, 'state', state,
                                                   'sync_state', sync_state))
                 from pg_stat_replication where application_name <> %s), '[]'::json) as replicas
"""


def _etcd_key(config: Config) -> str | None:
    if config.watch.etcd is None:
        return None
    return f"{config.watch.etcd.prefix}/{config.cluster.name}/topology"


def read(config: Config, repo: Repository) -> dict[str, Any]:
    """The newest topology known: etcd's when it answers (shared by hosts), else the repository's."""
    local = read_topology(repo)
    key = _etcd_key(config)
    if key is not None and config.watch.etcd is not None:
        try:
            raw = EtcdClient(config.watch.etcd.endpoints, timeout=1).get(key)
            shared = json.loads(raw) if raw else {}
            if isinstance(shared, dict) and shared.get("updated_at", "") > local.get("updated_at", ""):
                return shared
        except (PgdrError, ValueError):
            pass
    return local


def write(config: Config, repo: Repository, topology: dict[str, Any]) -> dict[str, Any]:
    """Record the topology durably in the repository, then in etcd (best effort, said in 'etcd')."""
    state = {**topology, "updated_at": datetime.now(UTC).isoformat(timespec="microseconds")}
    key = _etcd_key(config)
    if key is not None and config.watch.etcd is not None:
        try:
            EtcdClient(config.watch.etcd.endpoints, timeout=1).put(key, json.dumps(state, default=str))
            state["etcd"] = "written"
        except PgdrError as exc:
            state["etcd"] = f"not written: {exc.message}"
    write_json_durable(topology_path(repo), state)
    return state


def observe(config: Config, primary: NodeConfig) -> dict[str, Any]:
    """What the live primary says: its synchronous_standby_names, timeline, and replicas
    (the archiver's pg_receivewal is not a standby)."""
    with session(primary.conninfo, timeout=3) as conn:
        row = conn.execute(OBSERVE_SQL, (config.archive.application_name,)).fetchone()
    assert row is not None
    replicas = list(row["replicas"] or [])
    return {"primary": primary.name, "timeline": int(row["tli"], 16),
            "synchronous_standby_names": row["synchronous_standby_names"],
            "streaming": sorted(r["name"] for r in replicas if r["state"] == "streaming"),
            "synchronous": sorted(r["name"] for r in replicas if r["sync_state"] in ("sync", "quorum"))}


def record_live(config: Config, repo: Repository, primary: NodeConfig, **extra: Any) -> dict[str, Any]:
    """Observe the primary and record it; extra keys (e.g. fenced, sync_method) are kept beside.
    The operation it follows has succeeded: a primary that cannot be observed now is said in
    the result ('error'), not raised."""
    previous = read(config, repo)
    try:
        live = observe(config, primary)
    except (PgdrError, psycopg.Error) as exc:
        return {"error": f"topology not recorded: {getattr(exc, 'message', exc)}"}
    state = {**{k: v for k, v in previous.items() if k in ("fenced",)}, **live, **extra}
    if state.get("primary") != previous.get("primary") or "fenced" in extra:
        state.setdefault("fenced", [])
    return write(config, repo, state)


def refresh_if_changed(config: Config, repo: Repository, primary: NodeConfig) -> bool:
    """For watch: record the live state only when it differs from what is recorded."""
    try:
        live = observe(config, primary)
    except (PgdrError, psycopg.Error):
        return False
    known = read(config, repo)
    if all(known.get(k) == v for k, v in live.items()):
        return False
    write(config, repo, {**{k: v for k, v in known.items() if k == "fenced"}, **live})
    return True


def intended_sync(topo: dict[str, Any], live: SyncSpec) -> SyncSpec:
    """The synchronous policy to restore: the live one when it is synchronous, else the
    method and number the topology last recorded (a failover may have degraded the live
    setting to asynchronous while no standby could follow). Names: '*' — whoever streams."""
    if live.synchronous:
        return live
    if topo.get("sync_method") in ("any", "first"):
        return SyncSpec(str(topo["sync_method"]), int(topo.get("sync_num") or 1), ("*",))
    return live
