"""A writer that counts its acknowledged commits.

Drills and tests need the ground truth a client saw: which commits the server
acknowledged, and when writes stopped and resumed. Each commit inserts one order
whose id the writer records only after COMMIT returned.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime

import psycopg

from pgdr.pg.conninfo import with_params


@dataclass
class WriterStats:
    acknowledged: list[int] = field(default_factory=list)
    # (id, created_at) of each acknowledged order: after a failover the new primary hands
    # out again the ids lost commits had used, so an id alone does not identify a commit
    rows: list[tuple[int, datetime]] = field(default_factory=list)
    errors: int = 0
    first_error_at: float | None = None
    resumed_at: float | None = None
    started_at: float = 0.0
    stopped_at: float = 0.0

    @property
    def commits_per_second(self) -> float:
        span = max(self.stopped_at - self.started_at, 1e-9)
        return len(self.acknowledged) / span


class Writer:
    """Insert orders one commit at a time until stopped (or for a fixed duration)."""

    def __init__(self, conninfo: str, dbname: str = "app") -> None:
        self.conninfo = with_params(conninfo, dbname=dbname, application_name="pgdr_writer")
        self.stats = WriterStats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _loop(self) -> None:
        conn: psycopg.Connection[tuple[int, datetime]] | None = None
        self.stats.started_at = time.monotonic()
        while not self._stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.conninfo, autocommit=True, connect_timeout=2)
                row = conn.execute(
                    "insert into orders (customer_id, status) values (1 + (random() * 19999)::int, 'new') "
                    "returning id, created_at"
                ).fetchone()
                assert row is not None
                self.stats.rows.append((int(row[0]), row[1]))
                self.stats.acknowledged.append(int(row[0]))
                if self.stats.first_error_at is not None and self.stats.resumed_at is None:
                    self.stats.resumed_at = time.monotonic()
            except psycopg.Error:
                self.stats.errors += 1
                if self.stats.first_error_at is None:
                    self.stats.first_error_at = time.monotonic()
                if conn is not None:
                    conn.close()
                conn = None
                self._stop.wait(0.05)
        if conn is not None:
            conn.close()
        self.stats.stopped_at = time.monotonic()

    def start(self) -> Writer:
        self._thread = threading.Thread(target=self._loop, name="pgdr-writer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> WriterStats:
        self._stop.set()
        if self._thread:
            self._thread.join(30)
        return self.stats

    def run_for(self, seconds: float) -> WriterStats:
        self.start()
        time.sleep(seconds)
        return self.stop()
