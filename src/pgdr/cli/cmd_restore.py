"""`pgdr restore` (point in time, to a new instance), `pgdr find-disaster`, `pgdr salvage`."""

from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from pgdr.cli import output
from pgdr.cli.context import AppContext
from pgdr.errors import UsageError

if TYPE_CHECKING:  # pydantic: imported by the commands that use it, not by `pgdr --help`
    from pgdr.repo.manifest import BackupManifest


def restore(
    ctx: typer.Context,
    target_dir: Annotated[Path | None, typer.Option("--target-dir", help="new, empty data directory")] = None,
    to_time: Annotated[str | None, typer.Option("--to-time", help="ISO time (no zone = local time)")] = None,
    to_lsn: Annotated[str | None, typer.Option("--to-lsn")] = None,
    to_xid: Annotated[str | None, typer.Option("--to-xid", help="up to and including this transaction")] = None,
    exclusive: Annotated[bool, typer.Option("--exclusive", help="stop just before the target")] = False,
    before_xid: Annotated[str | None, typer.Option("--before-xid", "--undo-xid",
                                                   help="just before this transaction committed")] = None,
    to_name: Annotated[str | None, typer.Option("--to-name", help="a restore point")] = None,
    latest: Annotated[bool, typer.Option("--latest", help="all the WAL the archive holds")] = False,
    immediate: Annotated[bool, typer.Option("--immediate", help="the backup's own consistent point")] = False,
    backup_id: Annotated[str | None, typer.Option("--backup", help="backup id (default: chosen)")] = None,
    port: Annotated[int | None, typer.Option("--port")] = None,
    pause: Annotated[bool, typer.Option("--pause", help="stay in recovery, paused, at the target")] = False,
    force: Annotated[bool, typer.Option("--force", help="use a backup whose verification failed")] = False,
    tablespace_map: Annotated[list[str] | None, typer.Option(
        "--tablespace-map", help="OID=PATH: put that tablespace there (empty or new folder); "
        "default TARGET_DIR/pg_tblspc_data/OID")] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
    into: Annotated[str | None, typer.Option("--into", help="logical backups: an existing EMPTY database "
                                                        "(DSN; '${NAME}' reads it from the environment)")]
    = None,
    database: Annotated[str | None, typer.Option("--database", help="logical --into: which dumped database")]
    = None,
    no_owner: Annotated[bool, typer.Option("--no-owner", help="logical: do not restore owners and grants")]
    = False,
    role: Annotated[str | None, typer.Option("--role", help="logical: pg_restore as this role")] = None,
    redis: Annotated[str | None, typer.Option("--redis", metavar="NAME", help="start a NEW redis-server from "
                                              "a snapshot of this [[redis]] (--backup ID, default newest)")]
    = None,
) -> None:
    """Restore to a point in time into a NEW instance that keeps running (local only);
    a logical backup (--backup ID) to a new instance or --into an empty database."""
    if redis is not None:
        from pgdr.cli import cmd_redis

        cmd_redis.restore(ctx.obj, redis, backup_id, target_dir, port, json_out)
        return
    from pgdr.restore.pitr import restore_to_point
    from pgdr.restore.recovery import RecoveryTarget

    obj: AppContext = ctx.obj
    if backup_id is not None:
        from pgdr.repo.manifest import find_backup

        chosen = find_backup(obj.repo, backup_id)
        if chosen.kind == "logical":
            _restore_logical(obj, chosen, target_dir, port, into, database, no_owner, role, json_out)
            return
    from pgdr.mode import require_physical_restore

    require_physical_restore(obj.config, obj.repo, "point-in-time restore", "restore a logical backup: "
                             "`pgdr restore --backup ID --target-dir DIR` (or --into DSN)")
    if target_dir is None:
        raise UsageError("--target-dir is required (a new, empty data directory)")

    given = [(k, v) for k, v in (("time", to_time), ("lsn", to_lsn), ("xid", to_xid), ("before", before_xid),
                                 ("name", to_name), ("latest", latest or None), ("immediate", immediate or None))
             if v is not None]
    if len(given) != 1:
        raise UsageError("give exactly one target: --to-time, --to-lsn, --to-xid, --before-xid, "
                         "--to-name, --latest or --immediate")
    kind, value = given[0]
    if kind in ("xid", "before"):
        from pgdr.restore.xid import parse_xid

        parse_xid(str(value), "--to-xid" if kind == "xid" else "--before-xid")  # bad input: one line, exit 2
    action: Literal["pause", "promote"] = "pause" if pause else "promote"
    if kind == "before":
        target = RecoveryTarget("xid", str(value), inclusive=False, action=action)
    elif kind in ("latest", "immediate"):
        target = RecoveryTarget(kind, None, action=action)  # type: ignore[arg-type]
    else:
        target = RecoveryTarget(kind, str(value), inclusive=not exclusive, action=action)  # type: ignore[arg-type]
    places: dict[str, Path] = {}
    for item in tablespace_map or []:
        oid, sep, path = item.partition("=")
        if not sep or not oid.strip().isdigit() or not path.strip():
            raise UsageError(f"--tablespace-map {item!r}: expected OID=PATH, e.g. 16384=/srv/ts1")
        places[oid.strip()] = Path(path.strip())
    with output.console.status("restoring…") if (sys.stdout.isatty() and not json_out) else nullcontext():
        try:
            from pgdr.repo.remote import restore_range

            repo = obj.repo_with_wal(lambda r: restore_range(r, backup_id, target))
            result = restore_to_point(obj.config, obj.programs, repo, target, target_dir,
                                      backup_id=backup_id, port=port, force=force, tablespace_map=places)
        finally:
            obj.drop_cached_backups()
    data = result.as_dict()
    if json_out:
        output.print_json(data)
        return
    reached = result.reached
    if result.chosen_because:
        output.console.print(f"backup {result.backup_id}: {result.chosen_because}")
    output.console.print(
        f"restored backup {result.backup_id} to {target.kind} {target.value or ''} → {result.state}: "
        f"last transaction {reached.get('xact_time')}, LSN {reached.get('lsn')}, timeline {reached.get('timeline')}")
    if reached.get("stopped"):
        output.console.print(f"  {reached['stopped']}")
    output.console.print("  " + ", ".join(f"{k} {v:.1f}s" for k, v in result.phases.items())
                         + f", total {sum(result.phases.values()):.1f}s")
    output.console.print(f"connect: psql \"{result.conninfo}\"  (listens on 127.0.0.1:{result.port} and "
                         f"{result.socket_dir})")
    output.console.print(f"stop it: pg_ctl -D {result.data_dir} stop    record: {result.record_path}")
    _say_prepared(result.prepared, result.conninfo)
    for note in result.notes:
        output.error_line(f"note: {note}")


