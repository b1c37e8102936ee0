"""`pgdr verify`: restore a backup into a scratch instance and prove it.

Physical: every file hashed (BLAKE3, or sha256 in older backups) while it is extracted, tablespaces into the
scratch folder; pg_verifybackup beside the cross-check of pgdr.json with backup_manifest,
backup_label and pg_control; recovery to the backup's consistent point (promoted); then
the checks' extensions and, when it saves writing unvacuumed tables again, a restart as
a hot standby of itself (see _prepare); then side by side pg_amcheck --heapallindexed,
the SQL scans (orphaned foreign-key rows,
duplicate keys, exact row counts compared with the previous verified physical backup)
and the checksum sweep, then user smoke queries. Data checksums are proven online, after
recovery (a base backup's pages may be torn until WAL replay fixes them): every page read
into shared buffers has its checksum verified, and pg_amcheck's heap reads plus the sweep
read every block of every relation fork (dbchecks.checksum_sweep says which covers what).
The archived WAL after the backup, up to the archive's end on its timeline (decompress,
page headers, gaps), is checked in a thread beside all of that.

Logical: the digest of every file, a fresh initdb, pg_restore -j --no-tablespaces of each
database, the same checks, and row counts that must equal the dump's exactly.

The verdict is written durably to <backup>/verify.json ("backup_ok" says whether the
backup itself is sound when only the archive after it is not). The scratch instance
is stopped and its folder removed afterwards, also on failure and on Ctrl-C. A shared
lock on the backup and the archive keeps `pgdr expire` away meanwhile.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pgdr.checks import Check, Status
from pgdr.config import Config
from pgdr.errors import ConfigError, CouldNotRun, PgdrError
from pgdr.fsutil import exclusive_lock, write_json_durable
from pgdr.pg.instance import Instance
from pgdr.pg.lsn import parse_lsn
from pgdr.pg.process import dir_progress
from pgdr.pg.programs import Programs
from pgdr.preload import preload
from pgdr.repo.layout import Repository
from pgdr.repo.locks import reading
from pgdr.repo.manifest import BackupManifest, backup_dir, find_backup, list_backups
from pgdr.repo.records import VERIFY_RECORD, read_verification
from pgdr.restore.access import bootstrap_superuser
from pgdr.restore.extract import (
    DEFAULT_METHOD,
    ExtractMethod,
    check_files,
    extract_physical,
    plan_tablespaces,
    tablespace_files,
)
from pgdr.restore.prove import cross_check, verify_backup_files
from pgdr.restore.recovery import RecoveryTarget, configure_recovery, wait_until_promoted, zstd_fetch_command
from pgdr.restore.scratch import Scratch, reap_stale, scratch_root
from pgdr.restore.walcheck import ArchiveCheck, check_archive

# dbchecks and pgdr.pg.connect (psycopg, ~40-50 ms to import) are imported in the functions
# that use them: preload() loads them on a thread while zstd and tar extract the backup.

WAL_CHECKS = ("archived WAL",)

# Writing this much WAL and heap costs about what the restart does (~0.1 s per 64 MB measured
# on the random-text bench, scale 30: 470 MB of pages written in 0.4-1.1 s more count time)
READ_ONLY_ABOVE = 8 * 1024 * 1024
READ_ONLY = ("\n# pgdr verify: the checks run on a hot standby of this copy, which writes nothing\n"
             "restore_command = ''\nrecovery_target = ''\nprimary_conninfo = ''\n")

log = logging.getLogger(__name__)


@dataclass
class TimedCheck:
    check: Check
    duration_s: float

    def as_dict(self) -> dict[str, Any]:
        return {**self.check.as_dict(), "duration_s": round(self.duration_s, 3)}


@dataclass
class VerifyResult:
    backup_id: str
    kind: str
    started_at: datetime
    checks: list[TimedCheck] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)
    restore_s: float = 0.0
    total_s: float = 0.0
    backup_bytes: int = 0
    row_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    baseline: str | None = None
    kept: dict[str, Any] | None = None
    record_path: Path | None = None
    finished_at: datetime | None = None

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.check.status != "fail" for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c.check for c in self.checks if c.check.status == "fail"]

    def as_dict(self) -> dict[str, Any]:
        return {
            "backup_id": self.backup_id, "kind": self.kind, "passed": self.passed,
            "started_at": self.started_at.isoformat(),
            "finished_at": (self.finished_at or datetime.now(UTC)).isoformat(),
            "restore_s": round(self.restore_s, 3), "total_s": round(self.total_s, 3),
            "backup_bytes": self.backup_bytes,
            "phases": {k: round(v, 3) for k, v in self.phases.items()},
            "checks": [c.as_dict() for c in self.checks],
            # the backup itself is sound even when only the archive after it is not
            "backup_ok": bool(self.checks) and all(c.check.status != "fail" for c in self.checks
                                                   if c.check.name not in WAL_CHECKS),
            "row_counts": self.row_counts, "baseline": self.baseline, "kept": self.kept,
        }


NO_SPACE = "No space left on device"


class _Run:
    """Collects checks and phase timings while a verification runs."""

    def __init__(self, result: VerifyResult, scratch: Path | None = None) -> None:
        self.result = result
        self.scratch = scratch

    def no_space(self, step: str) -> CouldNotRun:
        """A full scratch disk says nothing about the backup: verify could not run."""
        where = self.scratch or Path("/")
        try:
            free = f"{shutil.disk_usage(where).free} bytes free"
        except OSError:
            free = "no space"
        return CouldNotRun(f"verify could not run: scratch disk full during {step} ({free} at {where}); "
                           f"backup {self.result.backup_id} keeps its status",
                           hint="free space there or set [verify] scratch_dir to a larger disk")

    def add(self, name: str, status: Status, summary: str, duration: float,
            evidence: dict[str, Any] | None = None, hint: str | None = None) -> Check:
        check = Check(name, status, summary, evidence or {}, hint)
        self.result.checks.append(TimedCheck(check, duration))
        return check

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.result.phases[name] = self.result.phases.get(name, 0.0) + time.monotonic() - t0

    def step(self, name: str, fn: Callable[[], Check | None]) -> bool:
        """Run fn (which adds its own check); a PgdrError becomes a failing check."""
        t0 = time.monotonic()
        try:
            with self.phase(name):
                check = fn()
        except CouldNotRun:
            raise
        except PgdrError as exc:
            if NO_SPACE in exc.message:
                raise self.no_space(name) from None
            self.add(name, "fail", exc.message, time.monotonic() - t0, hint=exc.hint)
            return False
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise self.no_space(name) from None
            raise
        return check is None or check.status != "fail"


def verify_backup(config: Config, programs: Programs, repo: Repository, backup_id: str = "latest",
                  *, keep: bool = False, port: int | None = None, jobs: int | None = None,
                  method: ExtractMethod | None = None) -> VerifyResult:
    if config.source is None:
        raise ConfigError("verify needs the config file's path (for restore_command)")
    manifest = find_backup(repo, backup_id)
    programs = programs.for_server(version_num=manifest.pg_version_num, what=f"backup {manifest.id}")
    folder = backup_dir(repo, manifest.id)
    jobs = jobs or max(2, os.cpu_count() or 2)
    result = VerifyResult(manifest.id, manifest.kind, datetime.now(UTC),
                          backup_bytes=manifest.bytes_on_disk)
    run = _Run(result, scratch_root(config))
    t_start = time.monotonic()
    with exclusive_lock(repo.lock_path(f"verify-{manifest.id}"), f"verify of {manifest.id}"), \
            reading(repo, manifest.id):
        # Logical dumps are hashed here; physical backups while they are extracted.
        if manifest.kind == "logical" and not run.step("files", lambda: _files_check(run, folder, manifest)):
            return _finish(run, repo, folder, t_start)
        for stale in reap_stale(scratch_root(config)):
            log.warning("removed %s, left by a verify that was killed", stale)
        _enough_scratch_space(scratch_root(config), manifest, result.backup_id)
        scratch = Scratch.create(scratch_root(config), f"verify-{manifest.id}", programs, port=port,
                                 port_range=config.verify.ports)
        try:
            if manifest.kind == "physical":
                _verify_physical(run, config, programs, repo, manifest, folder, scratch, jobs, method)
            else:
                _verify_logical(run, config, programs, manifest, folder, scratch, jobs)
            if keep and run.result.checks:
                _writable_again(scratch.instance)
                scratch.keep()  # the user asked to keep it running
                result.kept = {"folder": str(scratch.folder), "data_dir": str(scratch.instance.data_dir),
                               "port": scratch.instance.port,
                               "socket_dir": str(scratch.instance.socket_dir),
                               "conninfo": scratch.instance.conninfo()}
        finally:
            if not keep:
                with run.phase("cleanup"):
                    problems = scratch.destroy()
                if problems:
                    run.add("cleanup", "warn", "; ".join(problems), 0.0)
        return _finish(run, repo, folder, t_start)


def _enough_scratch_space(root: Path, manifest: BackupManifest, backup_id: str) -> None:
    """Refuse at once (could not run, exit 3) when the restored copy cannot fit."""
    root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(root).free
    need = manifest.bytes_logical or manifest.bytes_on_disk
    if free < need:
        raise CouldNotRun(f"verify could not run: scratch disk too small ({free} bytes free at {root}, "
                          f"the restored copy needs about {need}); backup {backup_id} keeps its status",
                          hint="free space there or set [verify] scratch_dir to a larger disk")


def _finish(run: _Run, repo: Repository, folder: Path, t_start: float) -> VerifyResult:
    run.result.total_s = time.monotonic() - t_start
    run.result.finished_at = datetime.now(UTC)
    path = folder / VERIFY_RECORD
    write_json_durable(path, run.result.as_dict())
    if repo.store is not None:
        from pgdr.repo.remote import push_verification

        push_verification(repo, folder.name)
    run.result.record_path = path
    return run.result


# ---- steps ---------------------------------------------------------------------------

def _digests(manifest: BackupManifest) -> str:
    """What the files check compared: "blake3", or "sha256" for a backup written before."""
    return "/".join(sorted({entry.algorithm for entry in manifest.files.values()})) or "digests"


def _files_check(run: _Run, folder: Path, manifest: BackupManifest) -> Check:
    t0 = time.monotonic()
    problems = check_files(folder, manifest)
    if problems:
        first = problems[0]
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        return run.add("files", "fail", f"{first.file}: {first.problem}{more}", time.monotonic() - t0,
                       {"problems": [{"file": p.file, "problem": p.problem} for p in problems]},
                       hint="the backup is damaged: take a new one (`pgdr backup`)")
    return run.add("files", "ok", f"{len(manifest.files)} files match their {_digests(manifest)}",
                   time.monotonic() - t0, {"files": len(manifest.files)})


def _verify_physical(run: _Run, config: Config, programs: Programs, repo: Repository,
                     manifest: BackupManifest, folder: Path, scratch: Scratch, jobs: int,
                     method: ExtractMethod | None) -> None:
    # The archived WAL after the backup reads only the repository: it runs beside
    # everything else (extraction, proving, recovery, the SQL checks); its verdict is
    # recorded after the backup's own checks, whether they passed or not.
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pgdr-walcheck")
    wal = pool.submit(_probe_archive, repo, manifest)
    preload("pgdr.restore.dbchecks")  # psycopg and the checks: needed once the copy runs
    try:
        _physical_steps(run, config, programs, repo, manifest, folder, scratch, jobs, method)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)  # interrupted: clean up now, not after it
        raise
    run.step("archived WAL", lambda: _wal_check(run, manifest, wal.result()))
    pool.shutdown()


def _physical_steps(run: _Run, config: Config, programs: Programs, repo: Repository,
                    manifest: BackupManifest, folder: Path, scratch: Scratch, jobs: int,
                    method: ExtractMethod | None) -> None:
    inst = scratch.instance
    assert config.source is not None

    # Tablespaces go into the scratch folder, never to the source's locations.
    places = plan_tablespaces(manifest, inst.data_dir, {oid: scratch.folder / "tablespaces" / oid
                                                        for oid in tablespace_files(manifest)})

    def extract() -> Check:
        t0 = time.monotonic()
        if places:
            (scratch.folder / "tablespaces").mkdir(mode=0o700, exist_ok=True)
            programs.run_as.chown(scratch.folder / "tablespaces")
        done = extract_physical(folder, inst.data_dir, programs, method or DEFAULT_METHOD,
                                manifest=manifest, tablespaces=places, writeback=False)
        return run.add("files", "ok", f"{done.files_checked} files match their {_digests(manifest)} (hashed while "
                       f"extracting{f', {len(places)} tablespace(s)' if places else ''})",
                       time.monotonic() - t0, {"files": done.files_checked, "tablespaces": len(places)})

    if not run.step("files", extract):
        return
    run.result.phases["extract"] = run.result.phases.pop("files", 0.0)

    # pg_verifybackup and the pgdr.json cross-check only read the extracted files (nothing
    # has changed them yet): side by side, both verdicts recorded, pg_verifybackup's first.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pgdr-prove") as prove_pool:
        t_meta = time.monotonic()

        def timed_cross_check() -> tuple[list[Any], float]:
            found = cross_check(folder, inst.data_dir, manifest, programs)
            return found, time.monotonic() - t_meta

        meta = prove_pool.submit(timed_cross_check)

        def verifybackup() -> Check:
            t0 = time.monotonic()
            ok, lines = verify_backup_files(folder, inst.data_dir, programs)
            if not ok:
                bad = [ln for ln in lines if "error" in ln.lower()] or lines
                return run.add("pg_verifybackup", "fail", bad[0] if bad else "failed", time.monotonic() - t0,
                               {"output": lines[:20]})
            return run.add("pg_verifybackup", "ok", lines[-1] if lines else "backup successfully verified",
                           time.monotonic() - t0)

        files_ok = run.step("pg_verifybackup", verifybackup)

        def metadata() -> Check:
            mismatches, seconds = meta.result()
            if mismatches:
                return run.add("manifest", "fail", mismatches[0].describe(), seconds,
                               {"mismatches": [m.__dict__ for m in mismatches]},
                               hint="pgdr.json was edited or belongs to another backup")
            sealed = "sealed, " if manifest.manifest_sha256 else "NOT sealed (older backup), "
            return run.add("manifest", "ok" if manifest.manifest_sha256 else "warn",
                           f"pgdr.json {sealed}LSNs, timeline, system identifier and stop time match "
                           "backup_manifest, backup_label and pg_control", seconds)

        meta_ok = run.step("manifest", metadata)
    if not (files_ok and meta_ok):
        return

    def configure() -> None:
        # Recovery to consistency needs only the WAL the backup carries; WAL read ahead
        # from the archive that is damaged counts as absent here (the "archived WAL"
        # check above judges the archive), so it cannot fail the backup itself.
        lenient = zstd_fetch_command(repo.wal_dir, programs.run_as, damaged_exit=1)
        configure_recovery(inst.data_dir, places, programs, config_path=config.source,  # type: ignore[arg-type]
                           socket_dir=inst.socket_dir,
                           target=RecoveryTarget("immediate"),
                           extra_settings=scratch.settings(),
                           restore_command=lenient)
        inst.superuser = bootstrap_superuser(inst.data_dir)  # reached as the source's own superuser

    if not run.step("configure", configure):
        return

    def start() -> Check:
        t0 = time.monotonic()
        inst.start(timeout=600)
        info = wait_until_promoted(inst)
        seconds = time.monotonic() - t0
        run.result.restore_s = run.result.phases.get("extract", 0.0) + seconds
        evidence = {**info, "recovery_s": round(seconds, 3), "stop_lsn": manifest.stop_lsn}
        if parse_lsn(str(info["lsn"])) < parse_lsn(manifest.stop_lsn):
            return run.add("restore", "fail", f"recovery ended at {info['lsn']}, before the backup's "
                           f"end {manifest.stop_lsn}", seconds, evidence)
        return run.add("restore", "ok", f"recovered to consistency and promoted in {seconds:.1f}s "
                       f"(LSN {info['lsn']})", seconds, evidence)

    if not run.step("restore", start):
        return
    from pgdr.restore import dbchecks

    dbnames = dbchecks.databases(inst)
    _common_checks(run, config, programs, scratch, dbnames, jobs, manifest=manifest)
    _compare_physical_counts(run, config, repo, manifest)
    # Left running: Scratch.destroy stops it (SIGQUIT, woken by the exit: no shutdown
    # checkpoint, data checksums were proven online), or --keep hands it over as it is.
    # A `pg_ctl -m immediate -w stop` here cost ~0.1 s, pg_ctl looking every 100 ms.


def _probe_archive(repo: Repository, manifest: BackupManifest) -> tuple[ArchiveCheck | PgdrError, float]:
    """The archived WAL after the backup, up to the archive's end on the timeline recovery
    would follow (run in a thread beside the rest of verify); a PgdrError is returned to
    be recorded as the check's failure, not raised in the thread."""
    t0 = time.monotonic()
    try:
        found: ArchiveCheck | PgdrError = check_archive(
            repo, parse_lsn(manifest.stop_lsn) // manifest.wal_segment_size, manifest.timeline)
    except PgdrError as exc:
        found = exc
    return found, time.monotonic() - t0


def _wal_check(run: _Run, manifest: BackupManifest, probed: tuple[ArchiveCheck | PgdrError, float]) -> Check:
    """PITR from this backup is possible only as far as the archive after it is sound."""
    found, seconds = probed
    if isinstance(found, PgdrError):
        raise found
    if found.ok:
        return run.add("archived WAL", "ok", found.summary(), seconds, found.as_dict())
    return run.add("archived WAL", "fail", f"PITR from {manifest.id} stops early: {found.summary()}",
                   seconds, found.as_dict(),
                   hint="take a new base backup now (`pgdr backup`); recovery cannot pass that segment")


def _data_checksums(run: _Run, manifest: BackupManifest, sweep: dict[str, Any] | Exception,
                    found: list[tuple[str, str]], seconds: float, amcheck_ok: bool) -> Check:
    """Every page of every relation fork read through shared buffers, which verify each
    page's checksum on read (see dbchecks.checksum_sweep for what covers what). found:
    (who read it, message) for every "invalid page" ERROR pg_amcheck, the SQL scans or the
    sweep hit."""
    from pgdr.restore import dbchecks

    if isinstance(sweep, Exception):
        message = sweep.message if isinstance(sweep, PgdrError) else str(sweep)
        return run.add("data checksums", "fail", f"the checksum sweep failed: {message}", seconds)
    bad: list[dict[str, Any]] = []
    for who, text in found + [("sweep", t) for t in sweep["bad_pages"]]:
        for block, path in dbchecks.BAD_PAGE.findall(text):
            same = [e for e in bad if e["file"] == path and e["block"] == int(block)]
            if same:
                if who not in same[0]["found_by"]:
                    same[0]["found_by"].append(who)
            else:
                bad.append({"file": path, "block": int(block), "relation": _relation_of(manifest, path),
                            "found_by": [who]})
    evidence = {"forks_swept": sweep["forks"], "blocks_swept": sweep["blocks"],
                "databases": sweep["databases"], "bad_pages": bad[:50], "errors": sweep["errors"][:20],
                "method": "every block read through shared buffers (checksum verified on read): "
                          "pg_amcheck's heap and B-tree reads, pg_prewarm for every other fork"}
    if bad:
        first = bad[0]
        return run.add("data checksums", "fail", f"{len(bad)} page(s) with a bad checksum, first in "
                       f"{first['relation'] or first['file']} block {first['block']}", seconds, evidence,
                       hint="restore from another backup; see the evidence for blocks")
    if sweep["errors"]:
        return run.add("data checksums", "fail", f"could not read every fork: {sweep['errors'][0]}",
                       seconds, evidence)
    if not amcheck_ok:
        # pg_amcheck's heap reads are half of the proof; an ERROR may have cut one short
        return run.add("data checksums", "warn", f"no bad checksum among the pages read, but "
                       f"pg_amcheck failed, so the heap pages of a relation it could not finish "
                       f"are unproven ({sweep['blocks']} blocks of {sweep['forks']} other forks read)",
                       seconds, evidence)
    return run.add("data checksums", "ok", f"no bad checksum: pg_amcheck's heap and B-tree pages plus "
                   f"{sweep['blocks']} blocks of {sweep['forks']} other forks in {sweep['databases']} "
                   "database(s), each verified as read", seconds, evidence)


def _relation_of(manifest: BackupManifest, path: str) -> str | None:
    """base/16384/16390(.1, _fsm…) → app.public.orders via the backup's relation map."""
    parts = path.split("/")
    filenode = parts[-1].split(".")[0].split("_")[0]
    if parts[0] == "base" and len(parts) >= 3:
        key = f"1663/{parts[1]}/{filenode}"
    elif parts[0] == "global":
        key = f"1664/0/{filenode}"
    else:
        return None
    rel = manifest.relations.get(key)
    return f"{rel.database}.{rel.qualified}" if rel else None


def _verify_logical(run: _Run, config: Config, programs: Programs, manifest: BackupManifest,
                    folder: Path, scratch: Scratch, jobs: int) -> None:
    inst = scratch.instance
    preload("pgdr.restore.dbchecks")  # psycopg and the checks, beside initdb

    def restore() -> Check:
        from pgdr.pg.connect import session

        t0 = time.monotonic()
        inst.initdb(checksums=True)
        inst.configure(scratch.settings())
        inst.start(timeout=120)
        per_db: dict[str, float] = {}
        for dbname, dump in manifest.databases.items():
            t1 = time.monotonic()
            with session(inst.conninfo()) as conn:
                exists = conn.execute("select 1 from pg_database where datname = %s", (dbname,)).fetchone()
                if not exists:
                    from psycopg import sql
                    conn.execute(sql.SQL("create database {} template template0").format(
                        sql.Identifier(dbname)))
            programs.run("pg_restore", [
                "-h", str(inst.socket_dir), "-p", str(inst.port), "-U", "postgres", "-d", dbname,
                "-j", str(config.backup.logical_jobs), "--no-owner", "--no-privileges",
                # the source's tablespaces do not exist here: objects go to the default one
                "--no-tablespaces",
                "--exit-on-error", str(folder / dump.directory)], timeout=24 * 3600,
                # pg_dump ran as pgdr's user, so its 0700 folder is readable by that user only
                as_server_user=False, stall_timeout=config.pg.stall_timeout,
                progress=dir_progress(inst.data_dir), stalled_what=f"restoring {dbname} into {inst.data_dir}")
            per_db[dbname] = round(time.monotonic() - t1, 3)
        seconds = time.monotonic() - t0
        run.result.restore_s = seconds
        return run.add("restore", "ok", f"pg_restore of {len(per_db)} database(s) in {seconds:.1f}s",
                       seconds, {"databases": per_db})

    if not run.step("restore", restore):
        return
    _common_checks(run, config, programs, scratch, list(manifest.databases), jobs)

    t0 = time.monotonic()
    problems = []
    for dbname, dump in manifest.databases.items():
        now = run.result.row_counts.get(dbname, {})
        for table, expected in sorted(dump.tables.items()):
            got = now.get(table)
            if got != expected:
                problems.append({"database": dbname, "table": table, "dump": expected, "restored": got})
        for table in sorted(set(now) - set(dump.tables)):
            problems.append({"database": dbname, "table": table, "dump": None, "restored": now[table]})
    total = sum(len(d.tables) for d in manifest.databases.values())
    if problems:
        p = problems[0]
        run.add("row counts", "fail", f"{p['database']}.{p['table']}: {p['restored']} rows restored, "
                f"the dump counted {p['dump']}" + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""),
                time.monotonic() - t0, {"mismatches": problems})
    else:
        run.add("row counts", "ok", f"{total} tables match the dump's counts exactly",
                time.monotonic() - t0, {"tables": total})


