"""`pgdr watch`: check the primary every second and fail over on its own, carefully.

The primary is declared failed only after `watch.failures` consecutive failed
probes AND only if no standby still hears from it: a standby whose WAL receiver is
streaming with a fresh message proves the primary alive, so a watcher that lost its
own network does not cause a failover. Only the lease holder acts. Every decision
— and every decision not to act — is logged with its reason.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import psycopg

from pgdr.config import Config, NodeConfig
from pgdr.errors import PgdrError
from pgdr.failover.failover import run_failover
from pgdr.failover.lease import EtcdLease, Lease, LocalLease
from pgdr.pg.connect import describe_failure, session
from pgdr.pg.probe import find_primary
from pgdr.pg.programs import Programs
from pgdr.repo.layout import Repository
from pgdr.repo.records import records_dir

RECEIVER_SQL = """
select status, extract(epoch from now() - last_msg_receipt_time)::float8 as silence_s
from pg_stat_wal_receiver
"""


class Watcher:
    def __init__(self, config: Config, programs: Programs, repo: Repository,
                 on_event: Callable[[dict[str, Any]], None] | None = None,
                 stop_after_failover: bool = False, lease: Lease | None = None) -> None:
        self.config = config
        self.programs = programs
        self.repo = repo
        self.on_event = on_event
        self.stop_after_failover = stop_after_failover
        self.stop_event = threading.Event()
        if lease is not None:
            self.lease = lease
        elif config.watch.etcd is not None:
            self.lease = EtcdLease(config.watch.etcd.endpoints,
                                   f"{config.watch.etcd.prefix}/{config.cluster.name}/leader", config.watch.lease_ttl)
        else:
            self.lease = LocalLease(repo)
        self.log_path = records_dir(repo) / "watch.jsonl"
        self.failovers: list[dict[str, Any]] = []

    def log(self, event: str, reason: str, **details: Any) -> None:
        entry = {"at": datetime.now(UTC).isoformat(timespec="milliseconds"), "watcher": self.lease.holder,
                 "event": event, "reason": reason, **details}
        with open(self.log_path, "a") as fh:
            fh.write(json.dumps(entry, default=str) + "\n")
        if self.on_event:
            self.on_event(entry)

    def primary_ok(self, node: NodeConfig) -> str | None:
        """None when the primary answers as a writable primary, else why not."""
        try:
            with session(node.conninfo, timeout=self.config.watch.probe_timeout) as conn:
                conn.execute("select set_config('statement_timeout', %s, false)",
                             (str(int(self.config.watch.probe_timeout * 1000)),))
                row = conn.execute("select pg_is_in_recovery() as r").fetchone()
                if row and row["r"]:
                    return "it is in recovery (no longer primary)"
                return None
        except PgdrError as exc:
            return exc.message
        except psycopg.Error as exc:  # the server went away mid-probe, or the probe timed out
            return describe_failure(exc)

    def standbys_hearing_primary(self, primary: NodeConfig) -> list[str]:
        hearing = []
        for node in self.config.nodes:
            if node.name == primary.name:
                continue
            try:
                with session(node.conninfo, timeout=self.config.watch.probe_timeout) as conn:
                    row = conn.execute(RECEIVER_SQL).fetchone()
            except (PgdrError, psycopg.Error):
                continue
            if row and row["status"] == "streaming" and row["silence_s"] is not None \
                    and row["silence_s"] <= self.config.watch.receiver_fresh:
                hearing.append(f"{node.name} (last message {row['silence_s']:.1f}s ago)")
        return hearing

    def run(self) -> None:
        cfg = self.config.watch
        failures = 0
        leader: bool | None = None  # unknown: the first answer is logged either way
        primary: NodeConfig | None = None
        self.log("start", f"watching every {cfg.interval}s; failover after {cfg.failures} consecutive failures")
        try:
            while not self.stop_event.is_set():
                tick = time.monotonic()
                now_leader = self.lease.acquire_or_renew()
                if now_leader != leader:
                    leader = now_leader
                    self.log("lease", "acquired the leader lease: this watcher acts" if leader
                             else "another watcher holds the lease: this one only watches")
                if primary is None:
                    try:
                        primary = find_primary(self.config).node
                        self.log("primary", f"{primary.name} is the primary")
                    except PgdrError as exc:
                        self.log("no-primary", exc.message)
                why = self.primary_ok(primary) if primary is not None else "no primary known"
                if why is None:
                    if failures:
                        self.log("recovered", f"{primary.name if primary else '?'} answers again after {failures} failure(s)")
                    failures = 0
                elif primary is not None:
                    failures += 1
                    self.log("probe-failed", f"{primary.name}: {why} ({failures}/{cfg.failures})")
                    if failures >= cfg.failures:
                        self._decide(primary, bool(leader))
                        if self.failovers and self.failovers[-1].get("new_primary"):
                            primary = None
                            failures = 0
                            if self.stop_after_failover:
                                break
                self.stop_event.wait(max(0.0, cfg.interval - (time.monotonic() - tick)))
        finally:
            self.lease.release()
            self.log("stop", "watcher stopped")

    def _decide(self, primary: NodeConfig, leader: bool) -> None:
        hearing = self.standbys_hearing_primary(primary)
        if hearing:
            self.log("no-failover", f"{primary.name} fails our probes but " + ", ".join(hearing)
                     + " still receive WAL from it: this watcher is cut off, not the primary")
            return
        if not leader:
            self.log("no-failover", f"{primary.name} is down but another watcher holds the lease and will act")
            return
        if not self.lease.acquire_or_renew():
            self.log("no-failover", "lost the lease just before acting")
            return
        self.log("failover", f"{primary.name} failed {self.config.watch.failures} consecutive probes and no "
                 "standby hears from it: failing over")
        try:
            record = run_failover(self.config, self.programs, self.repo, trigger="watch")
        except PgdrError as exc:
            self.log("failover-refused", exc.message)
            self.failovers.append({"refused": exc.message})
            return
        self.failovers.append(record)
        self.log("failover-done", f"{record['new_primary']} promoted on timeline {record['new_timeline']} "
                 f"in {record['rto_seconds']}s", record=record.get("record_path"))

    def stop(self) -> None:
        self.stop_event.set()
