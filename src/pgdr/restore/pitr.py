"""`pgdr restore`: point-in-time recovery into a NEW data directory that stays running.

Steps (each timed): choose the backup (the newest that ends before the target),
prove the target is reachable from it with the WAL in the archive (gaps, the
archive's end, timelines) so impossible restores fail in seconds with the reason,
extract, start recovery with restore_command = a copy from the prefetch spool (`pgdr wal-fetch`
when a segment is not there), wait until the
target is reached, then promote (or stay paused). A failure stops the server and
removes what was restored, so nothing is left running. Every attempt is recorded.
"""

from __future__ import annotations

import hashlib
import re
import shlex
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pgdr.config import Config
from pgdr.errors import AuthenticationFailed, ConfigError, PgdrError, UsageError
from pgdr.pg.instance import DETACHED_SETTINGS, SOCKET_PATH_MAX, Instance, check_traversable, free_port
from pgdr.pg.lsn import parse_lsn, parse_segment_name
from pgdr.pg.programs import Programs
from pgdr.pg.waldump import Chunk
from pgdr.preload import preload
from pgdr.repo import unfinished
from pgdr.repo.layout import Repository
from pgdr.repo.locks import reading
from pgdr.repo.manifest import BackupManifest, backup_dir, find_backup, scan_backups
from pgdr.repo.records import known_bad, save_record
from pgdr.repo.timelines import histories, latest_descendant
from pgdr.repo.unfinished import INCOMPLETE_MARKER
from pgdr.repo.wal import SegmentDamaged, WalArchive
from pgdr.restore.extract import plan_tablespaces
from pgdr.restore.recovery import RecoveryTarget, remove_restored, restore_physical, wal_fetch_command
from pgdr.restore.walscan import (
    ArchiveWal,
    TransactionEnd,
    WalPoint,
    archive_wal,
    backup_anchors,
    find_restore_point,
    find_transaction,
    reachable_end,
)
from pgdr.restore.xid import XidInput, parse_xid
from pgdr.runbook.timeline import Timeline

if TYPE_CHECKING:  # psycopg (~40 ms to import) is imported while the backup is extracted
    from pgdr.restore.prepared import Prepared

RECOVERY_ENDED_EARLY = "recovery ended before configured recovery target was reached"


class RestoreFailed(PgdrError):
    """A point-in-time restore cannot reach its target; the message says how far it can go."""


def parse_time(text: str) -> datetime:
    """ISO 8601 (with or without zone; without means this machine's local time)."""
    cleaned = text.strip().replace(" UTC", "+00:00")
    try:
        when = datetime.fromisoformat(cleaned)
    except ValueError:
        raise UsageError(f"not a time: {text!r}", hint="use ISO 8601, e.g. '2024-05-01 14:03:00+00'") from None
    return when if when.tzinfo else when.astimezone()


@dataclass
class PitrResult:
    backup_id: str
    target: dict[str, Any]
    data_dir: Path
    port: int
    socket_dir: Path
    conninfo: str
    logfile: Path
    state: str                            # promoted | paused
    reached: dict[str, Any] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)
    record_path: Path | None = None
    chosen_because: str = ""
    prepared: list[dict[str, Any]] = field(default_factory=list)   # see restore/prepared.py
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"backup_id": self.backup_id, "target": self.target, "data_dir": str(self.data_dir),
                "port": self.port, "socket_dir": str(self.socket_dir), "conninfo": self.conninfo,
                "logfile": str(self.logfile), "state": self.state, "reached": self.reached,
                "phases": {k: round(v, 3) for k, v in self.phases.items()},
                "total_s": round(sum(self.phases.values()), 3),
                "record": str(self.record_path) if self.record_path else None,
                "chosen_because": self.chosen_because,
                "prepared_transactions": self.prepared, "notes": self.notes,
                "stop_with": f"pg_ctl -D {self.data_dir} stop"}


def describe_target(target: RecoveryTarget) -> dict[str, Any]:
    return {"kind": target.kind, "value": target.value, "inclusive": target.inclusive,
            "action": target.action}