def _say_prepared(prepared: list[dict[str, Any]], conninfo: str) -> None:
    """Each prepared transaction the restored server holds, and the two ways to end it:
    pgdr never chooses (an undo wants ROLLBACK PREPARED, a restore to a point may not)."""
    import shlex

    from pgdr.pg.conninfo import make_conninfo, parse

    for p in prepared:
        held = f", holding {', '.join(p['locks'])}" if p["locks"] else ""
        output.error_line(f"warning: prepared transaction {p['gid']!r} (xid {p['xid']}, owner {p['owner']}, "
                          f"database {p['database']}) is still prepared on the restored server{held}; "
                          "pgdr leaves it as it was")
        dsn = shlex.quote(make_conninfo(**{**parse(conninfo), "dbname": p["database"]}))
        output.error_line(f"  undo it: psql {dsn} -c {shlex.quote(p['rollback'])}   "
                          f"(or finish it: {p['commit']})")


def _restore_logical(obj: AppContext, manifest: BackupManifest, target_dir: Path | None, port: int | None,
                     into: str | None, database: str | None, no_owner: bool, role: str | None,
                     json_out: bool) -> None:
    from pgdr.restore.logical import restore_logical_into, restore_logical_new

    if (target_dir is None) == (into is None):
        raise UsageError("a logical backup restores either to a new instance (--target-dir DIR) "
                         "or into an empty database (--into DSN)")
    if into is not None:
        from pgdr.config import expand_env_refs

        into = expand_env_refs(into, "--into")
    with output.console.status("restoring…") if (sys.stdout.isatty() and not json_out) else nullcontext():
        if into is not None:
            result = restore_logical_into(obj.config, obj.programs, obj.repo, manifest, into,
                                          database=database, no_owner=no_owner, role=role)
        else:
            assert target_dir is not None
            result = restore_logical_new(obj.config, obj.programs, obj.repo, manifest, target_dir,
                                         port=port, no_owner=no_owner, role=role)
    if json_out:
        output.print_json(result.as_dict())
        return
    output.console.print(f"restored logical backup {result.backup_id}: "
                         + ", ".join(f"{db} {s:.1f}s" for db, s in result.databases.items())
                         + f", total {result.seconds:.1f}s")
    for warning in result.warnings:
        output.error_line(f"warning: {warning}")
    if result.data_dir is not None:
        output.console.print(f"connect: psql \"{result.conninfo}\"  (listens on 127.0.0.1:{result.port} and "
                             f"{result.socket_dir})")
        output.console.print(f"stop it: pg_ctl -D {result.data_dir} stop    record: {result.record_path}")
    else:
        output.console.print(f"into {result.conninfo}    record: {result.record_path}")


