"""Logical backups: pg_dump in directory format with parallel jobs, plus exact row
counts taken in the very snapshot the dump reads.

One transaction per database exports its snapshot; pg_dump runs with --snapshot
while the same transaction counts every table. The counts therefore describe
exactly what the dump holds, whatever is written meanwhile, and the counting runs
beside the dump instead of after it.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

from psycopg import sql

from pgdr.backup.physical import SOURCE_FACTS_SQL, BackupResult
from pgdr.backup.publish import pending_backup
from pgdr.backup.relmap import connectable_databases
from pgdr.config import Config
from pgdr.fsutil import fsync_tree, tree_size
from pgdr.pg.connect import connect, query_one
from pgdr.pg.conninfo import split_password, with_params
from pgdr.pg.probe import find_primary
from pgdr.pg.process import dir_progress
from pgdr.pg.programs import Programs
from pgdr.pg.sql import load
from pgdr.repo import digest
from pgdr.repo.layout import Repository
from pgdr.repo.manifest import (
    BackupManifest,
    FileEntry,
    LogicalDatabase,
)


def take_logical_backup(config: Config, programs: Programs, repo: Repository,
                        fmt: str | None = None) -> BackupResult:
    """fmt: "directory" (pg_dump -Fd -j, the default) or "custom" (one pg_dump -Fc file
    per database, to take elsewhere)."""
    fmt = fmt or config.backup.logical_format
    primary = find_primary(config)
    conninfo = with_params(primary.node.conninfo, application_name="pgdr_dump")
    facts = query_one(conninfo, SOURCE_FACTS_SQL)
    repo.claim(facts["system_identifier"], facts["server_version_num"], facts["wal_segment_size"])
    programs = programs.for_server(version_num=facts["server_version_num"], what=primary.node.name)
    databases = config.backup.logical_databases or connectable_databases(conninfo)

    with pending_backup(repo, "logical") as pending:
        dumped: dict[str, LogicalDatabase] = {}
        lsns = []
        for dbname in databases:
            dumped[dbname] = _dump_database(config, programs, with_params(conninfo, dbname=dbname),
                                            dbname, pending.partial, fmt)
            lsns.append(dumped[dbname].snapshot_lsn)
        plain, password = split_password(conninfo)
        programs.run("pg_dumpall", ["-d", plain, "--globals-only", "--no-role-passwords"],
                     password=password, stdout_path=pending.partial / "globals.sql",
                     as_server_user=False, stall_timeout=config.pg.stall_timeout,
                     progress=dir_progress(pending.partial), stalled_what="pg_dumpall --globals-only")
        fsync_tree(pending.partial)
        files = {str(p.relative_to(pending.partial)):
                 FileEntry.of(p.stat().st_size, digest.file_digest(p))
                 for p in sorted(pending.partial.rglob("*")) if p.is_file()}
        duration = pending.elapsed
        manifest = BackupManifest(
            id=pending.id, kind="logical", cluster=config.cluster.name,
            source_node=primary.node.name, start_time=pending.started, stop_time=datetime.now(UTC),
            duration_s=round(duration, 3), start_lsn=lsns[0] if lsns else "0/0",
            stop_lsn=lsns[-1] if lsns else "0/0", timeline=0,
            pg_version=str(facts["server_version"]),
            pg_version_num=int(facts["server_version_num"]),
            system_identifier=str(facts["system_identifier"]),
            wal_segment_size=int(facts["wal_segment_size"]),
            data_checksums=bool(facts["data_checksums"]),
            compression=f"gzip:{config.backup.logical_compression}",
            bytes_on_disk=tree_size(pending.partial),
            bytes_logical=sum(d.bytes for d in dumped.values()),
            files=files, databases=dumped,
        )
        pending.publish(manifest)
    return BackupResult(manifest, pending.final, pending.removed_partials)


def _dump_database(config: Config, programs: Programs, conninfo: str, dbname: str,
                   partial: Path, fmt: str = "directory") -> LogicalDatabase:
    target = partial / (f"db-{dbname}.dump" if fmt == "custom" else f"db-{dbname}")
    layout = ["-Fc"] if fmt == "custom" else ["-Fd", "-j", str(config.backup.logical_jobs)]
    holder = connect(conninfo, autocommit=False, statement_timeout=0)  # counts every table
    try:
        holder.execute("set transaction isolation level repeatable read, read only")
        row = holder.execute(
            "select pg_export_snapshot() as snap, pg_current_wal_lsn()::text as lsn, "
            "pg_database_size(current_database()) as size").fetchone()
        assert row is not None
        plain, password = split_password(conninfo)
        failure: list[BaseException] = []

        def dump() -> None:
            try:
                programs.run("pg_dump", [
                    "-d", plain, *layout,
                    "-Z", str(config.backup.logical_compression), "--snapshot", row["snap"],
                    "-f", str(target)], password=password, stall_timeout=config.pg.stall_timeout,
                    progress=dir_progress(target), stalled_what=f"nothing written to {target}")
            except BaseException as exc:  # re-raised in the caller's thread
                failure.append(exc)

        worker = threading.Thread(target=dump, name=f"pg_dump {dbname}")
        worker.start()
        counts: dict[str, int] = {}
        for table in holder.execute(load("user_tables")).fetchall():
            ident = sql.Identifier(table["schema_name"], table["name"])
            got = holder.execute(sql.SQL("select count(*) as n from only {}").format(ident)).fetchone()
            assert got is not None
            counts[f"{table['schema_name']}.{table['name']}"] = int(got["n"])
        worker.join()
        if failure:
            raise failure[0]
    finally:
        holder.rollback()
        holder.close()
    return LogicalDatabase(directory=target.name, bytes=int(row["size"]),
                           snapshot_lsn=row["lsn"], tables=counts)
