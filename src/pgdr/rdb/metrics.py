"""/metrics for each [[redis]]: from the same facts as `pgdr status` (rdb/health.py)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric

from pgdr.config import Config
from pgdr.rdb.health import gather_all
from pgdr.repo.layout import Repository


def collect(config: Config, repo: Repository) -> Iterator[Metric]:
    up = GaugeMetricFamily("pgdr_redis_up", "1 when pgdr can reach the Redis server", labels=["redis"])
    role = GaugeMetricFamily("pgdr_redis_role", "1 for the server's current role", labels=["redis", "role"])
    link = GaugeMetricFamily("pgdr_redis_master_link_up", "replicas: 1 when the link to the master is up",
                             labels=["redis"])
    bgsave = GaugeMetricFamily("pgdr_redis_last_bgsave_ok", "1 when rdb_last_bgsave_status is ok", labels=["redis"])
    memory = GaugeMetricFamily("pgdr_redis_used_memory_bytes", "used_memory", labels=["redis"])
    evicted = GaugeMetricFamily("pgdr_redis_evicted_keys", "evicted_keys since the server started",
                                labels=["redis"])
    count = GaugeMetricFamily("pgdr_redis_snapshots", "snapshots in the repository", labels=["redis"])
    newest = GaugeMetricFamily("pgdr_redis_newest_snapshot_age_seconds", "age of the newest snapshot",
                               labels=["redis"])
    verified = GaugeMetricFamily("pgdr_redis_newest_verified_snapshot_age_seconds",
                                 "age of the newest snapshot that passed verification", labels=["redis"])
    for f in gather_all(config, repo):
        up.add_metric([f.name], 1.0 if f.reachable else 0.0)
        count.add_metric([f.name], float(len(f.snapshots)))
        if f.newest is not None:
            newest.add_metric([f.name], f.newest.age_s)
        if f.newest_verified is not None:
            verified.add_metric([f.name], f.newest_verified.age_s)
        if not f.reachable:
            continue
        for r in ("master", "slave"):
            role.add_metric([f.name, r], 1.0 if f.role == r else 0.0)
        if f.role == "slave":
            link.add_metric([f.name], 1.0 if f.info.get("master_link_status") == "up" else 0.0)
        bgsave.add_metric([f.name], 1.0 if f.info.get("rdb_last_bgsave_status") == "ok" else 0.0)
        memory.add_metric([f.name], float(f.info.get("used_memory") or 0))
        evicted.add_metric([f.name], float(f.info.get("evicted_keys") or 0))
    yield from (up, role, link, bgsave, memory, evicted, count, newest, verified)