def _common_checks(run: _Run, config: Config, programs: Programs, scratch: Scratch,
                   dbnames: list[str], jobs: int, *, manifest: BackupManifest | None = None) -> None:
    """amcheck beside the SQL scans (counts, foreign keys, in-order walks of the unique
    indexes) and, for a physical backup, the sweep that completes the online data
    checksum coverage; then the duplicate-key verdict, trusting those walks only if
    amcheck passed, then the user's smoke queries."""
    from pgdr.restore import dbchecks

    inst = scratch.instance
    amcheck_ok = False
    # The checksums of a restored physical backup's pages, proven as they are read (see
    # dbchecks.checksum_sweep); template0 too, so it must accept connections meanwhile.
    sweep_checksums = manifest is not None and manifest.data_checksums
    if manifest is not None and not manifest.data_checksums:
        run.add("data checksums", "warn", "the source cluster has no data checksums", 0.0,
                hint="initdb --data-checksums (or pg_checksums --enable) on the source")
    t_prepare = time.monotonic()
    try:
        with run.phase("prepare"):
            restart = _prepare(inst, template0=sweep_checksums)
        if restart:
            with run.phase("read-only restart"):  # its presence in verify.json says it ran
                _restart_read_only(inst, programs)
    except PgdrError as exc:
        run.add("prepare", "fail", exc.message, time.monotonic() - t_prepare, hint=exc.hint)
        return
    found_bad: list[tuple[str, str]] = []
    swept: dict[str, Any] | Exception = {}
    sweep_s = 0.0
    with run.phase("checks"), ThreadPoolExecutor(max_workers=3) as pool:
        t_am = time.monotonic()

        def am() -> tuple[bool, dict[str, Any], float]:
            ok, evidence = dbchecks.amcheck(inst, programs, jobs=jobs)
            return ok, evidence, time.monotonic() - t_am

        def sweep() -> tuple[dict[str, Any] | Exception, float]:
            try:
                return dbchecks.checksum_sweep(inst), time.monotonic() - t_am
            except (PgdrError, OSError) as exc:
                return exc, time.monotonic() - t_am

        am_future = pool.submit(am)
        scan_future = pool.submit(dbchecks.scan, inst, dbnames, max(1, jobs - jobs // 2))
        sweep_future = pool.submit(sweep) if sweep_checksums else None
        try:
            ok, evidence, am_s = am_future.result()
            run.result.phases["amcheck"] = am_s
            objects = evidence["corrupt_objects"]
            found_bad += [("pg_amcheck", line) for line in evidence.get("bad_pages", [])]
            if ok:
                amcheck_ok = True
                run.add("amcheck", "ok", f"pg_amcheck --heapallindexed: no corruption in "
                        f"{len(dbnames)} database(s)", am_s, evidence)
            else:
                first = objects[0] if objects else (evidence["output"] or ["failed"])[0]
                run.add("amcheck", "fail", f"pg_amcheck found corruption: {first}"
                        + (f" (+{len(objects) - 1} more)" if len(objects) > 1 else ""), am_s, evidence,
                        hint="restore from another backup; see the evidence for blocks")
        except PgdrError as exc:
            run.add("amcheck", "fail", exc.message, time.monotonic() - t_am)
        scan = scan_future.result()
        found_bad += [("SQL scans", e) for e in scan.errors]
        if sweep_future is not None:
            swept, sweep_s = sweep_future.result()
            run.result.phases["checksum sweep"] = sweep_s
        # Only after amcheck: its verdict decides whether the indexes may be trusted.
        dbchecks.unique_scan(inst, scan, indexes_verified=amcheck_ok, jobs=jobs)
    if sweep_future is not None and manifest is not None:
        _data_checksums(run, manifest, swept, found_bad, sweep_s, amcheck_ok)
    run.result.row_counts = scan.counts

    orphans = [f for f in scan.foreign_keys if f["orphans"]]
    if orphans:
        f = orphans[0]
        run.add("foreign keys", "fail",
                f"{f['database']}.{f['table']}: {f['orphans']} orphaned row(s) for {f['constraint']} → "
                f"{f['references']}{'' if f['validated'] else ' (NOT VALID)'}"
                + (f" (+{len(orphans) - 1} more)" if len(orphans) > 1 else ""),
                scan.durations["foreign keys"], {"violations": orphans, "checked": len(scan.foreign_keys)})
    else:
        run.add("foreign keys", "ok", f"{len(scan.foreign_keys)} foreign keys, no orphaned row",
                scan.durations["foreign keys"], {"checked": len(scan.foreign_keys)})
    dups = [u for u in scan.unique if u["duplicate_keys"]]
    lost = [u for u in scan.unique if "index_rows" in u]
    if lost:
        u = lost[0]
        run.add("unique constraints", "fail",
                f"{u['database']}.{u['table']}: the index of {u['constraint']} holds {u['index_rows']} "
                f"row(s), the table {u['heap_rows']}" + (f" (+{len(lost) - 1} more)" if len(lost) > 1 else ""),
                scan.durations["unique constraints"],
                {"index_mismatches": lost, "duplicates": dups, "checked": len(scan.unique)},
                hint="an index that amcheck passed disagrees with its table: restore from another backup")
    elif dups:
        u = dups[0]
        run.add("unique constraints", "fail",
                f"{u['database']}.{u['table']}: {u['duplicate_keys']} duplicated key(s) in {u['constraint']}"
                + (f" (+{len(dups) - 1} more)" if len(dups) > 1 else ""),
                scan.durations["unique constraints"], {"violations": dups, "checked": len(scan.unique)})
    else:
        run.add("unique constraints", "ok", f"{len(scan.unique)} primary keys and unique constraints, "
                "no duplicate", scan.durations["unique constraints"], {"checked": len(scan.unique)})
    if scan.errors:
        run.add("queries", "fail", scan.errors[0] + (f" (+{len(scan.errors) - 1} more)"
                                                     if len(scan.errors) > 1 else ""),
                0.0, {"errors": scan.errors})
    run.result.phases["row counts"] = scan.durations["counts"]

    for user in config.verify.checks:
        t0 = time.monotonic()
        with run.phase("user checks"):
            ok, summary, evidence = dbchecks.user_check(inst, user)
        run.add(f"check {user.name}", "ok" if ok else "fail", summary, time.monotonic() - t0, evidence)


def _prepare(inst: Instance, *, template0: bool) -> bool:
    """Install the checks' extensions (and open template0); returns whether the checks
    should run on a restart of the copy as a hot standby that follows nothing
    (_restart_read_only).

    Why: a restored table's tuples often carry no hint bits yet (a bulk load not vacuumed
    since). The first read that judges them visible (a count, heapallindexed's heap scan,
    an index-only walk) sets the bits, and with data checksums on a writable server must
    WAL-log a full image of every page it so dirties, then write the page out of the
    scan's small ring of buffers: the whole heap written twice (measured: 470 MB of WAL
    for 469 MB of random text, most of the 4.4 s row count at 1.6 GB). In recovery,
    PostgreSQL sets hint bits without dirtying the page, so nothing is written; every
    page read is still checksum-verified. The extensions (amcheck, pg_prewarm,
    pgstattuple) cannot be created on a standby, hence first; template0 is opened for
    the checks here too, as ALTER DATABASE is refused there later.

    The restart (a fast stop and a start, 0.2-0.7 s) is skipped when less than
    READ_ONLY_ABOVE of heap is outside what the last VACUUM marked all-visible (a
    vacuumed table's pages are read without setting hint bits; below that it costs more
    than it saves), and when any database has an unlogged table.
    """
    from pgdr.restore import dbchecks

    if template0:
        dbchecks.allow_template0(inst, True)
    prepared = dbchecks.install_extensions(inst)
    for problem in prepared.problems:
        log.warning("could not install the checks' extensions in %s", problem)
    # Not with unlogged tables: recovery would empty them (losing a logical restore's
    # rows, which must match the dump) and a hot standby refuses to count them.
    return prepared.unlogged_tables == 0 and prepared.unvacuumed_bytes >= READ_ONLY_ABOVE


def _restart_read_only(inst: Instance, programs: Programs) -> None:
    inst.stop(mode="fast", timeout=120)
    with open(inst.data_dir / "postgresql.auto.conf", "a") as fh:
        fh.write(READ_ONLY)
    signal = inst.data_dir / "standby.signal"
    signal.touch()
    programs.run_as.chown(signal)
    inst.start(timeout=600)


def _writable_again(inst: Instance) -> None:
    """A kept copy is a writable server, template0 closed again as restored."""
    from pgdr.restore import dbchecks

    if (inst.data_dir / "standby.signal").exists():
        if inst.is_running():
            inst.promote(timeout=120)
        else:
            (inst.data_dir / "standby.signal").unlink()
    inst.start()
    try:
        dbchecks.allow_template0(inst, False)
    except PgdrError as exc:
        log.warning("template0 still accepts connections in the scratch copy: %s", exc.message)


def _compare_physical_counts(run: _Run, config: Config, repo: Repository,
                             manifest: BackupManifest) -> None:
    t0 = time.monotonic()
    now = run.result.row_counts
    tables = sum(len(t) for t in now.values())
    baseline_id, before = None, None
    for older in reversed(list_backups(repo, "physical")):
        if older.stop_time >= manifest.stop_time:
            continue
        record = read_verification(repo, older.id)
        if record and record.get("passed") and record.get("row_counts"):
            baseline_id, before = older.id, record["row_counts"]
            break
    if before is None:
        run.add("row counts", "ok", f"{tables} tables counted; no earlier verified physical backup "
                "to compare with", time.monotonic() - t0, {"tables": tables})
        return
    run.result.baseline = baseline_id
    tol = config.verify.tolerance
    problems = []
    for dbname, counts in sorted(before.items()):
        for table, old in sorted(counts.items()):
            new = now.get(dbname, {}).get(table)
            if new is None:
                problems.append({"database": dbname, "table": table, "before": old, "now": None,
                                 "problem": "vanished"})
            elif old > 0 and new < old * (1 - tol):
                problems.append({"database": dbname, "table": table, "before": old, "now": new,
                                 "problem": f"shrank {100 * (old - new) / old:.1f}%"})
    if problems:
        p = problems[0]
        what = ("vanished" if p["now"] is None else
                f"{p['problem']} ({p['before']} → {p['now']} rows)")
        run.add("row counts", "fail", f"{p['database']}.{p['table']} {what} since verified backup "
                f"{baseline_id}" + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""),
                time.monotonic() - t0,
                {"baseline": baseline_id, "tolerance": tol, "problems": problems},
                hint="a mass DELETE/DROP/TRUNCATE? `pgdr find-disaster`; raise verify.tolerance if intended")
    else:
        run.add("row counts", "ok", f"{tables} tables; none vanished or shrank more than "
                f"{tol:.0%} since verified backup {baseline_id}", time.monotonic() - t0,
                {"baseline": baseline_id, "tolerance": tol, "tables": tables})
