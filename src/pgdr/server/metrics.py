"""Prometheus metrics from a custom Collector: gathered on scrape, never hand-formatted.

The facts come from the same gatherers as `pgdr diagnose` (one query per concern),
the repository's manifests and pgdr's archiver state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pgdr.backup.archiver import archiver_state_dict
from pgdr.config import Config
from pgdr.diagnose import gather as g
from pgdr.repo.layout import Repository
from pgdr.repo.manifest import list_backups
from pgdr.repo.records import list_records, verification_status

log = logging.getLogger(__name__)

ROLE_VALUE = {"primary": 1.0, "standby": 2.0, "unreachable": 0.0}


def newest_verified_backup(repo: Repository) -> tuple[float | None, str | None]:
    """Hook for verification: (age in seconds, result) of the newest backup with a verify record."""
    for backup in reversed(list_backups(repo)):
        status = verification_status(repo, backup.id)
        if status != "never":
            return backup.age_seconds, status
    return None, None


class PgdrCollector(Collector):
    def __init__(self, config: Config, repo: Repository,
                 extra: Callable[[], Iterator[Metric]] | None = None) -> None:
        self.config = config
        self.repo = repo
        self.extra = extra

    def describe(self) -> Iterator[Metric]:
        return iter(())  # collected on scrape: skip the registration-time collect()

    def collect(self) -> Iterator[Metric]:
        facts = g.gather_all(self.config, read_log=False)
        yield from self._nodes(facts)
        primary = next((f for f in facts if f.reachable and f.role == "primary"), None)
        if primary is not None:
            yield from self._primary(primary)
        yield from self._repository()
        yield from self._forecast(primary.node.conninfo if primary is not None else None)
        if self.config.redis:
            from pgdr.rdb.metrics import collect as redis_metrics

            yield from redis_metrics(self.config, self.repo)
        if self.extra is not None:
            yield from self.extra()

    def _nodes(self, facts: list[g.NodeFacts]) -> Iterator[Metric]:
        up = GaugeMetricFamily("pgdr_node_up", "1 when pgdr can connect to the node", labels=["node"])
        role = GaugeMetricFamily("pgdr_node_role", "1 for the node's current role", labels=["node", "role"])
        conns = GaugeMetricFamily("pgdr_connections", "client connections by state",
                                  labels=["node", "state"])
        max_conn = GaugeMetricFamily("pgdr_max_connections", "max_connections minus reserved slots",
                                     labels=["node"])
        waiting = GaugeMetricFamily("pgdr_lock_waiting_sessions", "sessions waiting on a lock",
                                    labels=["node"])
        for f in facts:
            up.add_metric([f.node.name], 1.0 if f.reachable else 0.0)
            for r in ("primary", "standby", "unreachable"):
                role.add_metric([f.node.name, r], 1.0 if f.role == r else 0.0)
            if f.reachable and f.instance:
                by_state: dict[str, Any] = f.instance.get("by_state") or {}
                for state in ("active", "idle", "idle in transaction", "idle in transaction (aborted)",
                              "fastpath function call", "disabled"):
                    conns.add_metric([f.node.name, state], float(by_state.get(state, 0)))
                reserved = int(f.instance.get("superuser_reserved") or 0) + int(f.instance.get("reserved") or 0)
                max_conn.add_metric([f.node.name], float(int(f.instance["max_connections"]) - reserved))
                waiting.add_metric([f.node.name], float(sum(1 for r in f.locks if r.get("blocked_by"))))
        yield from (up, role, conns, max_conn, waiting)

    def _primary(self, f: g.NodeFacts) -> Iterator[Metric]:
        lag_b = GaugeMetricFamily("pgdr_replication_lag_bytes", "replay lag per walsender",
                                  labels=["application_name", "state", "sync_state"])
        lag_s = GaugeMetricFamily("pgdr_replication_lag_seconds", "replay lag per walsender",
                                  labels=["application_name"])
        for r in f.replication:
            lag_b.add_metric([r["application_name"], r["state"] or "", r["sync_state"] or ""],
                             float(r.get("replay_lag_bytes") or 0))
            lag_s.add_metric([r["application_name"]], float(r.get("replay_lag_s") or 0.0))
        slot = GaugeMetricFamily("pgdr_replication_slot_retained_bytes", "WAL a slot keeps",
                                 labels=["slot", "active"])
        for s in f.slots:
            slot.add_metric([s["slot_name"], str(bool(s["active"])).lower()], float(s.get("retained_bytes") or 0))
        yield from (lag_b, lag_s, slot)
        archiver = next((r for r in f.replication if r["application_name"] == self.config.archive.application_name), None)
        arch_lag = GaugeMetricFamily("pgdr_archive_lag_bytes", "how far pgdr's WAL archive trails the primary")
        arch_lag_s = GaugeMetricFamily("pgdr_archive_lag_seconds", "flush lag of pgdr's WAL archiver")
        if archiver is not None:
            # NULL (hidden from this role, or not measured yet) is no sample, not a green 0
            if archiver.get("flush_lag_bytes") is not None:
                arch_lag.add_metric([], float(archiver["flush_lag_bytes"]))
            if archiver.get("flush_lag_s") is not None:
                arch_lag_s.add_metric([], float(archiver["flush_lag_s"]))
        else:
            retained = next((s.get("retained_bytes") for s in f.slots if s["slot_name"] == self.config.archive.slot), None)
            if retained is not None:
                arch_lag.add_metric([], float(retained))
        yield from (arch_lag, arch_lag_s)
        if f.archiver is not None:
            failed = GaugeMetricFamily("pgdr_archive_command_failed", "pg_stat_archiver.failed_count")
            failed.add_metric([], float(f.archiver.get("failed_count") or 0))
            ready = GaugeMetricFamily("pgdr_archive_command_ready_segments", "segments waiting for archive_command")
            ready.add_metric([], float(f.archiver.get("ready_count") or 0))
            yield from (failed, ready)
        wrap = GaugeMetricFamily("pgdr_wraparound_xids_left", "transaction IDs left before wraparound",
                                 labels=["database"])
        age = GaugeMetricFamily("pgdr_database_xid_age", "age(datfrozenxid)", labels=["database"])
        size = GaugeMetricFamily("pgdr_database_size_bytes", "database size", labels=["database"])
        cks = GaugeMetricFamily("pgdr_checksum_failures", "pg_stat_database.checksum_failures",
                                labels=["database"])
        for d in f.databases:
            name = d["datname"] or "(shared)"
            if d.get("xid_age") is not None:
                wrap.add_metric([name], float(g.XID_WRAP_LIMIT - d["xid_age"]))
                age.add_metric([name], float(d["xid_age"]))
            if d.get("size_bytes") is not None:
                size.add_metric([name], float(d["size_bytes"]))
            cks.add_metric([name], float(d.get("checksum_failures") or 0))
        yield from (wrap, age, size, cks)

    def _repository(self) -> Iterator[Metric]:
        try:
            backups = list_backups(self.repo)
            state = archiver_state_dict(self.repo)
        except Exception as exc:  # noqa: BLE001 - an unreadable repository must not break the scrape
            log.warning("repository unreadable for metrics: %s", exc)
            err = GaugeMetricFamily("pgdr_repository_up", "1 when the repository is readable")
            err.add_metric([], 0.0)
            yield err
            return
        ok = GaugeMetricFamily("pgdr_repository_up", "1 when the repository is readable")
        ok.add_metric([], 1.0)
        yield ok
        count = GaugeMetricFamily("pgdr_backups", "backups in the repository", labels=["kind"])
        age = GaugeMetricFamily("pgdr_newest_backup_age_seconds", "age of the newest backup", labels=["kind"])
        for kind in ("physical", "logical"):
            group = [b for b in backups if b.kind == kind]
            count.add_metric([kind], float(len(group)))
            if group:
                age.add_metric([kind], group[-1].age_seconds)
        yield from (count, age)
        v_age, v_result = newest_verified_backup(self.repo)
        verified = GaugeMetricFamily("pgdr_newest_verified_backup_age_seconds",
                                     "age of the newest backup with a verification record", labels=["result"])
        if v_age is not None and v_result is not None:
            verified.add_metric([v_result], v_age)
        yield verified
        running = GaugeMetricFamily("pgdr_archiver_running", "1 when pgdr's WAL archiver runs")
        running.add_metric([], 1.0 if state.get("running") else 0.0)
        fails = GaugeMetricFamily("pgdr_archiver_failures", "failures pgdr's WAL archiver recorded")
        fails.add_metric([], float(state.get("failures") or 0))
        yield from (running, fails)
        yield from self._last_drill()
        yield from self._proof()
        from pgdr.migrate.visibility import metrics as migration_metrics

        yield from migration_metrics(self.repo)

    def _forecast(self, primary_conninfo: str | None) -> Iterator[Metric]:
        """The RTO forecast (pgdr/forecast.py) beside its targets; unknown: no sample."""
        from pgdr.forecast import forecast

        fc = forecast(self.config, self.repo, primary_conninfo)
        seconds = GaugeMetricFamily("pgdr_rto_forecast_seconds", "forecast recovery time from measured rates",
                                    labels=["kind"])
        target = GaugeMetricFamily("pgdr_rto_target_seconds", "the [drill] RTO target", labels=["kind"])
        rates = GaugeMetricFamily("pgdr_measured_rate_bytes_per_second", "restore / WAL replay throughput "
                                  "measured by the last verification / restore", labels=["kind"])
        for kind, value, goal in (("full_restore", fc.full_restore_s, fc.full_restore_target_s),
                                  ("pitr", fc.pitr_s, fc.pitr_target_s)):
            if value is not None:
                seconds.add_metric([kind], value)
            target.add_metric([kind], goal)
        for kind, rate in (("restore", fc.restore_rate), ("replay", fc.replay_rate)):
            if rate is not None:
                rates.add_metric([kind], rate.bytes_per_s)
        yield from (seconds, target, rates)

    def _proof(self) -> Iterator[Metric]:
        """How old the proof of recovery is (pgdr/proof.py), each verification's result, and
        the last failover / switchover / cutover's measured RTO and RPO."""
        from pgdr import proof

        ages = GaugeMetricFamily("pgdr_proof_age_seconds", "seconds since the newest successful verification "
                                 "(kind=verify) / the last passed drill (kind=drill)", labels=["kind"])
        limits = GaugeMetricFamily("pgdr_proof_max_age_seconds", "status.max_verify_age / max_drill_age",
                                   labels=["kind"])
        for kind, (age, _), limit in (("verify", proof.verify_age(self.repo), self.config.status.max_verify_age),
                                      ("drill", proof.drill_age(self.repo), self.config.status.max_drill_age)):
            if age is not None:
                ages.add_metric([kind], age)
            limits.add_metric([kind], limit)
        results = GaugeMetricFamily("pgdr_verification_passed", "1 when the backup's last verification passed",
                                    labels=["backup_id", "kind"])
        for v in proof.verifications(self.repo):
            results.add_metric([v.backup_id, v.kind], 1.0 if v.passed else 0.0)
        rto = GaugeMetricFamily("pgdr_last_operation_rto_seconds", "measured RTO of the last failover, "
                                "switchover or cutover", labels=["operation"])
        rpo = GaugeMetricFamily("pgdr_last_operation_rpo", "measured data loss of the last failover, "
                                "switchover or cutover (unknown: no sample)", labels=["operation", "unit"])
        for op, last in proof.last_operations(self.repo).items():
            rto.add_metric([op], float(last["rto_seconds"]))
            if last["rpo_known"]:
                for unit in ("bytes", "commits"):
                    if last[f"rpo_{unit}"] is not None:
                        rpo.add_metric([op, unit], float(last[f"rpo_{unit}"]))
        yield from (ages, limits, results, rto, rpo)

    def _last_drill(self) -> Iterator[Metric]:
        """The last drill's measured RTO/RPO per scenario, and whether each passed."""
        drills = list_records(self.repo, "drill")
        rto = GaugeMetricFamily("pgdr_drill_rto_seconds", "measured RTO in the last drill", labels=["scenario"])
        rpo = GaugeMetricFamily("pgdr_drill_rpo", "measured RPO in the last drill", labels=["scenario", "unit"])
        passed = GaugeMetricFamily("pgdr_drill_passed", "1 when the scenario passed in the last drill",
                                   labels=["scenario"])
        if drills:
            for sc in drills[-1].get("scenarios", []):
                if sc.get("rto_s") is not None:
                    rto.add_metric([sc["name"]], float(sc["rto_s"]))
                if sc.get("rpo") is not None:
                    rpo.add_metric([sc["name"], str(sc.get("rpo_unit"))], float(sc["rpo"]))
                passed.add_metric([sc["name"]], 1.0 if sc.get("passed") else 0.0)
        yield from (rto, rpo, passed)
