"""The relation map: relfilenode -> database.schema.table for every relation.

Recorded with each backup, and between backups by the archiver (a snapshot every
[archive] relmap_interval, stored only when it changed), so that later, reading WAL
with pg_waldump, a block reference like 1663/16384/16390 can be named even after its
table was dropped - also a table created after the newest backup. A DROP needs the
name the table had when it was dropped, which no backup may hold; the snapshots do
(unless the table lived shorter than one interval).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pgdr.errors import PgdrError
from pgdr.fsutil import write_json_durable
from pgdr.pg.connect import session
from pgdr.pg.conninfo import with_params
from pgdr.pg.sql import load
from pgdr.repo.layout import Repository
from pgdr.repo.manifest import Relation, list_backups

log = logging.getLogger(__name__)


def connectable_databases(conninfo: str) -> list[str]:
    with session(conninfo) as conn:
        rows = conn.execute(
            "select datname from pg_database where datallowconn and not datistemplate order by 1"
        ).fetchall()
    return [r["datname"] for r in rows]


def relation_map(conninfo: str, databases: list[str]) -> dict[str, Relation]:
    relations: dict[str, Relation] = {}
    sql = load("relations")
    for dbname in databases:
        with session(with_params(conninfo, dbname=dbname), timeout=10, statement_timeout=30,
                     what=f"the relation map of {dbname}") as conn:
            for row in conn.execute(sql):
                key = f"{row['spc']}/{row['db']}/{row['filenode']}"
                relations[key] = Relation(database=dbname, schema_name=row["schema_name"],
                                          name=row["name"], kind=row["kind"])
    return relations


# ---- snapshots between backups ---------------------------------------------------------

def snapshots_dir(repo: Repository) -> Path:
    return repo.root / "relmaps"


def _snapshot_files(repo: Repository) -> list[Path]:
    folder = snapshots_dir(repo)
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def snapshots(repo: Repository) -> Iterator[tuple[datetime, dict[str, Relation]]]:
    """The recorded maps, oldest first (a torn or foreign file is skipped, never fatal)."""
    for path in _snapshot_files(repo):
        try:
            data = json.loads(path.read_text())
            taken = datetime.fromisoformat(data["taken_at"])
            rels = {k: Relation(**v) for k, v in data["relations"].items()}
        except (OSError, ValueError, KeyError, TypeError):
            continue
        yield taken, rels


def _as_json(relations: dict[str, Relation]) -> dict[str, Any]:
    return {k: v.model_dump() for k, v in sorted(relations.items())}


def record_snapshot(repo: Repository, conninfo: str) -> Path | None:
    """Take the map now; store it only when it differs from the newest stored one."""
    conninfo = with_params(conninfo, application_name="pgdr_relmap")
    relations = _as_json(relation_map(conninfo, connectable_databases(conninfo)))
    files = _snapshot_files(repo)
    if files:
        try:
            if json.loads(files[-1].read_text()).get("relations") == relations:
                return None
        except (OSError, ValueError):
            pass
    now = datetime.now(UTC)
    folder = snapshots_dir(repo)
    folder.mkdir(mode=0o755, exist_ok=True)
    path = folder / f"{now.strftime('%Y%m%dT%H%M%S.%fZ')}.json"
    write_json_durable(path, {"taken_at": now.isoformat(), "relations": relations})
    _prune(repo)
    return path


def _prune(repo: Repository) -> None:
    """Drop snapshots older than the oldest physical backup: no restore can reach back
    before it, and that backup carries its own map. The newest snapshot always stays."""
    backups = list_backups(repo, "physical")
    if not backups:
        return
    cutoff = backups[0].start_time.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    for path in _snapshot_files(repo)[:-1]:
        if path.stem < cutoff:
            path.unlink(missing_ok=True)


class RelmapRecorder:
    """Called from the archiver's loop: every `interval` seconds records a snapshot in a
    thread of its own, so a slow or unreachable server never delays archiving."""

    def __init__(self, repo: Repository, interval: float) -> None:
        self.repo = repo
        self.interval = interval
        self.next_at = 0.0
        self.thread: threading.Thread | None = None
        self.last_error: str | None = None

    def tick(self, conninfo: str | None) -> None:
        if conninfo is None or self.interval <= 0 or time.monotonic() < self.next_at:
            return
        if self.thread is not None and self.thread.is_alive():
            return
        self.next_at = time.monotonic() + self.interval
        self.thread = threading.Thread(target=self._record, args=(conninfo,), name="pgdr-relmap", daemon=True)
        self.thread.start()

    def _record(self, conninfo: str) -> None:
        try:
            record_snapshot(self.repo, conninfo)
            self.last_error = None
        except Exception as exc:  # a background thread: report, never die with a traceback
            message = exc.message if isinstance(exc, PgdrError) else (str(exc).strip().splitlines() or [repr(exc)])[0]
            if message != self.last_error:  # once per distinct problem, not every interval
                log.warning("archiver: cannot record the relation map: %s", message)
            self.last_error = message
