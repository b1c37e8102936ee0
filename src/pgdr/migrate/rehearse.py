"""`pgdr migrate --rehearse -- COMMAND`: the migration on a copy, before production.

The newest verified physical backup is restored with all archived WAL (after waiting
for the archive to reach the primary's current position) into a scratch instance that
listens on a private unix socket and 127.0.0.1 only. The command gets the copy's libpq
URL in one environment variable ([migrate] url_env, DATABASE_URL by default) - never
in argv - and every other variable that could name a server (the libpq ones, and
DATABASE_URL when url_env is another) is removed from its environment. While it runs, pg_locks is sampled (every 50 ms) to find the locks it took
and how long it held them - a lock held for less than that can go unseen, and does not
matter for production either; afterwards the tables it rewrote (new relfilenode) and the rows it wrote
are counted. The primary's schema fingerprint is taken before and after: a rehearsal
that changed production says so. The scratch instance is always removed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from psycopg import sql

from pgdr.config import Config
from pgdr.errors import PgdrError
from pgdr.migrate import freeze as fz
from pgdr.migrate import records, schema
from pgdr.migrate.run import command_env, new_record, run_command
from pgdr.pg import sql as queries
from pgdr.pg.connect import session
from pgdr.pg.conninfo import parse, with_params
from pgdr.pg.programs import Programs
from pgdr.repo.layout import Repository
from pgdr.repo.manifest import list_backups
from pgdr.repo.records import verification_status
from pgdr.restore.pitr import restore_to_point
from pgdr.restore.recovery import RecoveryTarget
from pgdr.restore.scratch import Scratch, reap_stale, scratch_root
from pgdr.runbook.timeline import Timeline


class LockSampler(threading.Thread):
    """Samples the copy's granted relation locks every interval until stopped."""

    def __init__(self, conninfo: str, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.conninfo = conninfo
        self.interval = interval
        self.stop = threading.Event()
        self.seen: dict[tuple[str, str], list[float]] = {}   # (relation, mode) -> [first, last]
        self.error: str | None = None

    def run(self) -> None:
        try:
            with session(self.conninfo, what="the rehearsal's locks", statement_timeout=5) as conn:
                while not self.stop.is_set():
                    now = time.monotonic()
                    for row in conn.execute(queries.load("migrate_locks")):
                        span = self.seen.setdefault((row["what"], row["mode"]), [now, now])
                        span[1] = now
                    self.stop.wait(self.interval)
        except PgdrError as exc:
            self.error = exc.message

    def held(self) -> list[dict[str, Any]]:
        """Longest held first; a lock seen in one sample only counts as one interval."""
        rows = [{"relation": what, "mode": mode, "held_s": round(last - first + self.interval, 3)}
                for (what, mode), (first, last) in self.seen.items()]
        return sorted(rows, key=lambda r: -r["held_s"])


def newest_verified(repo: Repository) -> str:
    for backup in reversed(list_backups(repo, "physical")):
        if verification_status(repo, backup.id) == "verified":
            return backup.id
    raise PgdrError("no verified physical backup to rehearse on",
                    hint="verify one first: `pgdr verify latest`")


def copy_url(conninfo: str) -> str:
    """A libpq URL for the copy: its private socket folder, no password (pgdr's local rule)."""
    p = parse(conninfo)
    return (f"postgresql://{quote(p.get('user', 'postgres'), safe='')}@/{quote(p.get('dbname', 'postgres'), safe='')}"
            f"?host={quote(p['host'], safe='')}&port={p['port']}")


def _tables(conninfo: str) -> dict[int, dict[str, Any]]:
    with session(conninfo, what="the copy's tables") as conn:
        return {int(r["oid"]): dict(r) for r in conn.execute(queries.load("migrate_tables"))}


def _rewrites(conninfo: str, before: dict[int, dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """Tables the command rewrote (new relfilenode) with their row counts; rows written."""
    after = _tables(conninfo)
    rewritten: list[dict[str, Any]] = []
    with session(conninfo, what="the rewritten tables' rows", statement_timeout=0) as conn:
        for oid, row in after.items():
            old = before.get(oid)
            if old is not None and old["filenode"] != row["filenode"]:
                schema_name, _, table = row["name"].partition(".")
                counted = conn.execute(sql.SQL("select count(*) as n from {}").format(
                    sql.Identifier(schema_name, table))).fetchone()
                rewritten.append({"table": row["name"], "rows": int(counted["n"]) if counted else 0})
    written = sum(int(r["written"]) - int(before.get(oid, {}).get("written", 0)) for oid, r in after.items())
    return rewritten, written


def rehearse(config: Config, programs: Programs, repo: Repository, argv: Sequence[str], *,
             cwd: Path | None = None, on_line: Callable[[str], None] | None = None) -> dict[str, Any]:
    cwd = cwd or Path.cwd()
    primary = fz.target_conninfo(config)
    record = new_record(argv, cwd, primary, rehearsal=True)
    timeline = Timeline()
    database = parse(primary).get("dbname") or "postgres"
    backup_id = newest_verified(repo)
    with timeline.step("primary fingerprint"):
        primary_before = schema.fingerprint(programs, primary)
    with timeline.step("archive to now") as step:
        with session(primary, what="the current WAL position") as conn:
            row = conn.execute("select pg_current_wal_lsn()::text as lsn").fetchone()
        assert row is not None
        fz.wait_archived(config, primary, row["lsn"], config.migrate.archive_wait)
        step.detail = f"LSN {row['lsn']}"
    try:
        root = scratch_root(config)
        reap_stale(root)
        scratch = Scratch.create(root, "rehearse", programs)
        try:
            with timeline.step("restore copy") as step:
                restored = restore_to_point(config, programs, repo, RecoveryTarget("latest", None),
                                            scratch.folder / "data", backup_id=backup_id)
                copy = with_params(restored.conninfo, dbname=database,
                                   user=parse(primary).get("user") or parse(restored.conninfo).get("user"))
                step.detail = f"backup {backup_id} + WAL to LSN {restored.reached.get('lsn')}"
                step.evidence["seconds"] = restored.phases
            revision = fz.read_revision(copy, config.migrate.revision_query)
            before = schema.snapshot(copy, config.migrate.ignore_tables)
            tables_before = _tables(copy)
            sampler = LockSampler(copy)
            with timeline.step("migration on the copy", record["command"]) as step:
                sampler.start()
                try:
                    env = command_env(config, {config.migrate.url_env: copy_url(copy)}, isolate=True)
                    result = run_command(config, argv, env, cwd, on_line)
                finally:
                    sampler.stop.set()
                    sampler.join(10)
                step.evidence.update(result.as_dict())
                if not result.ok:
                    step.result = "failed"
                    step.detail = result.error or ""
            with timeline.step("measure"):
                rewritten, written = _rewrites(copy, tables_before)
                changes = schema.diff(before, schema.snapshot(copy, config.migrate.ignore_tables))
                revision_after = fz.read_revision(copy, config.migrate.revision_query)
        finally:
            problems = scratch.destroy()
        with timeline.step("primary untouched") as step:
            primary_after = schema.fingerprint(programs, primary)
            if primary_after != primary_before:
                step.result = "failed"
                step.detail = "the primary's schema fingerprint CHANGED during the rehearsal"
        record.update(outcome="ok" if result.ok else "failed", **result.as_dict(), duration_s=round(result.seconds, 3),
                      backup_id=backup_id, revision_before=revision, revision_after=revision_after,
                      diff=changes.as_dict(), locks=sampler.held(), lock_sampling_error=sampler.error,
                      rewritten=rewritten, rows_rewritten=sum(r["rows"] for r in rewritten), rows_written=written,
                      primary_fingerprint_before=primary_before, primary_fingerprint_after=primary_after,
                      primary_untouched=primary_after == primary_before, cleanup_problems=problems,
                      finished_at=datetime.now(UTC).isoformat(), timeline=timeline.as_list())
    except BaseException as exc:
        record.update(outcome="failed", error=getattr(exc, "message", str(exc)) or type(exc).__name__,
                      finished_at=datetime.now(UTC).isoformat(), timeline=timeline.as_list())
        _save(repo, record)
        raise
    _save(repo, record)
    return record


def _save(repo: Repository, record: dict[str, Any]) -> None:
    """Written once, at the end: its id is the end's time, after the restore record it holds."""
    record["id"] = records.new_id(records.KIND)
    records.write(repo, record)
