"""Drill scenarios that recover data from the repository: an accidental DELETE and DROP,
a corrupted page, and a WAL segment lost from the archive."""

from __future__ import annotations

import shutil
import time
from datetime import UTC, datetime, timedelta

import psycopg

from pgdr.backup import archiver
from pgdr.backup.physical import take_physical_backup
from pgdr.drill.model import ScenarioResult, Target
from pgdr.drill.probe import missing_rows
from pgdr.drill.scenarios import DrillEnv
from pgdr.errors import PgdrError
from pgdr.pg.conninfo import with_params
from pgdr.repo.wal import WalArchive
from pgdr.restore.pitr import restore_to_point, stop_restored
from pgdr.restore.recovery import RecoveryTarget
from pgdr.restore.salvage import salvage
from pgdr.restore.verify import verify_backup
from pgdr.restore.walscan import Bound, find_disasters
from pgdr.runbook.timeline import Timeline
from pgdr.sandbox.workload import Writer
from pgdr.status import gather_status


def _count(conninfo: str, table: str) -> int:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        return int(conn.execute(f"select count(*) from {table}").fetchone()[0])  # type: ignore[index]


def _switch_and_wait(conninfo: str, archive: WalArchive, times: int = 1, timeout: float = 20) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for _ in range(times):
            conn.execute("insert into orders (customer_id) values (1)")
            name = conn.execute("select pg_walfile_name(pg_current_wal_lsn()) as f").fetchone()[0]  # type: ignore[index]
            conn.execute("select pg_switch_wal()")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(f.name >= name for f in archive.files() if not f.name.endswith(".history")):
            return
        time.sleep(0.1)


def accidental_delete(env: DrillEnv, result: ScenarioResult) -> None:
    """DELETE without WHERE and DROP TABLE under a writer; find, restore before, salvage back."""
    result.target = Target(env.targets.pitr.rto_s, 0, "rows")
    result.rpo_unit = "rows"
    timeline = Timeline()
    with env.sandbox("accidental-delete", standbys=0) as (sandbox, config, repo):
        app = sandbox.conninfo(sandbox.primary)
        take_physical_backup(config, env.programs, repo)
        writer = Writer(sandbox.conninfo(sandbox.primary, "postgres")).start()
        time.sleep(0.5)
        items_before, docs_before = _count(app, "order_items"), _count(app, "documents")
        since = datetime.now(UTC) - timedelta(seconds=1)
        with timeline.step("inject: DELETE FROM order_items; DROP TABLE documents"), \
                psycopg.connect(app, autocommit=True) as conn:
            conn.execute("delete from order_items")
            conn.execute("drop table documents")
        time.sleep(0.5)  # the application keeps writing after the accident
        if "empty-archive" in env.sabotage:
            # The archive, including the open segment, is lost and stays lost. The archiver
            # is not restarted: pg_receivewal would resume from its slot's restart_lsn, at
            # the start of the open segment, and refill the archive with exactly the WAL
            # that holds the accident (the primary keeps it for the slot) -- which is the
            # archive healing itself, not a lost archive.
            archiver.stop_background(repo)
            for f in [*repo.wal_dir.glob("*.zst"), *repo.incoming_dir.iterdir()]:
                f.unlink()
        started = time.monotonic()
        with timeline.step("pgdr find-disaster") as step:
            scan = find_disasters(env.programs, repo, since=Bound(time=since), kinds=("drop", "delete"), min_rows=100)
            found = {(d.kind, d.table): d for d in scan.disasters}
            step.evidence["found"] = [d.as_dict() for d in scan.disasters]
        delete = found.get(("delete", "public.order_items"))
        drop = found.get(("drop", "public.documents"))
        if delete is None or drop is None:
            writer.stop()
            result.reason = f"find-disaster did not name both: found {sorted(found)}"
            result.timeline = timeline.as_list()
            return
        first = min((delete, drop), key=lambda d: d.lsn)
        target_dir = env.base / "accidental-delete-restored"
        shutil.rmtree(target_dir, ignore_errors=True)
        try:
            with timeline.step(f"pgdr restore --before-xid {first.xid}") as step:
                restored = restore_to_point(config, env.programs, repo,
                                            RecoveryTarget("xid", str(first.xid), inclusive=False), target_dir)
                step.evidence["reached"] = restored.reached
            source = with_params(restored.conninfo, dbname="app")
            with timeline.step("pgdr salvage --merge order_items") as step:
                merged = salvage(source, app, "public.order_items", merge=True)
                step.evidence.update(inserted=merged.inserted, skipped=merged.skipped)
            with timeline.step("pgdr salvage --as documents") as step:
                copied = salvage(source, app, "public.documents", as_table="documents")
                step.evidence["copied"] = copied.copied
        finally:
            stop_restored(target_dir, env.programs)
            shutil.rmtree(target_dir, ignore_errors=True)
        result.rto_s = round(time.monotonic() - started, 3)
        stats = writer.stop()
        items_after, docs_after = _count(app, "order_items"), _count(app, "documents")
        lost_writes = missing_rows(app, stats.rows)
        result.rpo = float((items_before - items_after) + (docs_before - docs_after))
        result.timeline = timeline.as_list()
        result.evidence.update(order_items=[items_before, items_after], documents=[docs_before, docs_after],
                               delete_xid=delete.xid, drop_xid=drop.xid, writes_after_lost=len(lost_writes))
        result.passed = result.rpo == 0 and not lost_writes and result.within_target()
        result.reason = (f"found xids {delete.xid} (DELETE) and {drop.xid} (DROP); {merged.inserted} rows merged "
                         f"and {copied.copied} rows of the dropped table back; {len(lost_writes)} later writes lost")