@dataclass
class _Plan:
    backup: BackupManifest
    target: RecoveryTarget
    end: WalPoint | None
    wal: ArchiveWal | None = None
    last_segno: int | None = None      # the segment holding the target, when known
    reason: str = ""                   # why this backup was chosen (said to the user)


def _segno(name: str | None, size: int) -> int:
    seg = parse_segment_name(name or "", size)
    return seg.segno if seg else 0


def _too_far(what: str, end: WalPoint, gap_name: str | None, backup: BackupManifest) -> RestoreFailed:
    if gap_name is not None:
        return RestoreFailed(
            f"WAL segment {gap_name} is missing from the archive: from backup {backup.id} recovery "
            f"reaches {end.describe()} at most, not {what}",
            hint=(f"restore to that point with --to-lsn {end.lsn}" if end.lsn else
                  "take a new backup (`pgdr backup`)"))
    hint = "restore to it with --latest"
    if end.commit_time is not None:
        hint += f" (or --to-time '{end.commit_time.isoformat()}')"
    return RestoreFailed(f"target {what} is past the end of the archive; the latest reachable point is "
                         f"{end.describe()}", hint=hint)


def _transaction_end(programs: Programs, wal: ArchiveWal, wanted: XidInput,
                     anchors: tuple[int, ...]) -> tuple[TransactionEnd, bool]:
    """The commit a --to-xid/--before-xid target names; True when the 32-bit xid ended
    more than once in the archive (the target must then be that commit's LSN)."""
    ends = find_transaction(programs, wal, wanted.xid, with_epoch=wanted.epoch is not None, anchors=anchors)
    hint = "`pgdr find-disaster` lists the transactions the archive holds"
    several = len(ends) > 1
    if not ends:
        raise RestoreFailed(f"transaction {wanted} has no COMMIT in the archived WAL", hint=hint)
    if wanted.epoch is not None:
        right = [e for e in ends if e.full_xid is None or e.full_xid == wanted.full]
        if not right:
            seen = ", ".join(f"{e.full_xid} (epoch {e.full_xid >> 32})" for e in ends if e.full_xid is not None)
            raise RestoreFailed(f"transaction {wanted} (xid {wanted.xid} of epoch {wanted.epoch}) has no COMMIT in "
                                f"the archived WAL; xid {wanted.xid} ended there as {seen}", hint=hint)
        ends = right
    if len(ends) > 1:
        listed = ", ".join(str(e.full_xid) if e.full_xid is not None else f"LSN {e.commit.lsn}" for e in ends)
        raise UsageError(f"xid {wanted.xid} ended {len(ends)} times in the archived WAL (its 32 bits wrapped "
                         f"around): {listed}", hint="give it with its epoch, as txid_current() returns it")
    end = ends[0]
    if end.commit.aborted:
        raise RestoreFailed(f"transaction {wanted} was rolled back at {end.commit.time.isoformat()}: "
                            "it changed nothing to undo or reach")
    return end, several


