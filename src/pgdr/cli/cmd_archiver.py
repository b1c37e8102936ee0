"""`pgdr archiver run/start/stop/status`: the continuous WAL archive."""

from __future__ import annotations

import signal
from typing import Annotated

import typer

from pgdr.cli import output
from pgdr.cli.context import AppContext

app = typer.Typer(help="Stream WAL into the repository (pg_receivewal on a replication slot).",
                  no_args_is_help=True, rich_markup_mode=None)


@app.command("run")
def run_cmd(ctx: typer.Context) -> None:
    """Run in the foreground (for systemd or a container): until SIGTERM or Ctrl-C."""
    obj: AppContext = ctx.obj
    from pgdr.backup import archiver

    obj.require_physical("the WAL archiver", "managed databases keep their own WAL; take `pgdr backup --logical` on a schedule instead")
    worker = archiver.Archiver(obj.config, obj.programs, obj.repo)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    signal.signal(signal.SIGINT, lambda *_: worker.stop())
    worker.run()


@app.command("start")
def start_cmd(ctx: typer.Context) -> None:
    """Start `archiver run` in the background and wait until it streams."""
    obj: AppContext = ctx.obj
    from pgdr.backup import archiver
    from pgdr.config import find_config_path

    obj.require_physical("the WAL archiver", "managed databases keep their own WAL; take `pgdr backup --logical` on a schedule instead")
    pid = archiver.start_background(find_config_path(obj.config_path).resolve(), obj.repo)
    output.console.print(f"archiver streaming (pid {pid})")


@app.command("stop")
def stop_cmd(ctx: typer.Context) -> None:
    """Stop the background archiver (it finishes the segment it holds first)."""
    from pgdr.backup import archiver

    stopped = archiver.stop_background(ctx.obj.repo)
    output.console.print("archiver stopped" if stopped else "archiver was not running")


@app.command("status")
def status_cmd(ctx: typer.Context, json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The archiver's state: running, upstream, last archived segment, last failure."""
    from pgdr.backup import archiver

    data = archiver.archiver_state_dict(ctx.obj.repo)
    if json_out:
        output.print_json(data)
        return
    output.table(None, ["key", "value"], [[k, v] for k, v in data.items()])
    if not data["running"]:
        raise typer.Exit(1)
