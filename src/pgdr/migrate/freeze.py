"""The freeze point taken before every migration: the place a rollback can return to.

Always a named restore point (pg_create_restore_point) that pgdr waits to see in its
WAL archive - a restore point that never reached the archive is no way back - plus,
when asked, a new physical backup or a logical dump. With it: the schema revision the
migration tool reports, the schema fingerprint and its tables/columns, and the next
transaction id (rows whose xmin is at or past it were written after the freeze).

Refuses, before anything runs, when the freeze point cannot be taken: no WAL archive
(logical-only mode, archiver not streaming), no physical backup to restore from, or
not enough free space in the repository.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC
from typing import Any, Literal

from psycopg import errors as pgerrors

from pgdr.backup import archiver
from pgdr.config import Config
from pgdr.errors import PgdrError
from pgdr.migrate import schema
from pgdr.mode import is_logical_only
from pgdr.pg.connect import session
from pgdr.pg.conninfo import parse, with_params
from pgdr.pg.lsn import parse_lsn
from pgdr.pg.probe import find_primary
from pgdr.pg.programs import Programs
from pgdr.repo.layout import Repository
from pgdr.repo.manifest import list_backups

FreezeMode = Literal["restore-point", "backup", "logical"]


class FreezeRefused(PgdrError):
    """The freeze point cannot be taken: the migration must not start."""


@dataclass
class FreezePoint:
    restore_point: str
    lsn: str
    at: str                       # the primary's clock (ISO)
    next_xid: int                 # 32-bit: rows with xmin from here on were written later
    mode: str
    revision: str | None
    fingerprint: str
    tables: schema.Snapshot = field(default_factory=dict)
    backup_id: str | None = None
    archived_in_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def target_conninfo(config: Config) -> str:
    """The primary (whichever node is writable now), in the migration's database."""
    primary = find_primary(config)
    database = config.migrate.database or parse(primary.node.conninfo).get("dbname")
    return with_params(primary.node.conninfo, dbname=database, application_name="pgdr_migrate")


# One migration or rollback at a time per database, whichever machine pgdr runs on: a
# session-level advisory lock, held by a session open for the whole run (released by
# PostgreSQL when that session ends, also when pgdr is killed).
LOCK_SQL = "select pg_try_advisory_lock(hashtext('pgdr migrate')::bigint) as got"


@contextmanager
def exclusive(conninfo: str) -> Iterator[None]:
    with session(conninfo, what="pgdr's migration lock") as conn:
        row = conn.execute(LOCK_SQL).fetchone()
        if not row or not row["got"]:
            raise FreezeRefused("another pgdr migrate or rollback is running against this database "
                                "(it holds pgdr's advisory lock)",
                                hint="wait for it; `pgdr status` shows the last migration")
        yield


def read_revision(conninfo: str, query: str) -> str | None:
    """The migration tool's revision; None before its first migration (no version table)."""
    try:
        with session(conninfo, what="the schema revision") as conn:
            try:
                row = conn.execute(query).fetchone()  # the user's own query ([migrate] revision_query)
            except pgerrors.UndefinedTable:
                return None
    except pgerrors.Error as exc:
        raise PgdrError(f"[migrate] revision_query failed: {str(exc).strip().splitlines()[0]}") from None
    if row is None:
        return None
    value = next(iter(row.values()))
    return None if value is None else str(value)


NEXT_XID_SQL = "select (txid_snapshot_xmax(txid_current_snapshot()) % 4294967296)::bigint as xid"  # no params


def next_xid(conninfo: str) -> int:
    """The next transaction id (32 bits, as xmin shows it): rows whose xmin is at or past
    it are written later."""
    with session(conninfo, what="the next transaction id") as conn:
        row = conn.execute(NEXT_XID_SQL).fetchone()
    assert row is not None
    return int(row["xid"])


def preflight(config: Config, repo: Repository, conninfo: str, mode: FreezeMode) -> None:
    """Refuse (one line, why and what to do) before anything is written."""
    if is_logical_only(config):
        raise FreezeRefused("cannot take a freeze point: no WAL archive (logical-only mode), so no restore "
                            "point to roll back to", hint="migrate with a logical dump only by hand, "
                            "or set up physical backups and `pgdr archiver start`")
    if not archiver.is_running(repo):
        raise FreezeRefused("cannot take a freeze point: pgdr's WAL archiver is not running, so the "
                            "restore point would never reach the archive",
                            hint="start it: `pgdr archiver start`")
    if not list_backups(repo, "physical"):
        raise FreezeRefused("cannot take a freeze point: no physical backup to restore the restore point "
                            "from", hint="run `pgdr backup` first")
    with session(conninfo, what="the database's size") as conn:
        row = conn.execute("select pg_database_size(current_database())::bigint as size").fetchone()
    assert row is not None
    need = config.migrate.min_free_bytes + (int(row["size"]) if mode != "restore-point" else 0)
    free = shutil.disk_usage(repo.root).free
    if free < need:
        raise FreezeRefused(f"cannot take a freeze point: {free >> 20} MiB free in {repo.root}, "
                            f"{need >> 20} MiB needed", hint="free space in the repository "
                            "(or lower [migrate] min_free_bytes)")


def wait_archived(config: Config, primary_conninfo: str, lsn: str, timeout: float) -> float:
    """Until pgdr's archiver has flushed WAL up to lsn; returns the seconds waited."""
    start = time.monotonic()
    wanted = parse_lsn(lsn)
    flushed: str | None = None
    while True:
        with session(primary_conninfo, what="the archiver's flush position") as conn:
            row = conn.execute("select flush_lsn::text as f from pg_stat_replication "
                               "where application_name = %s", (config.archive.application_name,)).fetchone()
        flushed = row["f"] if row else None
        if flushed is not None and parse_lsn(flushed) >= wanted:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise FreezeRefused(f"the restore point (LSN {lsn}) did not reach the WAL archive within "
                                f"{timeout:.0f}s (archiver flushed {flushed or 'nothing'})",
                                hint="see `pgdr status`; raise [migrate] archive_wait if the archive is just slow")
        time.sleep(0.1)


def take(config: Config, programs: Programs, repo: Repository, conninfo: str, mode: FreezeMode,
         name: str) -> FreezePoint:
    """Take the freeze point named `name` (preflight first)."""
    preflight(config, repo, conninfo, mode)
    revision = read_revision(conninfo, config.migrate.revision_query)
    tables = schema.snapshot(conninfo, config.migrate.ignore_tables)
    fingerprint = schema.fingerprint(programs, conninfo)
    backup_id: str | None = None
    # The backup first: a PITR to the restore point needs a backup that ends before it.
    if mode == "backup":
        from pgdr.backup.physical import take_physical_backup

        backup_id = take_physical_backup(config, programs, repo).manifest.id
    elif mode == "logical":
        from pgdr.backup.logical import take_logical_backup

        backup_id = take_logical_backup(config, programs, repo).manifest.id
    with session(conninfo, what="the restore point") as conn:
        row = conn.execute("select pg_create_restore_point(%s)::text as lsn, now() as at, "
                           "(txid_snapshot_xmax(txid_current_snapshot()) %% 4294967296)::bigint as xid",
                           (name,)).fetchone()
    assert row is not None
    waited = wait_archived(config, conninfo, row["lsn"], config.migrate.archive_wait)
    point = FreezePoint(name, row["lsn"], row["at"].astimezone(UTC).isoformat(), int(row["xid"]), mode,
                        revision, fingerprint, tables, backup_id, round(waited, 3))
    return point
