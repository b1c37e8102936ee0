"""`pgdr migrate --rollback ID|latest`: the right way back from a recorded migration.

The plan compares the schema with the freeze point, both as the migration recorded it
and as it is now:
- nothing changed (same fingerprint and revision): nothing to do;
- only schema changed (tables/columns added, defaults or NOT NULL changed): the tool's
  own downgrade to the recorded revision ([migrate] downgrade_command), then proof that
  the fingerprint is the freeze point's again;
- a table or column was dropped, or a column's type changed (the data may be gone, and
  no downgrade brings it back): a point-in-time restore to the freeze point's restore
  point into a NEW instance in --target-dir. The rows written on the primary since the
  freeze point (xmin at or past its next xid) are counted per table - after the
  migration's end (the application's) and during it (its own rewrites, and the
  application's meanwhile) - with a `pgdr salvage` line for each (into a new table in
  the restored instance: the live table may have columns the restored one lacks), and
  the archived WAL since the freeze point is searched for deletes, updates, truncates
  and drops (find-disaster). With cutover, the rows written after the migration are
  first copied into new tables in the restored instance (nothing of them stays behind
  on the fenced primary), then `pgdr cutover` puts it into service; without, it is left
  running for the user to inspect and salvage from.
Every step goes to the rollback's record (kind migrate-rollback).
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from psycopg import sql

from pgdr.config import Config
from pgdr.errors import PgdrError, UsageError
from pgdr.failover.cutover import cutover as run_cutover
from pgdr.migrate import freeze as fz
from pgdr.migrate import records, schema
from pgdr.migrate.run import command_env, run_command
from pgdr.pg.connect import session
from pgdr.pg.conninfo import mask, parse, with_params
from pgdr.pg.lsn import parse_lsn
from pgdr.pg.programs import Programs
from pgdr.repo.layout import Repository
from pgdr.repo.unfinished import owner_dead
from pgdr.restore.pitr import restore_to_point
from pgdr.restore.recovery import RecoveryTarget
from pgdr.restore.salvage import salvage
from pgdr.restore.walscan import Bound, find_disasters
from pgdr.runbook.timeline import Timeline

CUTOVER_NEXT = "put the restored instance into service with `pgdr cutover --to-dir DIR` (the next step)"
CUTOVER_SKIPPED = "left running for inspection and salvage; " + CUTOVER_NEXT


class RollbackFailed(PgdrError):
    """The rollback ran but the schema is not the freeze point's."""


@dataclass
class Plan:
    migration_id: str
    action: Literal["nothing", "downgrade", "pitr"]
    reason: str
    revision: str | None                  # the freeze point's revision
    restore_point: str | None
    diff_now: dict[str, Any] = field(default_factory=dict)
    downgrade: list[str] = field(default_factory=list)
    cutover: bool = False                 # pitr: put the restored instance into service

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        if self.action == "nothing":
            return f"nothing to roll back: {self.reason}"
        if self.action == "downgrade":
            return f"downgrade: run `{shlex.join(self.downgrade)}` ({self.reason})"
        return (f"point-in-time restore to restore point {self.restore_point} into a new instance "
                f"({self.reason})" + (", then cut over to it" if self.cutover else ""))


def make_plan(config: Config, programs: Programs, record: dict[str, Any], *, cutover: bool = False) -> Plan:
    """cutover: only for a rollback by PITR (refused otherwise). Refuses while the migration's own pgdr still runs: its command may still be changing
    the schema the plan is read from."""
    if record.get("outcome") == "running" and not owner_dead(record):
        raise UsageError(f"migration {record['id']} is still running (pgdr pid {record['owner'].get('pid')})",
                         hint="wait for it to end, or stop that pgdr (its command ends with it)")
    freeze = record.get("freeze")
    if record.get("outcome") == "refused" or not freeze:
        return Plan(record["id"], "nothing", "the migration never started (its freeze point was refused)",
                    None, None)
    conninfo = fz.target_conninfo(config)
    now = schema.diff(freeze["tables"], schema.snapshot(conninfo, config.migrate.ignore_tables))
    recorded = schema.SchemaDiff.from_dict(record.get("diff") or {})
    revision_now = fz.read_revision(conninfo, config.migrate.revision_query)
    same_print = schema.fingerprint(programs, conninfo) == freeze["fingerprint"]
    target = freeze.get("revision")
    downgrade = [a.replace("{revision}", target or "base") for a in config.migrate.downgrade_command]
    base = Plan(record["id"], "nothing", "", target, freeze["restore_point"], now.as_dict(), downgrade)
    if recorded.destructive or now.destructive:
        base.action = "pitr"
        base.reason = "data may be gone: " + (now if now.destructive else recorded).summary()
    elif same_print and revision_now == target:
        base.reason = f"the schema and revision ({target}) are the freeze point's"
    else:
        base.action = "downgrade"
        base.reason = (f"schema only: {now.summary()}; revision {revision_now} -> {target or 'base'}")
    if cutover and base.action != "pitr":
        raise UsageError(f"--cutover: this rollback is {'a downgrade' if base.action == 'downgrade' else 'not needed'}"
                         f" ({base.reason}); there is no restored instance to cut over to")
    base.cutover = cutover
    return base


