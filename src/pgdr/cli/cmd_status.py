"""`pgdr status`: the daily health check."""

from __future__ import annotations

from typing import Annotated

import typer

from pgdr.cli import output
from pgdr.cli.context import AppContext


def status(ctx: typer.Context, json_out: Annotated[bool, typer.Option("--json")] = False,
           redis: Annotated[str | None, typer.Option("--redis", metavar="NAME|all",
                                                     help="only the Redis checks")] = None) -> None:
    """Primary, standbys' lag, newest backup, WAL archive lag and gaps, archiver failures."""
    obj: AppContext = ctx.obj
    if redis is not None:
        from pgdr.cli import cmd_redis

        cmd_redis.status(obj, None if redis == "all" else redis, json_out)
        return
    from pgdr.status import gather_status

    try:
        report = gather_status(obj.config, obj.repo_with_wal())
    finally:
        obj.drop_cached_backups()
    if json_out:
        output.print_json(report.as_dict())
    else:
        output.table(f"cluster {report.cluster}", ["node", "role", "timeline", "LSN", "lag bytes", "lag s"],
                     [[n["name"], n["role"], n.get("timeline"), n.get("lsn"),
                       n.get("replay_lag_bytes"), n.get("replay_lag_s")] for n in report.nodes])
        output.checks_table(f"status: {report.status}", report.checks)
    if report.status == "fail":
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("status")(status)