def find_disaster(
    ctx: typer.Context,
    table: Annotated[str | None, typer.Option("--table", help='table, schema.table or "Quoted"."Names"')] = None,
    since: Annotated[str | None, typer.Option("--since", help="only transactions committed at or after this ISO "
                                              "time or LSN; WAL before it is not read")] = None,
    until: Annotated[str | None, typer.Option("--until", help="only transactions committed at or before this ISO "
                                              "time or LSN; WAL after it is not read")] = None,
    kinds: Annotated[str, typer.Option("--kinds", help="comma list of drop,truncate,delete,update")]
    = "drop,truncate,delete,update",
    min_rows: Annotated[int, typer.Option("--min-rows", help="DELETE/UPDATE: at least this many rows")] = 100,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List the transactions in the archived WAL that dropped, truncated, or deleted/updated many rows."""
    from pgdr.pg.ident import parse_table
    from pgdr.restore.walscan import KINDS, find_disasters, parse_bound

    wanted = tuple(k.strip() for k in kinds.split(",") if k.strip())
    bad = [k for k in wanted if k not in KINDS]
    if bad:
        raise UsageError(f"unknown kind {bad[0]!r}; use {','.join(KINDS)}")
    name = parse_table(table) if table is not None else None
    start, end = (parse_bound(since) if since else None), (parse_bound(until) if until else None)
    if start and end and ((start.time and end.time and end.time < start.time)
                          or (start.lsn is not None and end.lsn is not None and end.lsn < start.lsn)):
        raise UsageError("--until is before --since")
    obj: AppContext = ctx.obj
    with output.progress_bar("reading WAL", enabled=sys.stderr.isatty() and not json_out) as progress:
        try:
            from pgdr.repo.remote import scan_range

            repo = obj.repo_with_wal(lambda r: scan_range(r, start, end))
            result = find_disasters(obj.programs, repo, table=name, since=start, until=end,
                                    kinds=wanted, min_rows=min_rows, progress=progress)
        finally:
            obj.drop_cached_backups()
    if json_out:
        output.print_json(result.as_dict())
    else:
        output.table(f"{len(result.disasters)} suspicious transactions in {result.segments} WAL segments "
                     f"({result.seconds:.1f}s)",
                     ["xid", "commit time", "LSN", "kind", "database", "table", "rows"],
                     [(d.shown_xid, d.commit_time.isoformat(sep=" ", timespec="seconds"), d.lsn, d.kind,
                       d.database or "", d.table, "all" if d.rows is None else d.rows) for d in result.disasters])
        if result.disasters:
            import shlex

            last = result.disasters[-1]
            output.console.print(f"undo one: pgdr restore --before-xid {last.shown_xid} --target-dir DIR", highlight=False)
            if not last.table.startswith("(relation"):
                output.console.print(f"then: pgdr salvage --from RESTORED_DSN --into PRIMARY_DSN --table "
                                     f"{shlex.quote(last.table)}", highlight=False, markup=False)
    for err in result.errors:
        output.error_line(f"warning: {err}")
    for note in result.notes:
        output.error_line(f"note: {note}")


def salvage_cmd(
    ctx: typer.Context,
    from_dsn: Annotated[str, typer.Option("--from", help="the restored instance (conninfo)")],
    into_dsn: Annotated[str, typer.Option("--into", help="the live primary (conninfo)")],
    table: Annotated[str, typer.Option("--table", help='table, schema.table or "Quoted"."Names"')],
    where: Annotated[str | None, typer.Option("--where", help="SQL condition on the source rows")] = None,
    as_table: Annotated[str | None, typer.Option("--as", help="new table name (default "
                                                 "TABLE_recovered_<time>)")] = None,
    merge: Annotated[bool, typer.Option("--merge", help="insert rows whose primary key is missing")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="do not ask before writing into the live table")] = False,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Copy rows from a restored instance into the primary (new table by default; --merge into T)."""
    from pgdr.pg.conninfo import mask
    from pgdr.restore.salvage import salvage

    if merge and not yes:
        if not sys.stdin.isatty():
            raise UsageError("--merge writes into the live table: confirm with --yes")
        typer.confirm(f"insert missing rows into {table} on {mask(into_dsn)}?", abort=True)
    result = salvage(from_dsn, into_dsn, table, where=where, as_table=as_table, merge=merge)
    if json_out:
        output.print_json(result.as_dict())
        return
    if merge:
        output.console.print(f"merged {result.source_table} into {result.target_table}: "
                             f"{result.inserted} rows inserted, {result.skipped} already present "
                             f"({result.seconds:.1f}s)")
    else:
        output.console.print(f"copied {result.copied} rows of {result.source_table} into new table "
                             f"{result.target_table} ({result.seconds:.1f}s); {result.source_table} untouched")



def register(app: typer.Typer) -> None:
    app.command("restore")(restore)
    app.command("find-disaster")(find_disaster)
    app.command("salvage")(salvage_cmd)
