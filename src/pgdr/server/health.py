"""Is the database usable for writes? Answered within a hard timeout, even if the server hangs.

The check runs in a worker thread; the caller waits at most `timeout` seconds. A
hung server leaves the thread blocked until connect_timeout/statement_timeout, but
the answer (503, timed out) is already given. Only one check runs at a time and its
answer is reused for `cache` seconds, so a storm of health polls costs the database
one connection per interval.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import psycopg

from pgdr.config import Config, NodeConfig
from pgdr.diagnose.gather import XID_STOP_MARGIN, XID_WRAP_LIMIT, classify_failure
from pgdr.pg.connect import open_raw
from pgdr.pg.conninfo import mask_text, parse, with_params

HEALTH_SQL = """
select pg_is_in_recovery() as in_recovery,
       current_setting('transaction_read_only') = 'on' as read_only,
       (select max(age(datfrozenxid)) from pg_database)::bigint as max_xid_age
"""


@dataclass
class Health:
    ok: bool
    reason: str
    node: str | None = None
    cause: str | None = None
    elapsed_ms: float = 0.0
    checked_at: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return {"status": "ok" if self.ok else "unavailable", "reason": self.reason, "node": self.node,
                "cause": self.cause, "elapsed_ms": round(self.elapsed_ms, 1)}


def _target(node: NodeConfig, timeout: float) -> str:
    params = parse(node.conninfo)
    ms = max(100, int(timeout * 1000))
    options = (params.get("options", "") + f" -c statement_timeout={ms}").strip()
    return with_params(node.conninfo, connect_timeout=max(1, int(timeout + 0.999)),
                       application_name="pgdr_health", options=options)


def check_node(node: NodeConfig, timeout: float) -> Health:
    t0 = time.monotonic()
    try:
        with open_raw(_target(node, timeout), timeout=timeout + 0.999, statement_timeout=0) as conn:
            row = conn.execute(HEALTH_SQL).fetchone()
    except psycopg.Error as exc:
        cause = classify_failure(exc)
        text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        return Health(False, f"{node.name}: {mask_text(text)}", node.name, cause,
                      (time.monotonic() - t0) * 1000)
    elapsed = (time.monotonic() - t0) * 1000
    assert row is not None
    if row["in_recovery"] or row["read_only"]:
        return Health(False, f"{node.name} is read-only (in recovery)" if row["in_recovery"]
                      else f"{node.name} is read-only (default_transaction_read_only)", node.name,
                      "read_only", elapsed)
    if (row["max_xid_age"] or 0) >= XID_WRAP_LIMIT - XID_STOP_MARGIN:
        return Health(False, f"{node.name} refuses writes to avoid wraparound", node.name,
                      "wraparound_protection", elapsed)
    return Health(True, f"{node.name} accepts writes", node.name, None, elapsed)


class HealthChecker:
    def __init__(self, config: Config, timeout: float | None = None, cache: float | None = None) -> None:
        self.config = config
        self.timeout = timeout if timeout is not None else config.serve.health_timeout
        self.cache = cache if cache is not None else config.serve.health_cache
        # Threads stuck on a hung server are bounded: when all are busy, new checks
        # queue and time out with a 503 rather than piling up without limit.
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="pgdr-health")
        self._lock = threading.Lock()
        self._inflight: Future[Health] | None = None
        self._last: Health | None = None

    def _check(self, timeout: float) -> Health:
        # The configured primary first; after a failover another node may be the writable one.
        nodes = sorted(self.config.nodes, key=lambda n: n.role != "primary")
        first: Health | None = None
        deadline = time.monotonic() + timeout
        for node in nodes:
            left = deadline - time.monotonic()
            if left <= 0.05:
                break
            result = check_node(node, left)
            if result.ok:
                return result
            first = first or result
        return first or Health(False, "timed out", None, "timeout")

    def check(self, timeout: float | None = None) -> Health:
        timeout = min(timeout or self.timeout, self.timeout)
        t0 = time.monotonic()
        with self._lock:
            last = self._last
            if last is not None and time.time() - last.checked_at < self.cache:
                return last
            if self._inflight is None or self._inflight.done():
                self._inflight = self._pool.submit(self._check, timeout)
            future = self._inflight
        try:
            result = future.result(timeout=max(0.0, timeout - (time.monotonic() - t0)))
        except FutureTimeout:
            return Health(False, f"no answer within {timeout:g}s (server hangs or is overloaded)",
                          self.config.configured_primary.name, "timeout", (time.monotonic() - t0) * 1000)
        with self._lock:
            if self._last is None or result.checked_at >= self._last.checked_at:
                self._last = result
        return result

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
