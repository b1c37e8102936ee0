"""The `pgdr` console script: a plain physical `pgdr backup` starts its copy without Typer.

`pgdr backup` is measured against pg_basebackup run alone, so every millisecond before
pg_basebackup starts counts. Typer (with the click it vendors) costs ~75 ms to import and
build, and nothing of it is needed to read `pgdr [-c FILE] [--debug] backup [--json]`.
That one exact form runs here; every other command line (help, other options, other
commands, anything unexpected) goes to the full CLI in cli/main.py, unchanged. It does
not wait for pydantic either: cli/physical_backup.fast_physical_backup starts the copy
from the keys backup/early.py reads and validates the config beside it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

from pgdr.errors import PgdrError


def plain_backup(argv: list[str]) -> tuple[Path | None, bool, bool] | None:
    """(config path, debug, json) for `[-c FILE|--config FILE|--config=FILE] [--debug]
    backup [--json]` (the global options in any order, each at most once); None otherwise."""
    config: Path | None = None
    debug = seen_config = False
    i = 0
    while i < len(argv) and argv[i] != "backup":
        arg = argv[i]
        if arg == "--debug" and not debug:
            debug = True
        elif arg in ("-c", "--config") and not seen_config and i + 1 < len(argv) \
                and argv[i + 1] and not argv[i + 1].startswith("-"):
            config, seen_config = Path(argv[i + 1]), True
            i += 1
        elif arg.startswith("--config=") and not seen_config and len(arg) > len("--config="):
            config, seen_config = Path(arg.split("=", 1)[1]), True
        else:
            return None
        i += 1
    rest = argv[i + 1:] if i < len(argv) else None
    if rest is None or rest not in ([], ["--json"]):
        return None
    return config, debug, rest == ["--json"]


def report_failure(exc: BaseException, debug: bool) -> NoReturn:
    """One line and the exit code for what a command raised (what both CLIs share):
    PgdrError its own code, an interrupt 128 + the signal, anything else 1."""
    from pgdr.cli import output, signals

    if isinstance(exc, PgdrError):
        if debug:
            raise exc
        output.error_line(exc.message, exc.hint)
        sys.exit(exc.exit_code)
    if isinstance(exc, KeyboardInterrupt):
        output.error_line("interrupted")
        sys.exit(signals.exit_code())
    if debug:
        raise exc
    missing = missing_privilege(exc)
    if missing is not None:
        output.error_line(missing.message, missing.hint)
        sys.exit(missing.exit_code)
    output.error_line(f"unexpected error: {type(exc).__name__}: {exc}", "rerun with --debug for a traceback")
    sys.exit(1)


def missing_privilege(exc: BaseException) -> PgdrError | None:
    """SQLSTATE 42501 from any query: name the object and the grant, not 'unexpected'."""
    if "psycopg" not in sys.modules:
        return None  # no query ran
    from psycopg import errors as pgerrors

    from pgdr.pg.credentials import auth_error

    if not isinstance(exc, pgerrors.InsufficientPrivilege):
        return None
    return auth_error(str(exc), {}) or PgdrError(str(exc).strip().splitlines()[0],
                                                 hint="grant the role in the conninfo the privilege named")


def fast_exit(code: int) -> NoReturn:
    """Exit without the interpreter's teardown (~50 ms of freeing every module's objects)
    once nothing is left that teardown would do: output flushed, exit handlers run, no
    other thread alive. Otherwise the ordinary exit."""
    import atexit
    import logging
    import os
    import threading

    if threading.active_count() > 1:
        sys.exit(code)
    atexit._run_exitfuncs()
    logging.shutdown()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:
        os._exit(120)  # what Python's own exit returns when it cannot flush stdout
    os._exit(code)


def _run_plain_backup(config: Path | None, debug: bool, json_out: bool) -> None:
    import logging

    from pgdr.cli import signals
    from pgdr.cli.context import AppContext
    from pgdr.cli.physical_backup import fast_physical_backup
    from pgdr.pg.children import REGISTRY, reap_orphans

    signals.install()
    try:
        try:
            logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING,
                                format="%(asctime)s %(levelname)s %(name)s: %(message)s")
            obj = AppContext(config_path=config, debug=debug)
            reap_orphans()  # a SIGKILLed pgdr could not end what it started; the next pgdr does
            fast_physical_backup(obj, json_out=json_out)
        except BaseException as exc:  # noqa: BLE001 - every failure becomes one line and a code
            if isinstance(exc, SystemExit):
                raise
            report_failure(exc, debug)
    finally:
        REGISTRY.end_all()
    fast_exit(0)


def run() -> None:
    plain = plain_backup(sys.argv[1:])
    if plain is None:
        from pgdr.cli.main import run as full

        full()
        return
    _run_plain_backup(*plain)


if __name__ == "__main__":
    run()