def _age_at_most(xid: int) -> str:
    """SQL: the row's xmin is xid or later (age() counts back from now, wraparound-safe)."""
    return f"age(xmin) <= age('{xid}'::xid)"


def written_since(conninfo: str, freeze_xid: int, end_xid: int | None, tables: list[str]) -> list[dict[str, Any]]:
    """Rows on the primary whose xmin is at or past the freeze point's next xid, per table:
    `after` the migration's end (the application's writes; all of them when the end is not
    recorded) and `during` it (the migration's own rewrites and backfills, and whatever the
    application wrote meanwhile - xmin cannot tell them apart)."""
    out = []
    end = end_xid if end_xid is not None else freeze_xid
    query = sql.SQL("select count(*) filter (where {after})::bigint as after, count(*)::bigint as since "
                    "from {} where {since}")
    with session(conninfo, what="rows written since the freeze point", statement_timeout=0) as conn:
        for name in tables:
            schema_name, _, table = name.partition(".")
            row = conn.execute(query.format(sql.Identifier(schema_name, table), after=sql.SQL(_age_at_most(end)),
                                            since=sql.SQL(_age_at_most(freeze_xid)))).fetchone()
            if row and row["since"]:
                out.append({"table": name, "rows": int(row["after"]),
                            "during_migration": int(row["since"]) - int(row["after"])})
    return out


