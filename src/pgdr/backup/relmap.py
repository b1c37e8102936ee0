"""The relation map: relfilenode -> database.schema.table for every relation.

Recorded with each backup, and between backups by the archiver (a snapshot every
[archive] relmap_interval, stored only when it changed), so that later, reading WAL
with pg_waldump, a block reference like 1663/16384/16390 can be named even after its
table was dropped - also a table created after the newest backup. A DROP needs the
name the table had when it was dropped, which no backup may hold; the snapshots do.

A table can live shorter than one interval, so the archiver also watches the WAL it
receives: every second, pg_waldump -r Storage reads what arrived in the open segment
since the last look, and a Storage CREATE record (a new relation file: CREATE TABLE,
TRUNCATE, a rewrite) triggers a snapshot at once. A table that lives less than about a
second, or whose file is created in the last moments of a segment just before the
archiver moves on to the next one, can still go unnamed.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pgdr.errors import PgdrError
from pgdr.fsutil import write_json_durable
from pgdr.pg.lsn import format_lsn
from pgdr.pg.sql import load
from pgdr.repo.layout import Repository
from pgdr.repo.manifest import Relation, list_backups

if TYPE_CHECKING:
    from pgdr.pg.programs import Programs

log = logging.getLogger(__name__)


# (psycopg is imported where a map is taken, not by find-disaster, which only reads them)
def connectable_databases(conninfo: str) -> list[str]:
    from pgdr.pg.connect import session

    with session(conninfo) as conn:
        rows = conn.execute(
            "select datname from pg_database where datallowconn and not datistemplate order by 1"
        ).fetchall()
    return [r["datname"] for r in rows]


def relation_map(conninfo: str, databases: list[str]) -> dict[str, Relation]:
    from pgdr.pg.connect import session
    from pgdr.pg.conninfo import with_params

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
    from pgdr.pg.conninfo import with_params

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


WATCH_SECONDS = 1.0


class NewFiles:
    """Whether the WAL received since the last look created a relation file: pg_waldump
    -r Storage over the open segment (incoming/<name>.partial, linked under its segment
    name in a private folder) from where the last look stopped."""

    def __init__(self, repo: Repository, programs: Programs) -> None:
        self.repo = repo
        self.programs = programs
        self.segment: str | None = None
        self.start: str | None = None     # LSN where the last look stopped

    def seen(self) -> bool:
        from pgdr.pg.waldump import end_of_wal
        from pgdr.repo.wal import WalArchive

        open_segment = WalArchive(self.repo).partial()
        if open_segment is None:
            return False
        seg = open_segment[0]
        size = self.repo.wal_segment_size
        name = seg.name(size)
        if name != self.segment:
            self.segment, self.start = name, format_lsn(seg.start_lsn(size))
        with tempfile.TemporaryDirectory(prefix="pgdr-relmap-") as tmp:
            os.symlink(self.repo.incoming_dir / f"{name}.partial", Path(tmp) / name)
            res = self.programs.run("pg_waldump", ["-p", tmp, "-t", str(seg.timeline), "-s", self.start or "",
                                                   "-r", "Storage"],
                                    ok_codes=(0, 1), as_server_user=False, timeout=60)
        self.start = end_of_wal(res.stderr) or self.start
        return "desc: CREATE " in res.stdout


class RelmapRecorder:
    """Called from the archiver's loop: every `interval` seconds, and as soon as the
    received WAL shows a new relation file (NewFiles, looked at every WATCH_SECONDS),
    records a snapshot in a thread of its own, so a slow or unreachable server never
    delays archiving."""

    def __init__(self, repo: Repository, interval: float, programs: Programs | None = None) -> None:
        self.repo = repo
        self.interval = interval
        self.next_at = 0.0
        self.next_look = 0.0
        self.new_files = NewFiles(repo, programs) if programs is not None else None
        self.thread: threading.Thread | None = None
        self.last_error: str | None = None

    def tick(self, conninfo: str | None) -> None:
        if conninfo is None or self.interval <= 0:
            return
        now = time.monotonic()
        if now < self.next_at and (self.new_files is None or now < self.next_look):
            return
        if self.thread is not None and self.thread.is_alive():
            return
        due = now >= self.next_at
        if due:
            self.next_at = now + self.interval
        self.next_look = now + WATCH_SECONDS
        self.thread = threading.Thread(target=self._record, args=(conninfo, due), name="pgdr-relmap",
                                       daemon=True)
        self.thread.start()

    def _record(self, conninfo: str, due: bool = True) -> None:
        try:
            if not due:
                try:
                    if self.new_files is None or not self.new_files.seen():
                        return
                except (PgdrError, OSError) as exc:   # the look is a bonus: the interval still runs
                    log.debug("archiver: cannot look for new relation files: %s", exc)
                    return
            record_snapshot(self.repo, conninfo)
            self.last_error = None
        except Exception as exc:  # a background thread: report, never die with a traceback
            message = exc.message if isinstance(exc, PgdrError) else (str(exc).strip().splitlines() or [repr(exc)])[0]
            if message != self.last_error:  # once per distinct problem, not every interval
                log.warning("archiver: cannot record the relation map: %s", message)
            self.last_error = message
