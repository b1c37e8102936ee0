"""`pgdr`: entry point, global options and error handling."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from pgdr.cli import output, signals
from pgdr.cli.context import AppContext
from pgdr.cli.entry import fast_exit, report_failure
from pgdr.errors import PgdrError
from pgdr.pg.children import REGISTRY, reap_orphans
from pgdr.pg.process import SHUTTING_DOWN

app = typer.Typer(help="PostgreSQL disaster recovery, rehearsed: backup, verify, restore, fail over.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  rich_markup_mode=None)  # plain click help: Rich's help renderer costs ~70 ms to import


def _print_version(value: bool) -> None:
    """Eager: answers before the other options are parsed and before any command module
    does its work, so `pgdr --version` costs only the interpreter and the CLI's imports."""
    if value:
        from pgdr import __version__

        typer.echo(f"pgdr {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="pgdr.toml (default: $PGDR_CONFIG, ./pgdr.toml)")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="verbose logs and tracebacks")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="print pgdr's version and exit")] = False,
) -> None:
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx.obj = AppContext(config_path=config, debug=debug)
    # A SIGKILLed pgdr could not end what it started; the next pgdr does.
    reap_orphans()


def _register() -> None:
    from pgdr.cli import (
        cmd_archiver,
        cmd_backup,
        cmd_diagnose,
        cmd_drill,
        cmd_failover,
        cmd_migrate,
        cmd_restore,
        cmd_sandbox,
        cmd_serve,
        cmd_status,
        cmd_verify,
    )

    app.add_typer(cmd_sandbox.app, name="sandbox")
    app.add_typer(cmd_archiver.app, name="archiver")
    cmd_backup.register(app)
    cmd_status.register(app)
    cmd_diagnose.register(app)
    cmd_serve.register(app)
    cmd_failover.register(app)
    cmd_drill.register(app)
    cmd_verify.register(app)
    cmd_restore.register(app)
    cmd_migrate.register(app)


_register()


def _click_exception_classes() -> tuple[type[Exception], ...]:
    """click's usage-error classes: plain click and the copy newer Typer releases vendor
    (both can be installed at once; Typer raises its own)."""
    import importlib

    found = []
    for module in ("click.exceptions", "typer._click.exceptions"):
        try:
            found.append(importlib.import_module(module).ClickException)
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def run() -> None:
    signals.install()
    code: str | int | None = 0
    try:
        _run()
    except SystemExit as exc:
        code = exc.code
    finally:
        REGISTRY.end_all()
    if code is None or isinstance(code, int):
        fast_exit(code or 0)  # without the interpreter's teardown (~50 ms), when nothing needs it
    sys.exit(code)


def _run() -> None:
    debug = "--debug" in sys.argv
    try:
        code = app(standalone_mode=False)
    except PgdrError as exc:
        report_failure(exc, debug)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        if SHUTTING_DOWN.is_set():
            output.error_line("interrupted")
            sys.exit(signals.exit_code())
        output.error_line("aborted")
        sys.exit(1)
    except KeyboardInterrupt as exc:
        report_failure(exc, debug)
    except Exception as exc:  # click usage errors and the truly unexpected
        if isinstance(exc, _click_exception_classes()):
            exc.show()  # type: ignore[attr-defined]
            sys.exit(exc.exit_code)  # type: ignore[attr-defined]
        report_failure(exc, debug)
    if code == 130:  # Typer turns Ctrl-C (and SIGTERM, see cli/signals.py) into exit code 130
        output.error_line("interrupted")
        code = signals.exit_code()
    sys.exit(code if isinstance(code, int) else 0)