def execute(config: Config, programs: Programs, repo: Repository, record: dict[str, Any], plan: Plan, *,
            target_dir: Path | None = None, port: int | None = None,
            on_line: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the plan; returns the rollback's record (saved). Raises RollbackFailed when the
    downgrade did not bring the freeze point's schema back."""
    if plan.action == "pitr" and target_dir is None:
        raise UsageError("this rollback restores to the freeze point into a new instance: give --target-dir DIR")
    with fz.exclusive(fz.target_conninfo(config)):
        return _execute(config, programs, repo, record, plan, target_dir, port, on_line)


def _execute(config: Config, programs: Programs, repo: Repository, record: dict[str, Any], plan: Plan,
             target_dir: Path | None, port: int | None, on_line: Callable[[str], None] | None) -> dict[str, Any]:
    timeline = Timeline()
    out: dict[str, Any] = {"kind": records.ROLLBACK_KIND,
                           "migration_id": record["id"], "plan": plan.as_dict(),
                           "started_at": datetime.now(UTC).isoformat(), "outcome": "running"}
    try:
        if plan.action == "downgrade":
            _downgrade(config, programs, record, plan, timeline, on_line)
        elif plan.action == "pitr":
            assert target_dir is not None
            out.update(_pitr(config, programs, repo, record, plan, target_dir, port, timeline))
        else:
            timeline.skip("rollback", plan.reason)
        out["outcome"] = "ok"
    except BaseException as exc:
        out.update(outcome="failed", error=getattr(exc, "message", str(exc)) or type(exc).__name__)
        raise
    finally:
        # ids sort by time: the rollback's is its end, after the restore record it holds
        out.update(id=records.new_id(records.ROLLBACK_KIND), timeline=timeline.as_list(),
                   finished_at=datetime.now(UTC).isoformat())
        records.write(repo, out)
    return out


def _downgrade(config: Config, programs: Programs, record: dict[str, Any], plan: Plan, timeline: Timeline,
               on_line: Callable[[str], None] | None) -> None:
    conninfo = fz.target_conninfo(config)
    with timeline.step("downgrade", shlex.join(plan.downgrade)) as step:
        result = run_command(config, plan.downgrade, command_env(config), Path(record.get("cwd") or "."), on_line)
        step.evidence.update(result.as_dict())
        if not result.ok:
            raise RollbackFailed(f"the downgrade failed ({result.error}): {(result.tail or [''])[-1]}",
                                 hint="fix it and run the rollback again, or roll back by PITR to the "
                                      f"restore point: pgdr restore --to-name {plan.restore_point} --target-dir DIR")
    with timeline.step("schema is the freeze point's") as step:
        freeze = record["freeze"]
        left = schema.diff(freeze["tables"], schema.snapshot(conninfo, config.migrate.ignore_tables))
        revision = fz.read_revision(conninfo, config.migrate.revision_query)
        same = schema.fingerprint(programs, conninfo) == freeze["fingerprint"]
        step.evidence.update(revision=revision, fingerprint_equal=same, diff=left.as_dict())
        if not same or revision != plan.revision:
            raise RollbackFailed(f"after the downgrade the schema is not the freeze point's: {left.summary()}; "
                                 f"revision {revision} (freeze point: {plan.revision})",
                                 hint=f"restore to the freeze point: pgdr restore --to-name {plan.restore_point} "
                                      "--target-dir DIR")
        step.detail = f"fingerprint and revision {revision} equal the freeze point's"


def _pitr(config: Config, programs: Programs, repo: Repository, record: dict[str, Any], plan: Plan,
          target_dir: Path, port: int | None, timeline: Timeline) -> dict[str, Any]:
    freeze = record["freeze"]
    assert plan.restore_point is not None
    with timeline.step("restore to the freeze point", plan.restore_point) as step:
        restored = restore_to_point(config, programs, repo, RecoveryTarget("name", plan.restore_point),
                                    target_dir, port=port)
        step.detail = f"{restored.data_dir} on port {restored.port}, LSN {restored.reached.get('lsn')}"
        step.evidence["restore"] = restored.as_dict()
    conninfo = fz.target_conninfo(config)
    restored_db = with_params(restored.conninfo, dbname=parse(conninfo).get("dbname"))
    with timeline.step("rows written since the freeze point") as step:
        end_xid = record.get("end_xid")
        rows = written_since(conninfo, int(freeze["next_xid"]), end_xid,
                             sorted(set(freeze["tables"]) & set(schema.snapshot(conninfo,
                                                                              config.migrate.ignore_tables))))
        where = _age_at_most(int(end_xid if end_xid is not None else freeze["next_xid"]))
        for r in rows:
            r["salvage"] = (f"pgdr salvage --from {shlex.quote(mask(conninfo))} --into "
                            f"{shlex.quote(restored_db)} --table {shlex.quote(r['table'])} "
                            f"--where {shlex.quote(where)}")
        step.detail = ", ".join(f"{r['table']}: {r['rows']} after the migration, {r['during_migration']} during it"
                                for r in rows) or "none"
    with timeline.step("changes in the WAL since the freeze point") as step:
        found = find_disasters(programs, repo, since=Bound(lsn=parse_lsn(freeze["lsn"])), min_rows=1)
        changes = [d.as_dict() for d in found.disasters]
        step.detail = f"{len(changes)} transactions deleted, updated, truncated or dropped rows"
        step.evidence["errors"] = found.errors
    salvaged: list[dict[str, Any]] = []
    if plan.cutover:
        with timeline.step("salvage rows written since into the restored instance") as step:
            for r in (r for r in rows if r["rows"]):
                done = salvage(conninfo, restored_db, r["table"], where=where)
                salvaged.append(done.as_dict())
            step.detail = ", ".join(f"{d['source_table']} -> {d['target_table']}: {d['copied']}" for d in salvaged) \
                or "nothing to copy"
        with timeline.step("cutover", str(restored.data_dir)) as step:
            done_cut = run_cutover(config, programs, repo, restored.data_dir, assume_yes=True)
            step.detail = f"{done_cut.new_primary} is the primary; record {done_cut.record_path}"
            step.evidence["cutover"] = {k: done_cut.record.get(k) for k in ("outcome", "rto_seconds", "rpo",
                                                                           "next_steps", "record_path")}
    else:
        timeline.skip("cutover", CUTOVER_SKIPPED)
    return {"restored": {"data_dir": str(restored.data_dir), "port": restored.port,
                         "conninfo": restored_db, "socket_dir": str(restored.socket_dir),
                         "stop_with": f"pg_ctl -D {restored.data_dir} stop"},
            "written_since": rows, "salvaged": salvaged, "wal_changes": changes}
