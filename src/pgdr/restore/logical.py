"""Restoring a logical backup: to a NEW local instance, or into an existing EMPTY database.

New instance (`pgdr restore --backup ID --target-dir DIR`): initdb as the server
user, pgdr's access rule on a private socket (restore/access.py), the globals (roles,
tablespaces; `already exists` is expected for the bootstrap role), then each database
with pg_restore -j. It is left running, like a physical restore.

Into a DSN (`--into DSN`): the database must have no user table, so nothing is ever
restored over data; `--no-owner` / `--role` for managed targets where the dump's
roles do not exist.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from psycopg import sql

from pgdr.config import Config
from pgdr.errors import PgdrError, UsageError
from pgdr.pg.connect import session
from pgdr.pg.conninfo import mask, split_password
from pgdr.pg.instance import Instance, free_port
from pgdr.pg.programs import Programs
from pgdr.pg.sql import load
from pgdr.repo.layout import Repository
from pgdr.repo.manifest import BackupManifest, backup_dir
from pgdr.repo.records import save_record
from pgdr.restore.access import grant_pgdr_access
from pgdr.restore.pitr import _prepare_dir, _socket_dir_for


@dataclass
class LogicalRestoreResult:
    backup_id: str
    conninfo: str
    databases: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    data_dir: Path | None = None
    port: int | None = None
    socket_dir: Path | None = None
    warnings: list[str] = field(default_factory=list)
    record_path: Path | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"backup_id": self.backup_id, "kind": "logical", "conninfo": self.conninfo,
                "databases": self.databases, "seconds": round(self.seconds, 3),
                "data_dir": str(self.data_dir) if self.data_dir else None, "port": self.port,
                "socket_dir": str(self.socket_dir) if self.socket_dir else None,
                "warnings": self.warnings,
                "record": str(self.record_path) if self.record_path else None,
                "stop_with": f"pg_ctl -D {self.data_dir} stop" if self.data_dir else None}


def _owner_args(no_owner: bool, role: str | None) -> list[str]:
    return (["--no-owner", "--no-privileges"] if no_owner else []) + (["--role", role] if role else [])


def restore_logical_new(config: Config, programs: Programs, repo: Repository, manifest: BackupManifest,
                        target_dir: Path, *, port: int | None = None, no_owner: bool = False,
                        role: str | None = None) -> LogicalRestoreResult:
    target_dir = target_dir.resolve()
    _prepare_dir(target_dir, programs)
    t0 = time.monotonic()
    target_dir.mkdir(mode=0o700)
    programs.run_as.chown(target_dir)
    socket_dir = _socket_dir_for(target_dir)
    instance = Instance("restore", target_dir, port or free_port(), socket_dir, programs,
                        log_file=target_dir / "pgdr-restore.log")
    folder = backup_dir(repo, manifest.id)
    try:
        programs.run("initdb", ["-D", str(target_dir), "-U", "postgres", "--auth-local=peer",
                                "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C",
                                "--data-checksums", "--no-instructions"], timeout=300)
        if socket_dir != target_dir:
            socket_dir.mkdir(mode=0o700, exist_ok=True)
            programs.run_as.chown(socket_dir)
        settings: dict[str, str | int] = {
            "port": instance.port, "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(socket_dir), "unix_socket_permissions": "0700",
            "cluster_name": "restore"}
        settings.update(grant_pgdr_access(target_dir, socket_dir, programs.run_as))
        instance.configure(settings)
        instance.start(timeout=120)
        result = LogicalRestoreResult(manifest.id, instance.conninfo(), data_dir=target_dir,
                                      port=instance.port, socket_dir=socket_dir)
        globals_sql = folder / "globals.sql"
        if globals_sql.exists():
            res = programs.run("psql", ["-X", "-q", "-h", str(socket_dir), "-p", str(instance.port),
                                        "-U", "postgres", "-d", "postgres", "-f", str(globals_sql)],
                               timeout=600, as_server_user=False)
            result.warnings += [ln.split("ERROR:", 1)[1].strip() for ln in res.stderr.splitlines()
                                if "ERROR:" in ln and "already exists" not in ln]
        for dbname, dump in manifest.databases.items():
            t1 = time.monotonic()
            with session(instance.conninfo()) as conn:
                if conn.execute("select 1 from pg_database where datname = %s", (dbname,)).fetchone() is None:
                    conn.execute(sql.SQL("create database {} template template0").format(sql.Identifier(dbname)))
            programs.run("pg_restore", [
                "-h", str(socket_dir), "-p", str(instance.port), "-U", "postgres", "-d", dbname,
                "-j", str(config.backup.logical_jobs), "--exit-on-error", *_owner_args(no_owner, role),
                str(folder / dump.directory)], timeout=24 * 3600,
                as_server_user=False)  # the dump is readable by pgdr's user only
            result.databases[dbname] = round(time.monotonic() - t1, 3)
    except BaseException:
        try:
            instance.stop(mode="immediate", timeout=30)
        except PgdrError:
            pass
        shutil.rmtree(target_dir, ignore_errors=True)
        if socket_dir != target_dir:
            shutil.rmtree(socket_dir, ignore_errors=True)
        raise
    result.seconds = time.monotonic() - t0
    result.record_path = save_record(repo, "restore", {**result.as_dict(), "passed": True})
    return result


def restore_logical_into(config: Config, programs: Programs, repo: Repository, manifest: BackupManifest,
                         dsn: str, *, database: str | None = None, no_owner: bool = False,
                         role: str | None = None) -> LogicalRestoreResult:
    source = _choose_database(manifest, database)
    t0 = time.monotonic()
    with session(dsn) as conn:
        tables = conn.execute(load("user_tables")).fetchall()
    if tables:
        raise UsageError(f"refusing to restore into {mask(dsn)}: it already has {len(tables)} user table(s) "
                         f"(first {tables[0]['schema_name']}.{tables[0]['name']})",
                         hint="restore into a new, empty database (createdb), or to a new instance "
                              "with --target-dir")
    plain, password = split_password(dsn)
    dump = manifest.databases[source]
    programs.run("pg_restore", ["-d", plain, "-j", str(config.backup.logical_jobs), "--exit-on-error",
                                *_owner_args(no_owner, role), str(backup_dir(repo, manifest.id) / dump.directory)],
                 password=password, timeout=24 * 3600, as_server_user=False)
    result = LogicalRestoreResult(manifest.id, mask(plain), {source: round(time.monotonic() - t0, 3)},
                                  seconds=time.monotonic() - t0)
    result.record_path = save_record(repo, "restore", {**result.as_dict(), "into": mask(dsn), "passed": True})
    return result


def _choose_database(manifest: BackupManifest, database: str | None) -> str:
    if database is not None:
        if database not in manifest.databases:
            raise UsageError(f"backup {manifest.id} has no database {database!r} "
                             f"(has: {', '.join(manifest.databases)})")
        return database
    with_tables = [name for name, d in manifest.databases.items() if d.tables]
    if len(with_tables) == 1:
        return with_tables[0]
    raise UsageError(f"backup {manifest.id} holds several databases ({', '.join(manifest.databases)}): "
                     "choose one with --database")
