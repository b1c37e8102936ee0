"""`pgdr backup`, `pgdr list`, `pgdr expire`."""

from __future__ import annotations

import sys
from contextlib import nullcontext
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pgdr.cli import output
from pgdr.cli.context import AppContext
from pgdr.errors import UsageError

if TYPE_CHECKING:
    from pgdr.config import RetentionConfig
    from pgdr.repo.layout import Repository


def backup(
    ctx: typer.Context,
    logical: Annotated[bool, typer.Option("--logical", help="pg_dump (directory format) instead of a base backup")] = False,
    incremental: Annotated[bool, typer.Option("--incremental", help="PostgreSQL 17+: only what changed since "
                                              "the newest backup (pg_basebackup --incremental)")] = False,
    json_out: Annotated[bool, typer.Option("--json")] = False,
    fmt: Annotated[str | None, typer.Option("--format", help="logical: directory (parallel) or custom "
                                                          "(one pg_dump -Fc file per database)")] = None,
    redis: Annotated[bool, typer.Option("--redis", help="an RDB snapshot of [[redis]] NAME (default: each)")]
    = False,
    redis_name: Annotated[str | None, typer.Argument(help="with --redis: which [[redis]]")]
    = None,
) -> None:
    """Take a physical base backup (or a logical dump) of the primary into the repository."""
    obj: AppContext = ctx.obj
    if redis or redis_name is not None:
        if not redis or logical or fmt is not None:
            raise UsageError("a NAME is for Redis: `pgdr backup --redis [NAME]` (without --logical/--format)")
        from pgdr.cli import cmd_redis

        cmd_redis.backup(obj, redis_name, json_out)
        return
    if fmt is not None and (not logical or fmt not in ("directory", "custom")):
        raise UsageError("--format is for logical backups: --logical --format directory|custom")
    if incremental and logical:
        raise UsageError("--incremental is for physical backups; drop --logical")
    if not logical:
        from pgdr.cli.physical_backup import physical_backup

        physical_backup(obj, incremental=incremental, json_out=json_out)
        return
    from pgdr.backup.logical import take_logical_backup
    from pgdr.cli.physical_backup import print_summary

    with output.console.status("backing up…") if (sys.stdout.isatty() and not json_out) else nullcontext():
        result = take_logical_backup(obj.config, obj.programs, obj.repo, fmt)
    print_summary(result, json_out)


def list_cmd(ctx: typer.Context, json_out: Annotated[bool, typer.Option("--json")] = False,
             redis: Annotated[str | None, typer.Option("--redis", metavar="NAME",
                                                       help="snapshots of this [[redis]] instead")] = None) -> None:
    """Backups in the repository (the repository is the source of truth)."""
    from pgdr.repo.records import verification_status

    obj: AppContext = ctx.obj
    if redis is not None:
        from pgdr.cli import cmd_redis

        cmd_redis.list_snapshots(obj, redis, json_out)
        return
    from pgdr.repo.manifest import scan_backups

    backups, damaged = scan_backups(obj.repo)
    rows: list[dict[str, Any]] = [{"id": b.id, "kind": b.display_kind, "parent": b.parent, "stop_time": b.stop_time.isoformat(timespec="seconds"),
             "start_lsn": b.start_lsn, "stop_lsn": b.stop_lsn, "timeline": b.timeline,
             "bytes_on_disk": b.bytes_on_disk, "bytes_logical": b.bytes_logical,
             "duration_s": b.duration_s, "verified": verification_status(obj.repo, b.id)}
            for b in backups]
    # A backup whose pgdr.json cannot be read is listed as damaged, never left out.
    rows += [{"id": d.id, "kind": None, "parent": None, "stop_time": None, "start_lsn": None, "stop_lsn": None,
              "timeline": None, "bytes_on_disk": None, "bytes_logical": None, "duration_s": None,
              "verified": "damaged", "problem": d.problem} for d in damaged]
    if json_out:
        output.print_json(rows)
        return
    output.table(f"{len(rows)} backup(s) in {obj.repo.root}",
                 ["id", "kind", "time", "LSN range", "size", "duration", "verified"],
                 [[r["id"], r["kind"] + (f" of {r['parent']}" if r["parent"] else ""), r["stop_time"], f"{r['start_lsn']}–{r['stop_lsn']}",
                   output.human_bytes(r["bytes_on_disk"]), f"{r['duration_s']:.1f}s", r["verified"]]
                  for r in rows if r["kind"] is not None]
                 + [[r["id"], "?", "-", "-", "-", "-", f"DAMAGED: {r['problem']}"]
                    for r in rows if r["kind"] is None])


def expire(
    ctx: typer.Context,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="show what would be removed")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="remove without asking")] = False,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Apply retention (count and age from the config); never removes WAL a kept backup needs."""
    obj: AppContext = ctx.obj
    repo = obj.repo  # an object store's WAL listing decides what WAL can go (nothing fetched)
    try:
        _expire(repo, obj.config.retention, dry_run=dry_run, yes=yes, json_out=json_out)
    finally:
        obj.drop_cached_backups()


def _expire(repo: Repository, policy: RetentionConfig, *, dry_run: bool, yes: bool, json_out: bool) -> None:
    from pgdr.repo.retention import apply_expire, plan_expire

    plan = plan_expire(repo, policy)
    if json_out:
        output.print_json({**plan.as_dict(), "dry_run": dry_run or not (yes or not plan.remove and not plan.wal_remove)})
    else:
        output.table("retention plan", ["backup", "kind", "age", "action"],
                     [[b.id, b.kind, f"{b.age_seconds / 3600:.1f}h", "keep"] for b in plan.keep]
                     + [[b.id, b.kind, f"{b.age_seconds / 3600:.1f}h", "REMOVE"] for b in plan.remove])
        output.console.print(f"WAL: remove {len(plan.wal_remove)} segment(s) before "
                             f"{plan.wal_keep_from or '-'}; frees {output.human_bytes(plan.bytes_freed)}")
        for note in plan.notes:
            output.console.print(f"note: {note}")
    if dry_run or (not plan.remove and not plan.wal_remove):
        return
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError("expire removes backups: pass --yes to confirm (or --dry-run to look)")
        typer.confirm("remove these backups and WAL?", abort=True)
    done = apply_expire(repo, plan)
    if not json_out:
        output.console.print(f"removed {len(done.remove)} backup(s) and {len(done.wal_remove)} WAL segment(s)")
    for note in done.notes:
        output.error_line(note)


def register(app: typer.Typer) -> None:
    app.command("backup")(backup)
    app.command("list")(list_cmd)
    app.command("expire")(expire)

