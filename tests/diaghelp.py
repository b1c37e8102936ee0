"""Helpers for the diagnose/terminate/serve tests: held sessions and configs with low thresholds."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from pgdr.config import Config, load_config
from pgdr.sandbox.sandbox import Sandbox


def diag_config(sandbox: Sandbox, name: str = "pgdr-diag.toml", **diagnose: str | int) -> Path:
    """The sandbox's config plus a [diagnose] section (same folder: relative paths still hold)."""
    text = sandbox.config_path.read_text()
    lines = ["", "[diagnose]"] + [f"{k} = {v!r}".replace("'", '"') for k, v in diagnose.items()]
    path = sandbox.root / name
    path.write_text(text + "\n".join(lines) + "\n")
    return path


def load(path: Path) -> Config:
    return load_config(path)


def connect(sandbox: Sandbox, user: str = "postgres", app: str = "pgdr_test") -> psycopg.Connection[Any]:
    node = sandbox.primary
    return psycopg.connect(host=str(sandbox.socket_dir), port=node.port, dbname="app", user=user,
                           application_name=app, autocommit=False)


def wait_for(predicate: Callable[[], Any], timeout: float = 15, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class Blocked(threading.Thread):
    """Run one statement that will wait on a lock, in a thread; remember its outcome."""

    def __init__(self, conn: psycopg.Connection[Any], statement: str) -> None:
        super().__init__(daemon=True)
        self.conn = conn
        self.statement = statement
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.conn.execute(self.statement)  # type: ignore[arg-type]
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            self.error = exc


def pg_admin(sandbox: Sandbox) -> psycopg.Connection[Any]:
    node = sandbox.primary
    return psycopg.connect(host=str(sandbox.socket_dir), port=node.port, dbname="app", user="postgres",
                           autocommit=True)


def waiting_pids(sandbox: Sandbox) -> set[int]:
    with pg_admin(sandbox) as conn:
        return {r[0] for r in conn.execute(
            "select pid from pg_stat_activity where wait_event_type = 'Lock'")}
