"""`pgdr sandbox up/down/status/write`."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import typer

from pgdr.cli import output
from pgdr.cli.context import AppContext
from pgdr.sandbox import DEFAULT_DIR

app = typer.Typer(help="A local primary + standbys + WAL archive for demos, drills and tests.",
                  no_args_is_help=True, rich_markup_mode=None)

DirOpt = Annotated[Path, typer.Option("--dir", help="sandbox folder")]


@app.command("up")
def up_cmd(
    ctx: typer.Context,
    dir: DirOpt = DEFAULT_DIR,
    standbys: Annotated[int, typer.Option(help="number of streaming standbys")] = 1,
    sync: Annotated[bool, typer.Option("--sync", help="synchronous replication (ANY 1)")] = False,
    bindir: Annotated[Path | None, typer.Option("--bindir", help="PostgreSQL programs to use (e.g. another "
                                                "major version's bin/); kept in the sandbox's pgdr.toml")] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Create the sandbox (or start an existing one again)."""
    from pgdr.sandbox import sandbox as sb

    obj: AppContext = ctx.obj
    programs = obj.programs
    if bindir is not None:
        from pgdr.pg.programs import Programs

        programs = Programs(sb.check_bindir(bindir), programs.run_as)
    with output.console.status("starting the sandbox…") if not json_out else nullcontext():
        sandbox = sb.up(dir, programs, standbys=standbys, sync=sync)
    rows = sb.status(sandbox.root, obj.programs)
    if json_out:
        output.print_json({"dir": str(sandbox.root), "config": str(sandbox.config_path), "nodes": rows})
        return
    output.table(f"sandbox {sandbox.root}", ["node", "role", "port", "pid", "state"],
                 [[r["name"], r["role"], r["port"], r["pid"], r["state"]] for r in rows])
    output.console.print(f"config: {sandbox.config_path}")
    output.console.print(f"connect: psql \"{sandbox.conninfo(sandbox.primary)}\"")
    output.console.print(f"use it:  export PGDR_CONFIG={sandbox.config_path}")


@app.command("down")
def down_cmd(
    ctx: typer.Context,
    dir: DirOpt = DEFAULT_DIR,
    purge: Annotated[bool, typer.Option("--purge", help="also delete the folder and everything in it")] = False,
) -> None:
    """Stop the sandbox's own servers and archiver (the folder is kept unless --purge)."""
    from pgdr.sandbox import sandbox as sb

    stopped = sb.down(dir, ctx.obj.programs, purge=purge)
    output.console.print(f"stopped: {', '.join(stopped) or 'nothing was running'}"
                         + (f"; removed {dir}" if purge else ""))


@app.command("status")
def status_cmd(
    ctx: typer.Context,
    dir: DirOpt = DEFAULT_DIR,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Each node: name, role, port, data_dir, pid, up/down."""
    from pgdr.sandbox import sandbox as sb

    rows = sb.status(dir, ctx.obj.programs)
    if json_out:
        output.print_json(rows)
        return
    output.table(None, ["node", "role", "port", "data_dir", "pid", "state"],
                 [[r["name"], r["role"], r["port"], r["data_dir"], r["pid"], r["state"]] for r in rows])


@app.command("write")
def write_cmd(
    ctx: typer.Context,
    dir: DirOpt = DEFAULT_DIR,
    seconds: Annotated[float, typer.Option(help="how long to write")] = 3.0,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Write orders into the sample app, one commit each, and count acknowledged commits."""
    from pgdr.sandbox import sandbox as sb
    from pgdr.sandbox.workload import Writer

    sandbox = sb.load_sandbox(dir.resolve())
    if sandbox is None:
        from pgdr.errors import SandboxError

        raise SandboxError(f"no sandbox in {dir}", hint="create one with `pgdr sandbox up`")
    stats = Writer(sandbox.conninfo(sandbox.primary, "postgres")).run_for(seconds)
    data = {"acknowledged_commits": len(stats.acknowledged), "errors": stats.errors,
            "commits_per_second": round(stats.commits_per_second, 1)}
    if json_out:
        output.print_json(data)
    else:
        output.console.print(f"wrote {data['acknowledged_commits']} acknowledged commits "
                             f"({data['commits_per_second']}/s), {stats.errors} errors")