def corruption(env: DrillEnv, result: ScenarioResult) -> None:
    """Damage a page; pg_checksums detects it; recover from the last verified backup plus WAL."""
    result.target = Target(env.targets.pitr.rto_s, 0, "commits")
    timeline = Timeline()
    with env.sandbox("corruption", standbys=0) as (sandbox, config, repo):
        app = sandbox.conninfo(sandbox.primary)
        backup = take_physical_backup(config, env.programs, repo).manifest
        with timeline.step("pgdr verify (the last verified backup)") as step:
            verified = verify_backup(config, env.programs, repo, backup.id)
            step.evidence["passed"] = verified.passed
        stats = Writer(sandbox.conninfo(sandbox.primary, "postgres")).run_for(1.0)
        with psycopg.connect(app, autocommit=True) as conn:
            relpath = conn.execute("select pg_relation_filepath('orders')").fetchone()[0]  # type: ignore[index]
            conn.execute("checkpoint")
        primary = sandbox.instance(sandbox.primary, env.programs)
        with timeline.step("inject: flip bytes in a page of orders (server stopped)"):
            primary.stop()
            with open(sandbox.primary.data_dir / relpath, "r+b") as fh:
                fh.seek(8192 * 2 + 4000)
                fh.write(b"\xde\xad\xbe\xef" * 16)
        started = time.monotonic()
        with timeline.step("pg_checksums --check detects it") as step:
            check = env.programs.run("pg_checksums", ["--check", "-D", str(sandbox.primary.data_dir)],
                                     ok_codes=(0, 1))
            bad = [ln for ln in check.stderr.splitlines() if "checksum verification failed" in ln]
            step.evidence.update(exit_code=check.returncode, failures=bad[:3])
        target_dir = env.base / "corruption-restored"
        shutil.rmtree(target_dir, ignore_errors=True)
        try:
            with timeline.step(f"pgdr restore --latest --backup {backup.id}") as step:
                restored = restore_to_point(config, env.programs, repo, RecoveryTarget("latest"), target_dir,
                                            backup_id=backup.id)
                step.evidence["reached"] = restored.reached
            rto = time.monotonic() - started
            with timeline.step("check recovered data") as step:
                source = with_params(restored.conninfo, dbname="app")
                lost = missing_rows(source, stats.rows)
                with psycopg.connect(source, autocommit=True) as conn:
                    conn.execute("select sum(length(status)) from orders")  # reads every page
                step.evidence["lost"] = len(lost)
        finally:
            stop_restored(target_dir, env.programs)
            shutil.rmtree(target_dir, ignore_errors=True)
        result.rto_s = round(rto, 3)
        result.rpo = float(len(lost))
        result.timeline = timeline.as_list()
        detected = check.returncode == 1 and bool(bad)
        result.evidence.update(detected=detected, verified_backup=backup.id, acknowledged=len(stats.acknowledged))
        result.passed = detected and verified.passed and result.within_target()
        result.reason = (f"pg_checksums found {len(bad)} bad block(s); recovered from {backup.id} + WAL with "
                         f"{len(lost)} of {len(stats.acknowledged)} acknowledged commits missing")


