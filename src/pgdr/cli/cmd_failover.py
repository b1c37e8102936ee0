"""`pgdr failover`, `pgdr switchover`, `pgdr cutover`, `pgdr rejoin`, `pgdr watch`."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from pgdr.cli import output
from pgdr.cli.context import AppContext
from pgdr.errors import UsageError


def _confirm(yes: bool, what: str) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(f"{what}: pass --yes to confirm (or --dry-run to see the plan)")
    typer.confirm(f"{what}?", abort=True)


def _render(record: dict[str, Any]) -> None:
    if record.get("preflight"):
        output.table("preflight", ["node", "reachable", "role", "timeline", "received", "replayed",
                                   "lag bytes", "lag s", "receiver"],
                     [[n["name"], n["reachable"], n["role"], n["timeline"], n["receive_lsn"], n["replay_lsn"],
                       n["lag_bytes"], n["lag_seconds"], n["receiver"]] for n in record["preflight"]])
    if record.get("plan"):
        output.console.print("plan:\n" + "\n".join(f"  {i}. {s}" for i, s in enumerate(record["plan"], 1)))
    if record.get("rewind"):
        output.console.print(f"old primary can rejoin by pg_rewind: {record['rewind'].get('possible')}")
    if record.get("timeline"):
        output.table("steps", ["step", "result", "seconds", "detail"],
                     [[s["name"], s["result"], s["seconds"], s["detail"] or s["evidence"].get("error", "")]
                      for s in record["timeline"]])
    if record.get("forced"):
        output.console.print(f"[bold red]forced:[/bold red] {record.get('choice')}")
    if record.get("synchronous_after"):
        output.console.print(f"synchronous replication: {record['synchronous_after'].get('detail')}")
    if record.get("new_primary") and record.get("outcome") != "planned":
        rpo = record.get("rpo") or {}
        loss = (f"{rpo.get('bytes')} bytes / {rpo.get('commits')} commits" if rpo.get("known")
                else "unknown (" + str(rpo.get("detail")) + ")")
        output.console.print(f"[bold]{record['new_primary']}[/bold] is primary on timeline "
                             f"{record.get('new_timeline')}; RTO {record.get('rto_seconds')}s; data lost: {loss}")


def failover(
    ctx: typer.Context,
    to: Annotated[str | None, typer.Option("--to", help="promote this standby")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the plan, change nothing")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y")] = False,
    force: Annotated[bool, typer.Option("--force", help="promote even if it lags over the maximum")] = False,
    no_fence: Annotated[bool, typer.Option("--no-fence", help="proceed without fencing the old primary")] = False,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Promote the best standby after the primary failed: fence, promote, prove, repoint."""
    from pgdr.failover.failover import run_failover

    obj: AppContext = ctx.obj
    if not dry_run:
        _confirm(yes, "fence the old primary and promote a standby")
    obj.require_physical("failover", "a managed database fails over by itself; repoint clients with its own tools",
                         timeout=1)
    record = run_failover(obj.config, obj.programs, obj.repo, to=to, force=force, no_fence=no_fence,
                          dry_run=dry_run)
    output.print_json(record) if json_out else _render(record)


def switchover(
    ctx: typer.Context,
    to: Annotated[str | None, typer.Option("--to", help="promote this standby")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y")] = False,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Planned, lossless change of primary; the old primary becomes a standby."""
    from pgdr.failover.switchover import run_switchover

    obj: AppContext = ctx.obj
    if not dry_run:
        _confirm(yes, "shut the primary down and promote a standby")
    obj.require_physical("switchover", "a managed database fails over by itself; repoint clients with its own tools",
                         timeout=1)
    record = run_switchover(obj.config, obj.programs, obj.repo, to=to, dry_run=dry_run)
    output.print_json(record) if json_out else _render(record)


def cutover(
    ctx: typer.Context,
    to_dir: Annotated[Path, typer.Option("--to-dir", "--target-dir", help="the folder `pgdr restore` restored into")],
    name: Annotated[str | None, typer.Option("--name", help="its node name (default: the folder's name)")] = None,
    conninfo: Annotated[str | None, typer.Option(
        "--conninfo", help="how the cluster reaches it (default: the old primary's, at its address); "
        "${VAR} is kept as written")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the plan, change nothing")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y")] = False,
    no_fence: Annotated[bool, typer.Option("--no-fence", help="proceed without fencing the old primary")] = False,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Put a restored instance into service as the primary: smoke checks, pause, fence, repoint, resume."""
    from pgdr.failover.cutover import cutover as run_cutover

    obj: AppContext = ctx.obj
    if not dry_run:
        _confirm(yes, "fence the current primary and put the restored instance into service")
    obj.require_physical("cutover", "restore a logical backup with `pgdr restore --into` and repoint yourself",
                         timeout=1)
    result = run_cutover(obj.config, obj.programs, obj.repo, to_dir, name=name, conninfo=conninfo,
                         dry_run=dry_run, assume_yes=yes or not dry_run, no_fence=no_fence)
    record = result.record
    if json_out:
        output.print_json(record)
        return
    _render(record)
    if result.outcome == "cut over":
        for step in record.get("next_steps", []):
            output.console.print(f"next: {step}", highlight=False)


def rejoin(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="the former primary (a node name)")],
    yes: Annotated[bool, typer.Option("--yes", "-y")] = False,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Make a fenced former primary a standby again (pg_rewind, else a fresh base backup)."""
    from pgdr.failover.rejoin import run_rejoin

    obj: AppContext = ctx.obj
    _confirm(yes, f"rewind {name}'s data directory to follow the current primary")
    obj.require_physical("rejoin", "a managed database fails over by itself; repoint clients with its own tools",
                         timeout=1)
    record = run_rejoin(obj.config, obj.programs, obj.repo, name)
    if json_out:
        output.print_json(record)
    else:
        _render(record)
        output.console.print(f"{name} rejoined by {record['method']} and is streaming")


def watch(
    ctx: typer.Context,
    once: Annotated[bool, typer.Option("--once", help="stop after the first automatic failover")] = False,
) -> None:
    """Watch the primary every second; fail over on our own after consecutive failures."""
    from pgdr.failover.watch import Watcher

    obj: AppContext = ctx.obj

    def show(event: dict[str, Any]) -> None:
        output.console.print(f"{event['at']} {event['event']}: {event['reason']}", highlight=False)

    obj.require_physical("watch", "a managed database fails over by itself; repoint clients with its own tools",
                         timeout=1)
    watcher = Watcher(obj.config, obj.programs, obj.repo, on_event=show, stop_after_failover=once)
    signal.signal(signal.SIGTERM, lambda *_: watcher.stop())
    signal.signal(signal.SIGINT, lambda *_: watcher.stop())
    watcher.run()


def register(app: typer.Typer) -> None:
    app.command("failover")(failover)
    app.command("switchover")(switchover)
    app.command("cutover")(cutover)
    app.command("rejoin")(rejoin)
    app.command("watch")(watch)
