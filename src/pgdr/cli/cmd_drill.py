"""`pgdr drill` and `pgdr report`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pgdr.cli import output
from pgdr.cli.context import AppContext
from pgdr.errors import UsageError

if TYPE_CHECKING:
    from pgdr.config import DrillConfig
    from pgdr.repo.layout import Repository

DEFAULT_DRILL_DIR = Path(".pgdr-drills")


def _has_config(obj: AppContext) -> bool:
    from pgdr.config import find_config_path

    return obj.config_path is not None or find_config_path(None).exists()


def _history_and_config(obj: AppContext, drill_dir: Path) -> tuple[Repository, DrillConfig]:
    """The configured repository keeps the history when there is a config; else the drill folder."""
    from pgdr.config import DrillConfig
    from pgdr.repo.layout import Repository

    if _has_config(obj):
        return obj.repo, obj.config.drill
    return Repository(drill_dir.resolve() / "history"), DrillConfig()


def drill(
    ctx: typer.Context,
    scenario: Annotated[list[str] | None, typer.Option("--scenario", "-s", help="run only these (repeatable)")] = None,
    dir: Annotated[Path | None, typer.Option("--dir", help="where throwaway sandboxes are built")] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
    sandbox: Annotated[bool, typer.Option("--sandbox", help="with a config: fault scenarios on sample-data "
                                                          "sandboxes instead of copies of the cluster")] = False,
) -> None:
    """Inject real faults into copies of the cluster's data (or sandboxes), recover with pgdr, score RTO/RPO."""
    from pgdr.drill.runner import run_drill

    obj: AppContext = ctx.obj
    history, cfg = _history_and_config(obj, dir or DEFAULT_DRILL_DIR)
    base = (dir or cfg.dir or DEFAULT_DRILL_DIR).resolve()
    cluster = (obj.config, obj.repo) if _has_config(obj) else None
    if not json_out:
        where = (f"cluster {obj.config.cluster.name}: backup-validation restores its newest backup into a "
                 "scratch copy; fault scenarios run on "
                 + ("throwaway sample sandboxes" if sandbox else "copies of its newest verified backup")
                 if cluster else "throwaway sandboxes")
        output.console.print(f"drilling on {where} in {base}; no configured server is changed; "
                             f"history in {history.root}")
    run = run_drill(base, obj.programs, history, cfg, scenario, cluster=cluster, sample_data=sandbox)
    if json_out:
        output.print_json({**run.as_dict(), "record_path": run.record_path})
    else:
        def target(v: float | None, unit: str = "") -> str:
            return "-" if v is None else f"{v:g}{unit}"
        output.table("drill scorecard", ["scenario", "result", "RTO", "target", "RPO", "target", "slowest step", "wall",
                                         "data"],
                     [[s.name, output.styled("pass", "green") if s.passed else output.styled("FAIL", "bold red"),
                       target(s.rto_s, "s"), target(s.target.rto_s if s.target else None, "s"),
                       f"{target(s.rpo)} {s.rpo_unit}", target(s.target.rpo if s.target else None),
                       s.slowest_step, f"{s.wall_s:.1f}s",
                       "-" if s.data_bytes is None else output.human_bytes(s.data_bytes)] for s in run.scenarios])
        for s in run.scenarios:
            output.console.print(f"  {s.name}: {s.reason}", highlight=False)
        output.console.print(f"total {run.wall_s:.1f}s; record {run.record_path}")
    if not run.passed:
        raise typer.Exit(1)


def report(
    ctx: typer.Context,
    record_id: Annotated[str, typer.Argument(help="record id, a backup id (its verification), or latest")] = "latest",
    fmt: Annotated[str, typer.Option("--format", "-f", help="md, json or html")] = "md",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="write to a file")] = None,
    list_them: Annotated[bool, typer.Option("--list", help="list the records")] = False,
    dir: Annotated[Path | None, typer.Option("--dir", help="drill folder when there is no config")] = None,
) -> None:
    """The incident record of a drill, failover, switchover, rejoin, restore or verification."""
    from pgdr.repo.records import list_records
    from pgdr.runbook.report import RENDERERS, find_record

    obj: AppContext = ctx.obj
    history, _ = _history_and_config(obj, dir or DEFAULT_DRILL_DIR)
    if list_them:
        output.table("records", ["id", "kind", "outcome"],
                     [[r.get("id"), r.get("kind"), r.get("outcome")] for r in list_records(history)])
        return
    if fmt not in RENDERERS:
        raise UsageError(f"--format must be one of {', '.join(RENDERERS)}")
    text = RENDERERS[fmt](find_record(history, record_id))
    if out is not None:
        out.write_text(text)
        output.console.print(f"wrote {out}")
    else:
        import sys

        sys.stdout.write(text)


def register(app: typer.Typer) -> None:
    app.command("drill")(drill)
    app.command("report")(report)