def plan(programs: Programs, repo: Repository, target: RecoveryTarget,
         backup_id: str | None = None, *, force: bool = False) -> _Plan:
    """Choose the backup and prove the target reachable; raises with the reason when not.

    Without --backup: the newest backup that ends before the target and is not known to
    be bad (its verification failed). A backup whose verification failed is used only
    with force."""
    readable, damaged = scan_backups(repo)
    backups = [b for b in readable if b.kind == "physical"]
    if not backups:
        if damaged:
            raise RestoreFailed(f"no usable physical backup in {repo.root}: {damaged[-1].problem}",
                                hint="restore pgdr.json from a copy, or take a new backup")
        raise RestoreFailed(f"no physical backup in {repo.root}", hint="run `pgdr backup`")
    failed = {b.id for b in backups if known_bad(repo, b.id)}
    size = repo.wal_segment_size
    wal = archive_wal(repo)
    given = find_backup(repo, backup_id) if backup_id else None
    if given is not None and given.kind != "physical":
        raise UsageError(f"backup {given.id} is logical; point-in-time restore needs a physical backup")

    target_lsn: int | None = None
    target_time: datetime | None = None
    target_tli: int | None = None
    what = target.value or target.kind
    if target.kind == "time":
        assert target.value is not None
        target_time = parse_time(target.value)
        target = replace(target, value=target_time.astimezone(UTC).isoformat(sep=" "))
        what = target_time.isoformat()
        if target_time > datetime.now(target_time.tzinfo):
            raise UsageError(f"target time {what} is in the future")
    elif target.kind == "lsn":
        assert target.value is not None
        try:
            target_lsn = parse_lsn(target.value)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    elif target.kind == "xid":
        assert target.value is not None
        xact, exact = _transaction_end(programs, wal, parse_xid(target.value, "transaction id"),
                                       backup_anchors(repo))
        commit = xact.commit
        target_lsn = parse_lsn(commit.lsn)
        chunk = next((c for c in wal.chunks if c.segment.segno == target_lsn // size), None)
        target_tli = chunk.segment.timeline if chunk else None
        named = f"{target.value}" + (f" (xid {xact.commit.xid} of epoch {xact.full_xid >> 32})"
                                     if xact.full_xid is not None and xact.full_xid >> 32 else "")
        what = f"transaction {named} (committed {commit.time.isoformat()}, LSN {commit.lsn})"
        # PostgreSQL matches recovery_target_xid by its low 32 bits and stops at the first
        # commit of them: when the archive holds more than one, the commit's LSN is exact
        target = replace(target, kind="lsn", value=commit.lsn) if exact else replace(target, value=str(commit.xid))
    elif target.kind == "name":
        assert target.value is not None
        found = find_restore_point(programs, wal, target.value)
        if found is None:
            raise RestoreFailed(f"no restore point named {target.value!r} in the archived WAL")
        target_lsn = parse_lsn(found)

    def ends_before(b: BackupManifest) -> bool:
        if target_time is not None:
            return b.stop_time <= target_time
        if target_lsn is not None:
            stop = parse_lsn(b.stop_lsn)
            return stop < target_lsn or (stop == target_lsn and target.inclusive)
        return True

    if given is not None:
        if not ends_before(given):
            raise RestoreFailed(f"backup {given.id} ends ({given.stop_time.isoformat()}, LSN {given.stop_lsn}) "
                                f"after the target {what}", hint="choose an older --backup, or omit --backup")
        if given.id in failed and not force:
            raise RestoreFailed(f"backup {given.id} failed its verification "
                                f"({repo.backups_dir / given.id / 'verify.json'})",
                                hint="restore it anyway with --force, or choose another --backup")
        backup = given
        reason = "given with --backup"
    else:
        eligible = [b for b in backups if ends_before(b)]
        if not eligible:
            oldest = backups[0]
            raise RestoreFailed(f"target {what} is before the oldest backup {oldest.id} "
                                f"(consistent from {oldest.stop_time.isoformat()}, LSN {oldest.stop_lsn})",
                                hint="no backup can be restored to a point before it ended")
        good = [b for b in eligible if b.id not in failed]
        if not good and not force:
            raise RestoreFailed(f"every backup that ends before {what} failed its verification "
                                f"(newest: {eligible[-1].id})",
                                hint="restore one anyway with --force --backup ID")
        backup = (good or eligible)[-1]
        skipped = [b.id for b in eligible if b.id in failed and b.stop_time > backup.stop_time]
        unreadable = [d.id for d in damaged if d.id > backup.id]
        reason = ("the newest backup ending before the target"
                  + (f"; skipped {', '.join(skipped)} (verification failed)" if skipped else "")
                  + (f"; skipped {', '.join(unreadable)} (pgdr.json damaged)" if unreadable else "")
                  + ("; its verification FAILED (--force)" if backup.id in failed else ""))

    if target_tli is not None and target_tli != backup.timeline:
        if backup.timeline not in latest_descendant(histories(WalArchive(repo)), target_tli).chain():
            raise RestoreFailed(f"target {what} is on timeline {target_tli}; backup {backup.id} is on "
                                f"timeline {backup.timeline}, which timeline {target_tli} does not descend from",
                                hint="choose a backup taken on that timeline with --backup")
        target = replace(target, timeline=str(target_tli))
    # Gaps and the reachable end follow the timeline recovery will take: the target's,
    # else the newest one descending from the backup's (PostgreSQL's 'latest').
    wal = archive_wal(repo, timeline=target_tli or backup.timeline)

    if target.kind == "immediate":
        return _Plan(backup, target, None, wal, reason=reason)
    # The backup carries its own WAL up to its stop point (pg_wal.tar); from the stop
    # segment on, every segment must come from the archive.
    start = _segno(backup.stop_wal, size)
    gap = wal.first_gap_after(start)
    gap_name = wal.missing_name(gap) if gap is not None else None
    end = reachable_end(programs, wal, start)
    if target.kind == "latest":
        if gap_name is not None:
            raise _too_far("the latest point", end, gap_name, backup)
    elif target_time is not None:
        if end.commit_time is None or target_time > end.commit_time:
            raise _too_far(what, end, gap_name, backup)
    elif target_lsn is not None:
        end_lsn = parse_lsn(end.lsn) if end.lsn else parse_lsn(backup.stop_lsn)
        if target_lsn > end_lsn or (gap is not None and target_lsn // size >= gap):
            raise _too_far(what, end, gap_name, backup)
    return _Plan(backup, target, end, wal, target_lsn // size if target_lsn is not None else None,
                 reason=reason)


SPOOL = "pgdr_spool"
PLANNED = ".planned"        # in the spool: the segments the prefetcher will write, one a line
PREFETCHING = ".prefetching"  # in the spool while the prefetcher runs
# restore_command waits at most this many 5 ms polls for a planned segment (a SIGKILLed pgdr
# leaves the marker behind); then it falls back to `pgdr wal-fetch`
WAIT_POLLS = 12000
READ_AHEAD = 2  # segments past the last one recovery needs: PostgreSQL reads ahead of its target


class Prefetcher:
    """Decompress the archived segments recovery will ask for into spool/, in order, on
    threads that run beside recovery, so restore_command is a `mv` instead of a Python
    start per segment (0.2–1 s each), the open .partial segment included. restore_command copies (not moves) from the spool:
    at the end of recovery PostgreSQL asks again for the segment it ends on.

    From the backup's first segment (recovery asks the archive before pg_wal, even for the
    segments pg_wal.tar holds) to the target's segment plus READ_AHEAD. The names come
    first in spool/.planned, and spool/.prefetching exists while it runs: restore_command
    waits for a planned segment only as long as the prefetcher lives. A damaged segment
    (checksum, header) is left out of the spool: recovery then asks `pgdr wal-fetch` for
    it, which aborts recovery there (exit 126) naming it, unless the target lies before
    it. Reading goes through WalArchive.read(name), the one place a segment's bytes come
    from, whatever the repository's storage."""

    def __init__(self, repo: Repository, wal: ArchiveWal, chosen: _Plan, spool: Path, programs: Programs) -> None:
        size = wal.segment_size
        first = _segno(chosen.backup.start_wal or chosen.backup.stop_wal, size)
        gap = wal.first_gap_after(first)
        last = chosen.last_segno if chosen.target.kind != "immediate" else _segno(chosen.backup.stop_wal, size)
        self.wanted = [c for c in wal.chunks if c.segment.segno >= first
                       and (gap is None or c.segment.segno < gap)
                       and (last is None or c.segment.segno <= last + READ_AHEAD)]
        self.names = [c.segment.name(size) for c in self.wanted]
        self.spool, self.programs, self.archive = spool, programs, WalArchive(repo)
        self.damaged: list[str] = []
        self._pool: ThreadPoolExecutor | None = None
        self._futures: list[Future[str | None]] = []
        self._lock = threading.Lock()
        self._left = 0

    def start(self) -> Prefetcher:
        self.spool.mkdir(mode=0o700)
        self.programs.run_as.chown(self.spool)
        marker = self.spool / PREFETCHING
        marker.touch()
        planned = self.spool / PLANNED
        planned.write_text("".join(f"{n}\n" for n in self.names))
        for path in (marker, planned):
            self.programs.run_as.chown(path)
        # two threads: decompression is CPU-bound and recovery needs the other core
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="pgdr-prefetch")
        self._futures = [self._pool.submit(self._one, c, n) for c, n in zip(self.wanted, self.names, strict=True)]
        self._left = len(self._futures)
        for future in self._futures:
            future.add_done_callback(self._done)
        if not self._futures:
            marker.unlink(missing_ok=True)
        return self

    def _done(self, _future: Future[str | None]) -> None:
        """The last segment written (or found damaged): nothing more will come, so
        restore_command stops waiting for planned segments at once."""
        with self._lock:
            self._left -= 1
            if self._left == 0:
                (self.spool / PREFETCHING).unlink(missing_ok=True)

    def _one(self, chunk: Chunk, name: str) -> str | None:
        try:
            if not chunk.source.name.endswith(".zst"):
                # the newest WAL, still in incoming/ (the open .partial padded to a segment,
                # as wal-fetch would serve it, read now rather than when recovery asks)
                if self.archive.fetch(name, self.spool / name):
                    self.programs.run_as.chown(self.spool / name)
                return None
            data = self.archive.read(name)
        except SegmentDamaged:
            return name
        tmp = self.spool / f".{name}.tmp"
        tmp.write_bytes(data)
        self.programs.run_as.chown(tmp)
        tmp.rename(self.spool / name)
        return None

    def finish(self, cancel: bool = False) -> list[str]:
        """Wait for (or with cancel, drop) what is left; returns the damaged segments."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=cancel)
            self.damaged = [n for f in self._futures if f.done() and not f.cancelled()
                            and (n := f.result()) is not None]
            self._pool = None
        (self.spool / PREFETCHING).unlink(missing_ok=True)
        return self.damaged


def _restore_command(config: Config, repo: Repository, spool: Path, programs: Programs) -> str:
    """Planned segment: wait while the prefetcher lives (at most a minute), then cp from the spool. Not in the
    archive at all: fail at once. Else (damaged, or outside the plan) `pgdr wal-fetch`."""
    q = shlex.quote
    sp = q(str(spool))
    slow = wal_fetch_command(config.source, programs.run_as)  # type: ignore[arg-type]
    # already spooled (most calls): one cp, before any grep
    return (f'if [ -f {sp}/"%f" ]; then exec cp {sp}/"%f" "%p"; fi; '
            f'if grep -qx "%f" {sp}/{PLANNED} 2>/dev/null; then '
            f'i=0; while [ ! -f {sp}/"%f" ] && [ -f {sp}/{PREFETCHING} ] && [ $i -lt {WAIT_POLLS} ]; '
            f'do sleep 0.005; i=$((i+1)); done; fi; '
            f'if [ -f {sp}/"%f" ]; then cp {sp}/"%f" "%p"; '
            f'elif [ ! -f {q(str(repo.wal_dir))}/"%f".zst ] && [ ! -f {q(str(repo.incoming_dir))}/"%f".partial ] '
            f'&& [ ! -f {q(str(repo.incoming_dir))}/"%f" ]; '
            f'then exit 1; else {slow}; fi')


def _socket_dir_for(target_dir: Path) -> Path:
    if len(str(target_dir)) <= SOCKET_PATH_MAX:
        return target_dir
    digest = hashlib.sha1(str(target_dir).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"pgdr-restore-{digest}"


def _prepare_dir(target_dir: Path, programs: Programs) -> None:
    if target_dir.exists():
        if (target_dir / INCOMPLETE_MARKER).exists():
            raise UsageError(f"refusing to restore into {target_dir}: it holds an interrupted restore "
                             "(pgdr was killed before it finished)",
                             hint=f"remove {target_dir} and restore again")
        if not target_dir.is_dir() or any(target_dir.iterdir()):
            raise UsageError(f"refusing to restore into {target_dir}: it is not empty",
                             hint="restores always go to a new, empty folder")
        target_dir.rmdir()
    target_dir.parent.mkdir(parents=True, exist_ok=True)
    check_traversable(target_dir.parent, programs)


def _server_settings(instance: Instance) -> dict[str, str | int]:
    return {
        "port": instance.port,
        "listen_addresses": "127.0.0.1",
        "unix_socket_directories": str(instance.socket_dir),
        "unix_socket_permissions": "0700",
        **DETACHED_SETTINGS,
        "cluster_name": instance.name,
        # A backup starts as after a crash, and PostgreSQL first fsyncs every file of the
        # data directory one by one (seconds for a large one); syncfs makes the same
        # promise with one call per file system (Linux, PostgreSQL 14+)
        **({"recovery_init_sync_method": "syncfs"} if sys.platform == "linux" else {}),
    }


def _wait_for_target(instance: Instance, pause: bool, timeout: float) -> None:
    """Until recovery ends (or pauses at the target). Polled every 10 ms at first, as an
    --immediate recovery is over within a second of the start; slowing to 50 ms for a
    long replay, where each look opens a connection."""
    from pgdr.pg.connect import session

    deadline = time.monotonic() + timeout
    delay = 0.01
    while time.monotonic() < deadline:
        if not instance.is_running():
            raise _RecoveryDied(_log_text(instance))
        try:
            with session(instance.conninfo(), timeout=3) as conn:
                row = conn.execute("select pg_is_in_recovery() as r, "
                                   "case when pg_is_in_recovery() then pg_get_wal_replay_pause_state() "
                                   "end as pause").fetchone()
            assert row is not None
            if not row["r"] or (pause and row["pause"] == "paused"):
                return
        except AuthenticationFailed:
            raise  # waiting cannot fix credentials
        except PgdrError:
            pass
        time.sleep(delay)
        delay = min(delay * 1.5, 0.05)
    raise RestoreFailed(f"recovery did not reach the target within {timeout:.0f}s",
                        hint=f"see {instance.logfile}")


class _RecoveryDied(Exception):
    def __init__(self, log: str) -> None:
        super().__init__(log)
        self.log = log


def _log_text(instance: Instance) -> str:
    try:
        return instance.logfile.read_text(errors="replace")
    except OSError:
        return ""


def _reached(instance: Instance) -> dict[str, Any]:
    from pgdr.pg.connect import session

    with session(instance.conninfo(), timeout=5) as conn:
        row = conn.execute(
            "select pg_last_xact_replay_timestamp() as xact_time, pg_last_wal_replay_lsn()::text as lsn, "
            "pg_is_in_recovery() as in_recovery, "
            "case when pg_is_in_recovery() then (select timeline_id from pg_control_checkpoint()) "
            "else ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int end as timeline"
        ).fetchone()
    assert row is not None
    out = dict(row)
    if isinstance(out.get("xact_time"), datetime):
        out["xact_time"] = out["xact_time"].isoformat()
    stop = [ln for ln in _log_text(instance).splitlines() if "recovery stopping" in ln]
    if stop:
        out["stopped"] = stop[-1].split("LOG:", 1)[-1].strip()
    return out


def restore_to_point(config: Config, programs: Programs, repo: Repository, target: RecoveryTarget,
                     target_dir: Path, *, backup_id: str | None = None, port: int | None = None,
                     timeout: float = 3600, force: bool = False,
                     tablespace_map: dict[str, Path] | None = None) -> PitrResult:
    if config.source is None:
        raise ConfigError("restore needs the config file's path (for restore_command)")
    target_dir = target_dir.resolve()
    timeline = Timeline()
    record: dict[str, Any] = {"target": describe_target(target), "data_dir": str(target_dir),
                              "started_at": datetime.now(UTC).isoformat()}
    instance: Instance | None = None
    prefetcher: Prefetcher | None = None
    created = False
    places: dict[str, Path] = {}
    locks = ExitStack()
    marker: Path | None = None
    try:
        with timeline.step("plan"):
            _prepare_dir(target_dir, programs)
            # pg_waldump and the server must be the archive's own major version
            programs = programs.for_server(version_num=(repo.identity() or {}).get("pg_version_num"),
                                           what=f"the repository {repo.root}")
            chosen = plan(programs, repo, target, backup_id, force=force)
            locks.enter_context(reading(repo, chosen.backup.id))
            places = plan_tablespaces(chosen.backup, target_dir, tablespace_map)
        record["backup_id"] = chosen.backup.id
        record["chosen_because"] = chosen.reason
        record["reachable_end"] = chosen.end.as_dict() if chosen.end else None
        # Before anything is written: a SIGKILLed restore is then reported, not mistaken for one.
        marker = unfinished.begin_restore(repo, target_dir, {"backup_id": chosen.backup.id,
                                                             "target": record["target"]})
        socket_dir = _socket_dir_for(target_dir)
        instance = Instance("restore", target_dir, port or free_port(), socket_dir, programs,
                            log_file=target_dir / "pgdr-restore.log", supervised=True)
        with timeline.step("extract"):
            created = True
            preload("pgdr.pg.connect", "pgdr.restore.prepared")  # psycopg: not needed before recovery
            restore_physical(backup_dir(repo, chosen.backup.id), instance, programs,
                             config_path=config.source, target=chosen.target,
                             extra_settings=_server_settings(instance),
                             restore_command=_restore_command(config, repo, target_dir / SPOOL, programs),
                             manifest=chosen.backup, tablespace_map=tablespace_map)
            unfinished.mark_incomplete(target_dir)
            if socket_dir != target_dir:
                socket_dir.mkdir(mode=0o700, exist_ok=True)
                programs.run_as.chown(socket_dir)
        if chosen.wal is not None:
            with timeline.step("prefetch started") as step:
                prefetcher = Prefetcher(repo, chosen.wal, chosen, target_dir / SPOOL, programs).start()
                step.detail = f"{len(prefetcher.names)} segment(s), decompressed beside recovery"
        with timeline.step("recovery") as step:
            try:
                instance.start(timeout=int(min(timeout, 600)))
                _wait_for_target(instance, chosen.target.action == "pause", timeout)
            except (_RecoveryDied, PgdrError) as exc:
                raise _explain(instance, exc, chosen) from None
            finally:
                if prefetcher is not None:
                    step.evidence["damaged"] = prefetcher.finish(cancel=True)
        shutil.rmtree(target_dir / SPOOL, ignore_errors=True)  # what recovery did not need
        reached = _reached(instance)
        _require_reached(chosen, reached)
        locks.close()
        result = PitrResult(chosen.backup.id, describe_target(chosen.target), target_dir, instance.port,
                            socket_dir, instance.conninfo(), instance.logfile,
                            "paused" if reached.get("in_recovery") else "promoted", reached,
                            {s.name: s.seconds or 0.0 for s in timeline.steps}, chosen_because=chosen.reason)
        import psycopg  # imported during the extraction (preload)

        try:     # the restore is done: a failure to look is said, never a reason to undo it
            result.prepared = [p.as_dict() for p in _prepared(instance)]
        except (PgdrError, psycopg.Error) as exc:
            result.notes.append(f"could not list the restored server's prepared transactions ({exc}): "
                                "look at pg_prepared_xacts there")
        if result.state == "paused":
            # A standby keeps the prepared transactions it replayed out of pg_prepared_xacts
            # (their locks are the startup process's) until the end of recovery.
            result.notes.append("paused in recovery: transactions prepared before the target and not "
                                "yet committed show in pg_prepared_xacts only after promotion "
                                "(select pg_promote()); look there before writing")
        record.update(result.as_dict())
        record["steps"] = timeline.as_list()
        record["passed"] = True
        result.record_path = save_record(repo, "restore", record)
        unfinished.finish(marker, target_dir)
        instance.release()  # recovered: the server is the user's now
        return result
    except BaseException as exc:
        if prefetcher is not None:
            prefetcher.finish(cancel=True)
        if instance is not None and created:
            _remove(instance, target_dir, places)
        locks.close()
        if not target_dir.exists():
            unfinished.finish(marker)
        record["passed"] = False
        record["error"] = getattr(exc, "message", str(exc)) or type(exc).__name__
        record["steps"] = timeline.as_list()
        try:
            save_record(repo, "restore", record)
        except OSError:
            pass
        raise


def _prepared(instance: Instance) -> list[Prepared]:
    """The prepared transactions the restored server holds, their locks named from their
    own database (one short session per database that has one)."""
    from pgdr.pg.connect import session
    from pgdr.restore.prepared import prepared_transactions

    with session(instance.conninfo(), timeout=5, what="the restored server's prepared transactions") as conn:
        found = prepared_transactions(conn)
    named: list[Prepared] = []
    for database in sorted({p.database for p in found}):
        try:
            with session(instance.conninfo(database), timeout=5,
                         what=f"the prepared transactions' locks in {database}") as conn:
                named += [p for p in prepared_transactions(conn) if p.database == database]
        except PgdrError:      # a database that does not accept connections: OIDs stay
            named += [p for p in found if p.database == database]
    return sorted(named, key=lambda p: (p.prepared_at, p.gid))


def _require_reached(chosen: _Plan, reached: dict[str, Any]) -> None:
    """Compare the point reached with the plan: recovery that stopped earlier (a segment it
    could not read) is a failure, never a quiet success."""
    end = chosen.end
    got = parse_lsn(str(reached["lsn"])) if reached.get("lsn") else None
    kind = chosen.target.kind
    if got is not None and got < parse_lsn(chosen.backup.stop_lsn):
        raise RestoreFailed(f"recovery stopped at LSN {reached['lsn']}, before backup {chosen.backup.id} "
                            f"is consistent ({chosen.backup.stop_lsn})")
    if kind in ("time", "lsn", "xid", "name") and not reached.get("stopped"):
        raise RestoreFailed(f"recovery ended at LSN {reached.get('lsn')} without reaching the target "
                            f"{chosen.target.value}")
    if kind != "latest" or end is None or not end.lsn or got is None:
        return
    if got < parse_lsn(end.lsn):
        size = chosen.wal.segment_size if chosen.wal else 16 << 20
        seg = chosen.wal.missing_name(got // size + (1 if got % size == 0 else 0)) if chosen.wal else "?"
        raise RestoreFailed(f"recovery stopped at LSN {reached['lsn']}, short of the archive's end "
                            f"{end.lsn}: recoverable up to LSN {reached['lsn']}; segment {seg} is "
                            "damaged or missing",
                            hint=f"restore to that point with --to-lsn {reached['lsn']}")


_DAMAGED_LINE = re.compile(r"WAL file ([0-9A-F]{24}) in the archive is damaged[^\n]*")
_RESTORE_FAILED = re.compile(r'could not restore file "([0-9A-F]{24})" from archive')


def _explain(instance: Instance, exc: BaseException, chosen: _Plan) -> PgdrError:
    log = exc.log if isinstance(exc, _RecoveryDied) else _log_text(instance)
    damaged = _DAMAGED_LINE.search(log) or _RESTORE_FAILED.search(log)
    if damaged:
        upto = [ln for ln in log.splitlines() if "redo done at" in ln or "last completed transaction" in ln]
        where = (f"recoverable up to {upto[-1].split('LOG:', 1)[-1].strip()}" if upto else
                 f"recoverable up to the segment before {damaged.group(1)}")
        return RestoreFailed(f"{where}; segment {damaged.group(1)} is damaged: recovery aborted there",
                             hint="restore to an earlier point, or repair the archive from a copy")
    if RECOVERY_ENDED_EARLY in log:
        end = chosen.end
        return RestoreFailed(
            "recovery ended before reaching the target: the archive ends at "
            + (end.describe() if end else "an earlier point"),
            hint="restore to the latest point with --latest")
    fatal = [ln.split("FATAL:", 1)[1].strip() for ln in log.splitlines() if "FATAL:" in ln]
    if fatal:
        return RestoreFailed(f"recovery failed: {fatal[-1]}", hint=f"server log: {instance.logfile}")
    if isinstance(exc, PgdrError):
        return exc
    return RestoreFailed("the restored server stopped during recovery")


def _remove(instance: Instance, target_dir: Path, places: dict[str, Path]) -> None:
    for mode in ("immediate",):
        try:
            instance.stop(mode=mode, timeout=30)
        except PgdrError:
            pass
    if instance.is_running():
        instance.kill9()
    remove_restored(target_dir, places)
    if instance.socket_dir != target_dir:
        shutil.rmtree(instance.socket_dir, ignore_errors=True)


def stop_restored(data_dir: Path, programs: Programs) -> None:
    """Stop a restored server (tests, benchmarks): pg_ctl stop -m fast."""
    if (data_dir / "postmaster.pid").exists():
        programs.run("pg_ctl", ["-D", str(data_dir), "-m", "fast", "-w", "stop"], ok_codes=(0, 1), timeout=70)