def missing_wal(env: DrillEnv, result: ScenarioResult) -> None:
    """A segment vanishes; status reports it; PITR stops with the clear error; a new backup closes it."""
    result.target = Target(env.targets.pitr.rto_s, 0, "commits")
    timeline = Timeline()
    with env.sandbox("missing-wal", standbys=0) as (sandbox, config, repo):
        app = sandbox.conninfo(sandbox.primary)
        take_physical_backup(config, env.programs, repo)
        archive = WalArchive(repo)
        _switch_and_wait(app, archive, times=4)
        segments = [s.name() for s in archive.segments()]
        victim = segments[-2]
        with timeline.step(f"inject: remove {victim} from the archive"):
            (repo.wal_dir / f"{victim}.zst").unlink()
        started = time.monotonic()
        with timeline.step("pgdr status reports the gap") as step:
            report = gather_status(config, repo)
            gap = next(c for c in report.checks if c.name == "archive gaps")
            step.evidence.update(status=gap.status, summary=gap.summary)
        target_dir = env.base / "missing-wal-restored"
        shutil.rmtree(target_dir, ignore_errors=True)
        error = None
        with timeline.step("pgdr restore --latest stops with the clear error") as step:
            try:
                restore_to_point(config, env.programs, repo, RecoveryTarget("latest"), target_dir)
                stop_restored(target_dir, env.programs)
            except PgdrError as exc:
                error = exc.message
            step.evidence["error"] = error
        shutil.rmtree(target_dir, ignore_errors=True)
        with timeline.step("pgdr backup closes the gap"):
            take_physical_backup(config, env.programs, repo)
            _switch_and_wait(app, archive, times=1)
        with timeline.step("pgdr restore --latest works again") as step:
            try:
                restored = restore_to_point(config, env.programs, repo, RecoveryTarget("latest"), target_dir)
                step.evidence["reached"] = restored.reached
                ok_after = True
            except PgdrError as exc:
                step.evidence["error"] = exc.message
                ok_after = False
            finally:
                stop_restored(target_dir, env.programs)
                shutil.rmtree(target_dir, ignore_errors=True)
        after = next(c for c in gather_status(config, repo).checks if c.name == "archive gaps")
        result.rto_s = round(time.monotonic() - started, 3)
        result.rpo = 0.0
        result.timeline = timeline.as_list()
        named = error is not None and victim in error
        result.evidence.update(gap_status=gap.status, error=error, status_after=after.status)
        result.passed = gap.status == "fail" and named and ok_after and after.status != "fail"
        result.reason = (f"status failed on the gap, PITR stopped naming {victim}, a new backup restored PITR"
                         if result.passed else
                         f"gap check {gap.status}; error named the segment: {named}; PITR after backup: {ok_after}; "
                         f"status after: {after.status}")
