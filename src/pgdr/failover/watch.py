"""`pgdr watch`: check the primary every interval and fail over on its own, carefully.

The primary is declared failed only after `watch.failures` consecutive failed
probes AND only if no standby still hears from it. An idle primary sends a standby
nothing until the standby's WAL receiver asks for a reply, after
wal_receiver_timeout/2 of silence, so "recently heard" cannot be a fixed few
seconds: a standby hears the primary when it received a message after our probes
began to fail; it *may* still hear it while its silence is within
wal_receiver_timeout/2 (plus two intervals) and its receiver still streams — then
the watcher waits; a receiver that stopped streaming, or is silent longer, does not.

Only the lease holder acts. The lease is renewed in the background for the whole
run (a failover may outlast its TTL) and re-checked right before pg_promote. Every
watcher, acting or not, follows the current primary from the recorded topology
(repository or etcd), resets its counters when the primary changes, and logs every
decision — and every decision not to act — with its true reason.
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
from pgdr.failover import topology
from pgdr.failover.failover import run_failover
from pgdr.failover.lease import EtcdLease, Lease, LeaseKeeper, LocalLease
from pgdr.pg.connect import describe_failure, session
from pgdr.pg.probe import find_primary
from pgdr.pg.programs import Programs
from pgdr.repo.layout import Repository
from pgdr.repo.records import records_dir

RECEIVER_SQL = """
select (select status from pg_stat_wal_receiver) as status,
       (select extract(epoch from now() - last_msg_receipt_time)::float8 from pg_stat_wal_receiver) as silence_s,
       current_setting('wal_receiver_timeout') as receiver_timeout
