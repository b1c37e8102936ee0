"""`pgdr migrate -- COMMAND`: freeze point, then the user's migration command, then what changed.

The command runs through pgdr's program runner (its own process group, ended with
pgdr, output streamed with passwords masked) under lock_timeout/statement_timeout
(PGOPTIONS, which libpq and so every driver built on it applies to each session) and
an overall timeout. Its outcome, duration, the revision after and the schema diff go
to the migration's record.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pgdr.config import Config
from pgdr.errors import ProgramFailed
from pgdr.migrate import freeze as fz
from pgdr.migrate import records, schema
from pgdr.pg import process
from pgdr.pg.conninfo import mask, mask_text, parse
from pgdr.pg.programs import Programs
from pgdr.repo import unfinished
from pgdr.repo.layout import Repository
from pgdr.runbook.timeline import Timeline

# Variables that could point a rehearsal's command at production: removed for it.
LIBPQ_TARGET_ENV = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE", "PGSERVICEFILE",
                    "PGPASSWORD", "PGPASSFILE", "DATABASE_URL")
ALL_CODES = tuple(range(-64, 256))
TAIL_LINES = 30


@dataclass
class CommandResult:
    returncode: int | None        # None: it did not finish (timeout, cancelled, not found)
    seconds: float
    tail: list[str]               # the last lines of its output, masked
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def as_dict(self) -> dict[str, Any]:
        return {"exit_code": self.returncode, "seconds": round(self.seconds, 3), "output_tail": self.tail,
                "error": self.error}


def command_env(config: Config, extra: Mapping[str, str] | None = None, *,
                isolate: bool = False) -> dict[str, str]:
    """The user's environment (their PATH, virtualenv, DATABASE_URL) plus the timeouts in
    PGOPTIONS; isolate drops every variable that could reach another server. A timeout of
    0 is not set at all, so a role's own setting still applies."""
    env = {k: v for k, v in os.environ.items() if not (isolate and k in LIBPQ_TARGET_ENV)}
    options = [env.get("PGOPTIONS", "").strip()]
    for name, seconds in (("lock_timeout", config.migrate.lock_timeout),
                          ("statement_timeout", config.migrate.statement_timeout)):
        if seconds:
            options.append(f"-c {name}={round(seconds * 1000)}")
    env["PGOPTIONS"] = " ".join(o for o in options if o)
    env.update(extra or {})
    return env


def run_command(config: Config, argv: Sequence[str], env: Mapping[str, str], cwd: Path,
                on_line: Callable[[str], None] | None = None) -> CommandResult:
    """Run the user's command to its end (any exit code), bounded by [migrate] timeout."""
    tail: list[str] = []

    def line(text: str) -> None:
        tail.append(text)
        del tail[:-TAIL_LINES]
        if on_line is not None:
            on_line(text)

    start = time.monotonic()
    try:
        done = process.run(list(argv), name=os.path.basename(argv[0]), env=env, cwd=str(cwd),
                           ok_codes=ALL_CODES, timeout=config.migrate.timeout, log_stderr=False, on_line=line)
    except ProgramFailed as exc:
        return CommandResult(None, time.monotonic() - start, tail, exc.message)
    return CommandResult(done.returncode, time.monotonic() - start, tail,
                         None if done.returncode == 0 else f"exit code {done.returncode}")


def new_record(argv: Sequence[str], cwd: Path, conninfo: str, *, rehearsal: bool) -> dict[str, Any]:
    return {"id": records.new_id(records.KIND), "kind": records.KIND, "rehearsal": rehearsal,
            "command": mask_text(shlex.join(argv)), "argv": [mask_text(a) for a in argv], "cwd": str(cwd),
            "database": parse(conninfo).get("dbname"), "server": mask(conninfo),
            "started_at": datetime.now(UTC).isoformat(), "outcome": "running", "owner": unfinished.owner()}


def migrate(config: Config, programs: Programs, repo: Repository, argv: Sequence[str], *,
            mode: fz.FreezeMode = "restore-point", cwd: Path | None = None,
            on_line: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Freeze point, command, result; returns the record (saved). A refused freeze point
    raises FreezeRefused after recording it, and the command never runs."""
    cwd = cwd or Path.cwd()
    conninfo = fz.target_conninfo(config)
    with fz.exclusive(conninfo):
        return _migrate(config, programs, repo, argv, conninfo, mode, cwd, on_line)


def _migrate(config: Config, programs: Programs, repo: Repository, argv: Sequence[str], conninfo: str,
             mode: fz.FreezeMode, cwd: Path, on_line: Callable[[str], None] | None) -> dict[str, Any]:
    record = new_record(argv, cwd, conninfo, rehearsal=False)
    timeline = Timeline()
    try:
        with timeline.step("freeze point", f"{mode}") as step:
            point = fz.take(config, programs, repo, conninfo, mode, f"pgdr-migrate-{record['id'][:22]}")
            step.detail = f"restore point {point.restore_point} at LSN {point.lsn}, revision {point.revision}"
    except BaseException as exc:
        record.update(outcome="refused", error=getattr(exc, "message", str(exc)) or type(exc).__name__,
                      timeline=timeline.as_list())
        records.write(repo, record)
        raise
    record["freeze"] = point.as_dict()
    record["timeline"] = timeline.as_list()
    records.write(repo, record)      # a pgdr killed from here on still leaves the freeze point on record
    result = CommandResult(None, 0.0, [], "pgdr stopped before the command ended")
    try:
        with timeline.step("migration", record["command"]) as step:
            result = run_command(config, argv, command_env(config), cwd, on_line)
            step.evidence.update(result.as_dict())
            if not result.ok:
                step.result = "failed"
                step.detail = result.error or ""
        # rows with xmin from here on were written after the migration (by the application)
        record.update(outcome="ok" if result.ok else "failed", **result.as_dict(),
                      duration_s=round(result.seconds, 3), revision_before=point.revision,
                      end_xid=fz.next_xid(conninfo))
        with timeline.step("schema after") as step:
            revision = fz.read_revision(conninfo, config.migrate.revision_query)
            changes = schema.diff(point.tables, schema.snapshot(conninfo, config.migrate.ignore_tables))
            print_ = schema.fingerprint(programs, conninfo)
            step.detail = changes.summary()
        record.update(revision_after=revision, fingerprint_after=print_,
                      schema_changed=print_ != point.fingerprint, diff=changes.as_dict())
    except BaseException as exc:
        record.update(outcome="failed", **{**result.as_dict(), "error": getattr(exc, "message", str(exc))
                                           or type(exc).__name__})
        raise
    finally:
        record.update(finished_at=datetime.now(UTC).isoformat(), timeline=timeline.as_list())
        records.write(repo, record)
    return record
