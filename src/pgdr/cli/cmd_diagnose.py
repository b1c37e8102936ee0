"""`pgdr diagnose` and `pgdr terminate`."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from pgdr.cli import output
from pgdr.cli.context import AppContext
from pgdr.errors import UsageError
from pgdr.pg.conninfo import mask_text

SEVERITY_STYLE = {"ok": "green", "info": "cyan", "warning": "yellow", "critical": "bold red"}


def diagnose(
    ctx: typer.Context,
    json_out: Annotated[bool, typer.Option("--json", help="the snapshot to attach to an incident ticket")] = False,
    show_ok: Annotated[bool, typer.Option("--all", help="list the concerns that are fine too")] = False,
) -> None:
    """Connections, long queries, blocking chains, replication, archiver, wraparound, corruption signs."""
    from rich.table import Table

    from pgdr.diagnose.analyze import diagnose as run_diagnose

    obj: AppContext = ctx.obj
    report = run_diagnose(obj.config, obj.repo)
    if json_out:
        output.print_json(report.as_dict())
    else:
        t = Table(title=f"diagnose {report.cluster}: {report.severity} ({report.duration_s:.2f}s)",
                  title_justify="left", header_style="bold")
        for col in ("concern", "node", "severity", "finding"):
            t.add_column(col)
        for f in report.findings:
            if f.severity == "ok" and not show_ok:
                continue
            style = SEVERITY_STYLE[f.severity]
            detail = f.summary
            lines = f.evidence.get("text") if isinstance(f.evidence.get("text"), list) else None
            if lines:
                detail += "\n" + "\n".join(str(x) for x in lines[:20])
            for s in (f.evidence.get("sessions") or [])[:10]:
                detail += (f"\n pid {s.get('pid')} {s.get('usename')}@{s.get('datname')} {s.get('state')}"
                           f" {s.get('state_s', 0):.0f}s: {s.get('query')}")
            if f.action and f.severity not in ("ok", "info"):
                detail += f"\n[dim]→ {f.action}[/dim]"
            t.add_row(f.concern, f.node or "", f"[{style}]{f.severity}[/{style}]", mask_text(detail))
        ok = sum(f.severity == "ok" for f in report.findings)
        output.console.print(t)
        if ok and not show_ok:
            output.console.print(f"[green]{ok} concern(s) ok[/green] (--all to list them)")
    if report.severity == "critical":
        raise typer.Exit(1)


def _dur(value: str | None, flag: str) -> float | None:
    if value is None:
        return None
    try:
        from pgdr.config import parse_duration

        return parse_duration(value)
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from None


def terminate(
    ctx: typer.Context,
    idle_in_transaction: Annotated[str | None, typer.Option("--idle-in-transaction", metavar="DURATION",
                                   help="sessions idle in transaction at least this long")] = None,
    idle: Annotated[str | None, typer.Option("--idle", metavar="DURATION",
                    help="sessions idle at least this long")] = None,
    longer_than: Annotated[str | None, typer.Option("--longer-than", metavar="DURATION",
                           help="active queries running at least this long")] = None,
    pid: Annotated[int | None, typer.Option("--pid", help="one session by pid")] = None,
    user: Annotated[str | None, typer.Option("--user", help="only this user's sessions")] = None,
    database: Annotated[str | None, typer.Option("--database", help="only sessions in this database")] = None,
    node: Annotated[str | None, typer.Option("--node", help="configured node (default: the primary)")] = None,
    include_superusers: Annotated[bool, typer.Option("--include-superusers")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="show the matching sessions, touch none")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Terminate matching client sessions (never replication, autovacuum, workers or pgdr itself)."""
    from pgdr.diagnose.terminate import Criteria, execute, plan

    obj: AppContext = ctx.obj
    criteria = Criteria(_dur(idle_in_transaction, "--idle-in-transaction"), _dur(idle, "--idle"),
                        _dur(longer_than, "--longer-than"), pid, user, database, include_superusers)
    criteria.validate()
    the_plan = plan(obj.config, criteria, node)
    if not the_plan.sessions:
        if json_out:
            output.print_json({**the_plan.as_dict(), "dry_run": dry_run})
        else:
            output.console.print(f"no session on {the_plan.node} matches ({criteria.describe()})")
        return
    if not json_out or not (yes or dry_run):
        _show(the_plan.node, criteria.describe(), the_plan.sessions, to_stderr=json_out)
    if dry_run:
        if json_out:
            output.print_json({**the_plan.as_dict(), "dry_run": True})
        else:
            output.console.print(f"dry run: {len(the_plan.sessions)} session(s) would be terminated")
        return
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError(f"refusing to terminate {len(the_plan.sessions)} session(s) without --yes "
                             "(not an interactive terminal)")
        if not typer.confirm(f"terminate these {len(the_plan.sessions)} session(s)?", default=False):
            raise typer.Abort()
    execute(obj.config, the_plan)
    if json_out:
        output.print_json({**the_plan.as_dict(), "dry_run": False})
    else:
        output.table("result", ["pid", "result", "detail"],
                     [[o.pid, o.result, o.detail] for o in the_plan.outcomes])
    if any(o.result in ("failed", "still running") for o in the_plan.outcomes):
        raise typer.Exit(1)


def _show(node: str, criteria: str, sessions: list[dict[str, Any]], to_stderr: bool) -> None:
    from rich.table import Table

    t = Table(title=f"{node}: {len(sessions)} session(s) match ({criteria})", title_justify="left",
              header_style="bold")
    for col in ("pid", "user", "database", "application", "client", "state", "state for", "query"):
        t.add_column(col)
    for s in sessions:
        t.add_row(str(s["pid"]), s.get("usename") or "", s.get("datname") or "",
                  s.get("application_name") or "", s.get("client_addr") or "local", s.get("state") or "",
                  f"{s.get('state_s') or 0:.0f}s", mask_text(s.get("query") or ""))
    (output.err_console if to_stderr else output.console).print(t)


def register(app: typer.Typer) -> None:
    app.command("diagnose")(diagnose)
    app.command("terminate")(terminate)
