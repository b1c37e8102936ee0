"""`pgdr migrate -- COMMAND`, `--rehearse`, `--rollback ID|latest`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from pgdr.cli import output
from pgdr.cli.context import AppContext
from pgdr.errors import UsageError

FREEZE_MODES = ("restore-point", "backup", "logical")


def _echo(line: str) -> None:
    output.console.print(line, markup=False, highlight=False)


def migrate(
    ctx: typer.Context,
    command: Annotated[list[str] | None, typer.Argument(help="the migration command, after --")] = None,
    freeze: Annotated[str, typer.Option("--freeze", help="restore-point (always taken), or also a "
                                        "backup or a logical dump")] = "restore-point",
    rehearse: Annotated[bool, typer.Option("--rehearse", help="run it on a restored copy, not on the primary")]
    = False,
    rollback: Annotated[str | None, typer.Option("--rollback", help="roll back migration ID or 'latest'")] = None,
    target_dir: Annotated[Path | None, typer.Option("--target-dir", help="rollback by PITR: new data directory")]
    = None,
    port: Annotated[int | None, typer.Option("--port", help="rollback by PITR: the new instance's port")] = None,
    cutover: Annotated[bool, typer.Option("--cutover", help="rollback by PITR: put the restored instance "
                                          "into service")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="rollback: show the plan only")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="rollback: do not ask")] = False,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Freeze point, then COMMAND (e.g. `pgdr migrate -- alembic upgrade head`); --rehearse on
    a restored copy; --rollback to a recorded migration's freeze point."""
    obj: AppContext = ctx.obj
    argv = list(command or [])
    if rollback is not None:
        if argv or rehearse:
            raise UsageError("--rollback takes no command and no --rehearse")
        _rollback(obj, rollback, target_dir, port, cutover, dry_run, yes, json_out)
        return
    if target_dir is not None or port is not None or cutover or dry_run or yes:
        raise UsageError("--target-dir, --port, --cutover, --dry-run and --yes belong to --rollback")
    if not argv:
        raise UsageError("give the migration command after --, e.g. pgdr migrate -- alembic upgrade head")
    if freeze not in FREEZE_MODES:
        raise UsageError(f"--freeze {freeze!r}: use one of {', '.join(FREEZE_MODES)}")
    if rehearse and freeze != "restore-point":
        raise UsageError("--freeze is for the production run; a rehearsal works on a throwaway copy")
    echo = None if json_out else _echo
    if rehearse:
        from pgdr.migrate.rehearse import rehearse as run_rehearsal

        record = run_rehearsal(obj.config, obj.programs, obj.repo, argv, on_line=echo)
    else:
        from pgdr.migrate.run import migrate as run_migration

        record = run_migration(obj.config, obj.programs, obj.repo, argv, mode=freeze,  # type: ignore[arg-type]
                               on_line=echo)
    if json_out:
        output.print_json(record)
    else:
        _summary(record)
    if record["outcome"] != "ok" or (rehearse and not record.get("primary_untouched")):
        raise typer.Exit(1)


def _summary(record: dict[str, Any]) -> None:
    what = "rehearsal" if record.get("rehearsal") else "migration"
    freeze = record.get("freeze") or {}
    say = output.console.print
    revisions = (f"; revision {record.get('revision_before')} -> {record.get('revision_after')}"
                 if record.get("revision_before") or record.get("revision_after") else "")
    say(f"{what} {record['outcome']}: {record.get('error') or 'exit code 0'} in {record.get('duration_s')}s"
        + revisions, markup=False)
    say(f"  schema: {record['diff']['summary']}", markup=False)
    if freeze:
        say(f"  freeze point: restore point {freeze['restore_point']} (LSN {freeze['lsn']})"
            + (f", backup {freeze['backup_id']}" if freeze.get("backup_id") else ""), markup=False)
    if record.get("rehearsal"):
        locks = record.get("locks") or []
        say(f"  on a copy of backup {record['backup_id']}; rows rewritten {record['rows_rewritten']}, "
            f"rows written {record['rows_written']}; primary "
            + ("untouched" if record.get("primary_untouched") else "SCHEMA CHANGED"), markup=False)
        for lock in locks[:5]:
            say(f"  lock {lock['mode']} on {lock['relation']}: held ~{lock['held_s']}s", markup=False)
    say(f"  record: {record['id']}", markup=False)


def _rollback(obj: AppContext, wanted: str, target_dir: Path | None, port: int | None, cutover: bool,
              dry_run: bool, yes: bool, json_out: bool) -> None:
    from pgdr.migrate import records
    from pgdr.migrate.rollback import CUTOVER_NEXT, execute, make_plan

    record = records.find(obj.repo, wanted)
    plan = make_plan(obj.config, obj.programs, record, cutover=cutover)
    if dry_run or plan.action == "nothing":
        if json_out:
            output.print_json({"plan": plan.as_dict(), "dry_run": dry_run})
        else:
            output.console.print(f"migration {record['id']}: {plan.describe()}", markup=False)
        return
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError(f"{plan.describe()}: confirm with --yes")
        typer.confirm(f"{plan.describe()}. Go ahead?", abort=True)
    result = execute(obj.config, obj.programs, obj.repo, record, plan, target_dir=target_dir, port=port,
                     on_line=None if json_out else _echo)
    if json_out:
        output.print_json(result)
        return
    say = output.console.print
    say(f"rolled back migration {record['id']}: {plan.describe()}", markup=False)
    restored = result.get("restored")
    if restored:
        say(f"  restored instance: psql \"{restored['conninfo']}\"; stop it: {restored['stop_with']}", markup=False)
        for row in result.get("written_since", []):
            say(f"  {row['rows']} rows written to {row['table']} since the freeze point: {row['salvage']}",
                markup=False)
        for copy in result.get("salvaged", []):
            say(f"  salvaged {copy['copied']} rows of {copy['source_table']} into {copy['target_table']} "
                "on the restored instance", markup=False)
        for change in result.get("wal_changes", []):
            say(f"  WAL: xid {change['xid']} {change['kind']} {change['table']} ({change['rows'] or 'all'} rows) "
                f"at {change['commit_time']}", markup=False)
        if not plan.cutover:
            say(f"  then: {CUTOVER_NEXT}", markup=False)
        else:
            cut: dict[str, Any] = next((s for s in result["timeline"] if s["name"] == "cutover"), {})
            say(f"  cutover: {cut.get('detail')}", markup=False)
            for step in (cut.get("evidence") or {}).get("cutover", {}).get("next_steps") or []:
                say(f"  next: {step}", markup=False)
    say(f"  record: {result['id']}", markup=False)


def register(app: typer.Typer) -> None:
    app.command("migrate", context_settings={"allow_interspersed_args": False})(migrate)
