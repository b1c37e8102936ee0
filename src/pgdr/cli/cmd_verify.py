"""`pgdr verify` and the hidden `pgdr wal-fetch` (restore_command)."""

from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import typer

from pgdr.cli import output
from pgdr.cli.context import AppContext
from pgdr.errors import UsageError


def verify(
    ctx: typer.Context,
    backup_id: Annotated[str, typer.Argument(help="backup id, or 'latest'")] = "latest",
    json_out: Annotated[bool, typer.Option("--json")] = False,
    keep: Annotated[bool, typer.Option("--keep", help="leave the scratch instance running for a look")] = False,
    port: Annotated[int | None, typer.Option("--port", help="the scratch instance's port (default: verify.ports "
                                                            "or any free port)")] = None,
    redis: Annotated[str | None, typer.Option("--redis", metavar="NAME",
                                              help="verify a snapshot of this [[redis]] instead")] = None,
) -> None:
    """Restore a backup into a scratch instance and prove it (exit 1 when any check fails)."""
    if redis is not None:
        from pgdr.cli import cmd_redis

        cmd_redis.verify(ctx.obj, redis, backup_id, json_out)
        return
    from pgdr.restore.verify import verify_backup

    obj: AppContext = ctx.obj
    # SIGTERM (systemd, a CI timeout) cleans up like Ctrl-C: cli/signals.py unwinds through finally.
    with output.console.status(f"verifying {backup_id}…") if (sys.stdout.isatty() and not json_out) \
            else nullcontext():
        repo = obj.repo_with_wal()
        try:
            result = verify_backup(obj.config, obj.programs, repo, backup_id, keep=keep, port=port)
        finally:
            obj.drop_cached_backups()
    if json_out:
        output.print_json(result.as_dict())
    else:
        output.checks_table(f"verify {result.backup_id} ({result.kind}): "
                            f"{'PASSED' if result.passed else 'FAILED'}",
                            [c.check for c in result.checks])
        output.console.print(
            f"restore {result.restore_s:.1f}s, total {result.total_s:.1f}s, "
            f"backup {output.human_bytes(result.backup_bytes)}; record {result.record_path}")
        if result.kept:
            output.console.print(f"kept scratch instance: {result.kept['conninfo']} "
                                 f"(data {result.kept['data_dir']}); stop it with "
                                 f"pg_ctl -D {result.kept['data_dir']} stop, then remove "
                                 f"{result.kept['folder']}")
    # Failures go to stderr in both modes, so scripts reading --json still see why.
    for check in result.failed:
        output.error_line(f"verify failed: {check.name}: {check.summary}")
    if not result.passed:
        raise typer.Exit(1)


def wal_fetch(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="WAL file name (%f)")],
    dest: Annotated[Path, typer.Argument(help="where to put it (%p)")],
) -> None:
    """restore_command: copy one WAL file from the archive; exit 1 when it is absent, 126
    when it is damaged (so PostgreSQL aborts recovery instead of stopping there quietly)."""
    from pgdr.repo.wal import WAL_DAMAGED_EXIT, SegmentDamaged, WalArchive

    obj: AppContext = ctx.obj
    if obj.config_path is None:
        raise UsageError("wal-fetch needs --config (restore_command must name the config)")
    try:
        found = WalArchive(obj.local_cache()).fetch(name, dest)
    except SegmentDamaged as exc:
        output.error_line(f"wal-fetch: {exc.message}")
        raise typer.Exit(WAL_DAMAGED_EXIT) from None
    if not found:
        raise typer.Exit(1)



def register(app: typer.Typer) -> None:
    app.command("verify")(verify)
    app.command("wal-fetch", hidden=True)(wal_fetch)