"""
IN_RECOVERY = "is in recovery (no longer primary)"
REFRESH_TICKS = 10  # record the live topology every this many healthy probes (only when it changed)


def _seconds(setting: str) -> float:
    """wal_receiver_timeout as SHOW prints it ('60s', '1min', '500ms', '0')."""
    units = {"ms": 0.001, "s": 1, "min": 60, "h": 3600, "d": 86400}
    number = setting.rstrip("abcdefghijklmnopqrstuvwxyz")
    return float(number) * units.get(setting[len(number):] or "ms", 1)


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
        self.keeper = LeaseKeeper(self.lease, max(0.2, min(config.watch.interval, config.watch.lease_ttl / 3)))
        self.log_path = records_dir(repo) / "watch.jsonl"
        self.failovers: list[dict[str, Any]] = []
        self._log_lock = threading.Lock()
        self._waiting_on: list[str] = []

    def log(self, event: str, reason: str, **details: Any) -> None:
        entry = {"at": datetime.now(UTC).isoformat(timespec="milliseconds"), "watcher": self.lease.holder,
                 "event": event, "reason": reason, **details}
        with self._log_lock, open(self.log_path, "a") as fh:
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
                    return IN_RECOVERY
                return None
        except PgdrError as exc:
            return exc.message
        except psycopg.Error as exc:  # the server went away mid-probe, or the probe timed out
            return describe_failure(exc)

    def hearing(self, primary: NodeConfig, failing_for: float) -> tuple[list[str], list[str]]:
        """(standbys that heard the primary after our probes began failing,
            standbys that may still hear it: streaming, silent for less than they wait to ask)."""
        heard, maybe = [], []
        slack = 2 * self.config.watch.interval
        for node in self.config.nodes:
            if node.name == primary.name:
                continue
            try:
                with session(node.conninfo, timeout=self.config.watch.probe_timeout) as conn:
                    row = conn.execute(RECEIVER_SQL).fetchone()
            except (PgdrError, psycopg.Error):
                continue
            if not row or row["status"] != "streaming" or row["silence_s"] is None:
                continue
            silence = float(row["silence_s"])
            timeout = _seconds(str(row["receiver_timeout"]))
            ask_after = timeout / 2 if timeout > 0 else self.config.watch.receiver_fresh
            if silence < failing_for:
                heard.append(f"{node.name} (last message {silence:.1f}s ago, after our probes began failing)")
            elif silence <= ask_after + slack:
                maybe.append(f"{node.name} (streaming, silent {silence:.1f}s; its receiver asks the primary "
                             f"for a reply after {ask_after:.0f}s of silence)")
        return heard, maybe

    def current_primary(self) -> NodeConfig | None:
        """The primary as recorded (topology), else the one writable node found now."""
        name = topology.read(self.config, self.repo).get("primary")
        if name:
            try:
                return self.config.node(name)
            except PgdrError:
                pass
        try:
            return find_primary(self.config).node
        except PgdrError as exc:
            self.log("no-primary", exc.message)
            return None

    def run(self) -> None:
        cfg = self.config.watch
        failures, first_failure = 0, 0.0
        leader: bool | None = None  # unknown: the first answer is logged either way
        primary: NodeConfig | None = None
        healthy_ticks = 0
        self.log("start", f"watching every {cfg.interval}s; failover after {cfg.failures} consecutive failures")
        self.keeper.start()
        try:
            while not self.stop_event.is_set():
                tick = time.monotonic()
                if self.keeper.held != leader:
                    leader = self.keeper.held
                    self.log("lease", "acquired the leader lease: this watcher acts" if leader
                             else "another watcher holds the lease: this one only watches"
                             + (f" ({self.lease.error})" if self.lease.error else ""))
                if primary is None:
                    primary = self.current_primary()
                    if primary is not None:
                        self.log("primary", f"{primary.name} is the primary")
                    failures = 0
                why = self.primary_ok(primary) if primary is not None else "no primary known"
                if why is None:
                    if failures:
                        self.log("recovered", f"{primary.name if primary else '?'} answers again after "
                                 f"{failures} failure(s)")
                    failures = 0
                    healthy_ticks += 1
                    if primary is not None and healthy_ticks % REFRESH_TICKS == 1:
                        topology.refresh_if_changed(self.config, self.repo, primary)
                elif primary is not None:
                    moved = self._moved(primary, why)
                    if moved is not None:
                        primary, failures = moved, 0
                        continue
                    if failures == 0:
                        first_failure = time.time()
                    failures += 1
                    self.log("probe-failed", f"{primary.name}: {why} ({failures}/{cfg.failures})")
                    if failures >= cfg.failures:
                        self._decide(primary, first_failure)
                        if self.failovers and self.failovers[-1].get("new_primary"):
                            primary, failures = None, 0
                            if self.stop_after_failover:
                                break
                self.stop_event.wait(max(0.0, cfg.interval - (time.monotonic() - tick)))
        finally:
            self.keeper.stop()
            self.log("stop", "watcher stopped")

    def _moved(self, primary: NodeConfig, why: str) -> NodeConfig | None:
        """The new primary when it is no longer `primary`, logged; else None.

        A primary in recovery was changed behind pgdr's back (a switchover by hand): ask the
        servers. One that does not answer: read the recorded topology, which another
        watcher's or an operator's pgdr failover has updated.
        """
        if why == IN_RECOVERY:
            try:
                live = find_primary(self.config).node
            except PgdrError:
                return None
            if live.name != primary.name:
                topology.refresh_if_changed(self.config, self.repo, live)
                self.log("primary", f"{live.name} is the primary now ({primary.name} {why}); counters reset")
                return live
            return None
        recorded = self.current_primary()
        if recorded is not None and recorded.name != primary.name:
            self.log("primary", f"{recorded.name} is the primary now (recorded topology); counters reset")
            return recorded
        return None

    def _decide(self, primary: NodeConfig, first_failure: float) -> None:
        heard, maybe = self.hearing(primary, time.time() - first_failure)
        if heard:
            self.log("no-failover", f"{primary.name} fails our probes but " + ", ".join(heard)
                     + " still receive WAL from it: this watcher is cut off, not the primary")
            return
        if maybe:
            who = [m.split(" ", 1)[0] for m in maybe]
            if who != self._waiting_on:  # once per change, not once per probe
                self.log("waiting", f"{primary.name} fails our probes; not failing over yet: " + ", ".join(maybe))
            self._waiting_on = who
            return
        self._waiting_on = []
        if not self.keeper.held:
            why = self.lease.error
            self.log("no-failover", f"{primary.name} is down but this watcher does not hold the lease"
                     + (f" ({why}); nobody can act until the lease store answers" if why
                        else "; the holder will act"))
            return
        if self.keeper.still_ours() is not None:
            self.log("no-failover", "lost the lease just before acting")
            return
        self.log("failover", f"{primary.name} failed {self.config.watch.failures} consecutive probes and no "
                 "standby hears from it: failing over")
        try:
            record = run_failover(self.config, self.programs, self.repo, trigger="watch",
                                  detected_at=first_failure, still_allowed=self.keeper.still_ours,
                                  actor=self.lease.holder)
        except PgdrError as exc:
            self.log("failover-refused", exc.message)
            self.failovers.append({"refused": exc.message})
            return
        self.failovers.append(record)
        self.log("failover-done", f"{record['new_primary']} promoted on timeline {record['new_timeline']}; "
                 f"clients back after {record['rto_seconds']}s", record=record.get("record_path"))

    def stop(self) -> None:
        self.stop_event.set()
