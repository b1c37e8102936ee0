"""`pgdr backup` (physical) without Typer: the fast entry (cli/entry.py) and cmd_backup share it."""

from __future__ import annotations

import sys
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

from pgdr.cli import output

if TYPE_CHECKING:
    from pgdr.backup.physical import BackupResult
    from pgdr.cli.context import AppContext
    from pgdr.config import Config


def physical_backup(obj: AppContext, *, incremental: bool, json_out: bool) -> None:
    """Take a (full or incremental) base backup and print its summary."""
    from pgdr.backup.physical import take_physical_backup

    with output.console.status("backing up…") if (sys.stdout.isatty() and not json_out) else nullcontext():
        def physical_possible() -> None:
            obj.require_physical("a physical base backup", "take a logical backup: `pgdr backup --logical`")

        # mode = "logical" refuses before anything starts (no checkpoint on that server);
        # "auto" asks the server, which take_physical_backup does beside the copy.
        auto = obj.config.cluster.mode == "auto"
        if not auto:
            physical_possible()
        result = take_physical_backup(obj.config, obj.programs, obj.repo, incremental=incremental,
                                      preflight=physical_possible if auto else None)
    print_summary(result, json_out)


def fast_physical_backup(obj: AppContext, *, json_out: bool) -> None:
    """A plain `pgdr backup` (cli/entry.py): pg_basebackup starts from the few keys
    backup/early.py reads by hand, and the config is validated beside the copy, where any
    error of it ends the copy and is reported as it always was (one line, exit 2). A
    file the early reading does not accept is validated first, as before."""
    from pgdr.backup.early import read_early
    from pgdr.config_file import find_config_path, read_config_file

    path = find_config_path(obj.config_path)
    raw = read_config_file(path)
    plan = read_early(raw)
    if plan is None:
        physical_backup(obj, incremental=False, json_out=json_out)
        return
    from pgdr.backup.physical import copy_and_check
    from pgdr.errors import ConfigError, PgdrError
    from pgdr.pg.programs import Programs, RunAs
    from pgdr.repo.layout import Repository, refuse_if_not_plain

    def validated() -> Config:
        from pgdr.config import validate_config

        return obj.adopt(validate_config(raw, path))

    def physical_possible() -> None:
        obj.require_physical("a physical base backup", "take a logical backup: `pgdr backup --logical`")

    try:
        refuse_if_not_plain(plan.repository)
        programs = Programs(plan.bindir, RunAs(plan.os_user))
        with output.console.status("backing up…") if (sys.stdout.isatty() and not json_out) else nullcontext():
            result = copy_and_check(plan, validated, programs, Repository(plan.repository, programs.run_as),
                                    preflight=physical_possible if plan.mode == "auto" else None)
    except PgdrError as exc:
        if not obj.config_loaded and not isinstance(exc, ConfigError):
            validated()  # failed before the config was validated: its error comes first, as before
        raise
    print_summary(result, json_out)


def print_summary(result: BackupResult, json_out: bool) -> None:
    m = result.manifest
    summary: dict[str, Any] = {"id": m.id, "kind": m.display_kind, "parent": m.parent, "start_lsn": m.start_lsn, "stop_lsn": m.stop_lsn,
               "timeline": m.timeline, "duration_s": m.duration_s, "bytes_on_disk": m.bytes_on_disk,
               "bytes_logical": m.bytes_logical, "path": str(result.path),
               "relations": len(m.relations), "removed_partials": result.removed_partials}
    if m.kind == "logical":
        summary["tables"] = {db: d.tables for db, d in m.databases.items()}
    if json_out:
        output.print_json(summary)
        return
    rate = m.bytes_logical / 1048576 / m.duration_s if m.duration_s else 0
    output.console.print(
        f"backup {m.id} ({m.display_kind}{f' of {m.parent}' if m.parent else ''}) complete: {output.human_bytes(m.bytes_logical)} → "
        f"{output.human_bytes(m.bytes_on_disk)} in {m.duration_s:.1f}s ({rate:.0f} MB/s), "
        f"LSN {m.start_lsn}–{m.stop_lsn}")
