"""The continuous WAL archiver: pg_receivewal on a replication slot, supervised.

Why pg_receivewal and not archive_command: archive_command only ships a segment
once it is full (16 MB), so the archive trails the primary by up to a whole
segment or archive_timeout. pg_receivewal streams each record as it is written,
and with --synchronous it fsyncs and reports its flush position, which the
primary shows in pg_stat_replication; the slot keeps the primary from recycling
WAL the archive has not got, so there are no gaps while the archiver is down.

pg_receivewal writes into wal/incoming/; every completed segment is checked
(header address, system identifier, size), compressed with zstd (frame
checksum), fsynced, renamed into wal/ and only then removed from incoming/.
The supervisor restarts pg_receivewal when it exits (primary restarted or
promoted elsewhere) and records each failure in archiver/state.json, which
`pgdr status` reports.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from pgdr.backup.relmap import RelmapRecorder
from pgdr.backup.timeline_follow import follow_new_timeline, server_timeline
from pgdr.config import Config
from pgdr.errors import PgdrError
from pgdr.fsutil import exclusive_lock, lock_is_held, write_json_durable
from pgdr.pg.connect import query_one, session
from pgdr.pg.conninfo import split_password, with_params
from pgdr.pg.credentials import auth_error, target_of
from pgdr.pg.probe import find_primary
from pgdr.pg.process import Child, dir_progress, start_detached
from pgdr.pg.programs import Programs
from pgdr.pg.slots import ensure_physical_slot
from pgdr.repo.layout import Repository
from pgdr.repo.wal import WalArchive

log = logging.getLogger(__name__)

COMPLETED_RE = re.compile(r"^([0-9A-F]{24}|[0-9A-F]{8}\.history)$")
POLL_SECONDS = 0.2
MAX_BACKOFF = 10.0
STALL_CHECK_SECONDS = 1.0
HEALTHY_RUN = 30.0  # a pg_receivewal that ran this long resets the restart back-off


class SweepBlocked(Exception):
    """A segment could not be stored (full disk, I/O error); recorded, retried later."""


@dataclass
class ArchiverState:
    pid: int | None = None
    upstream: str | None = None
    started_at: str | None = None
    receiving: bool = False
    last_archived: str | None = None
    last_archived_at: str | None = None
    archived_count: int = 0
    failures: int = 0
    last_failure: str | None = None
    last_failure_at: str | None = None
    last_failure_hint: str | None = None
    # What stops archiving right now (cleared once a segment is archived again), e.g.
    # "repository disk full: 4096 bytes free at /srv/pgdr/repo".
    problem: str | None = None
    # Files set aside when the archiver followed a new timeline (what the failover lost).
    diverged: list[str] = field(default_factory=list)
    # Storing is blocked (full disk, object store away) while receiving goes on: the
    # segments wait in incoming/ and the sweep retries; not a reason to refuse a start.
    archive_blocked: bool = False


def state_path(repo: Repository) -> Path:
    return repo.archiver_dir / "state.json"


def read_state(repo: Repository) -> ArchiverState:
    try:
        return ArchiverState(**json.loads(state_path(repo).read_text()))
    except (OSError, ValueError, TypeError):
        return ArchiverState()


def is_running(repo: Repository) -> bool:
    return lock_is_held(repo.lock_path("archiver"))


class Archiver:
    def __init__(self, config: Config, programs: Programs, repo: Repository) -> None:
        self.config = config
        self.programs = programs
        self.repo = repo
        self.archive = WalArchive(repo, config.archive.compression_level)
        self.state = read_state(repo)
        self.stop_event = threading.Event()
        self.child: Child | None = None
        self.upstream_conninfo: str | None = None
        self.next_stream_check = 0.0
        self.progress_value: object = None
        self.progress_at = time.monotonic()
        self.stall_probe = dir_progress(repo.incoming_dir)
        self.relmap = RelmapRecorder(repo, config.archive.relmap_interval, programs)

    # ---- state -------------------------------------------------------------------
    def _save(self) -> None:
        """state.json, durably; on a full disk overwritten in place (its page is already
        allocated), because the cause must reach `status` exactly when space is gone."""
        path = state_path(self.repo)
        data = (json.dumps(asdict(self.state), indent=2, default=str) + "\n").encode()
        try:
            write_json_durable(path, asdict(self.state))
        except OSError as exc:
            try:
                fd = os.open(path, os.O_WRONLY)
                try:
                    os.pwrite(fd, data, 0)
                    os.ftruncate(fd, len(data))
                finally:
                    os.close(fd)
            except OSError:
                log.warning("archiver: cannot write %s: %s", path, exc.strerror)

    def _fail(self, message: str, hint: str | None = None, *, receiver: bool = True) -> None:
        log.warning("archiver: %s", message)
        self.state.failures += 1
        self.state.last_failure = message
        self.state.last_failure_hint = hint
        self.state.last_failure_at = datetime.now(UTC).isoformat()
        self.state.problem = message
        if receiver:
            self.state.receiving = False
        self._save()

    def space_problem(self) -> str | None:
        """'repository disk full: N bytes free at PATH' when a segment no longer fits."""
        try:
            free = shutil.disk_usage(self.repo.root).free
        except OSError:
            return None
        need = self.repo.wal_segment_size if self.repo.identity() else 16 * 1024 * 1024
        if free < need:
            return f"repository disk full: {free} bytes free at {self.repo.root}"
        return None

    def _os_failure(self, what: str, exc: OSError) -> str:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return self.space_problem() or f"repository disk full at {self.repo.root} ({what})"
        return f"{what}: {exc.strerror or exc}"

    # ---- one pass over incoming/ -----------------------------------------------------
    def sweep(self) -> int:
        """Archive every completed file in incoming/; returns how many were stored."""
        stored = 0
        try:
            names = sorted(n for n in os.listdir(self.repo.incoming_dir) if COMPLETED_RE.match(n))
        except FileNotFoundError:
            return 0
        for name in names:
            src = self.repo.incoming_dir / name
            try:
                outcome = self.archive.store(src)
            except OSError as exc:  # a full disk or the object store away: keep it, retry later
                self.state.archive_blocked = True
                self._fail(self._os_failure(f"cannot archive {name}", exc), receiver=False)
                raise SweepBlocked from None
            except PgdrError as exc:
                rejected = self.repo.archiver_dir / "rejected"
                rejected.mkdir(exist_ok=True)
                os.replace(src, rejected / name)
                self._fail(f"rejected {name}: {exc.message}", receiver=False)
                continue
            src.unlink()
            if outcome == "stored":
                stored += 1
                self.state.last_archived = name
                self.state.last_archived_at = datetime.now(UTC).isoformat()
                self.state.archived_count += 1
        if stored:
            self.state.problem = None
            self.state.archive_blocked = False
            self._save()
        return stored

    # ---- pg_receivewal ---------------------------------------------------------------
    def _set_aside_torn_partials(self) -> None:
        """pg_receivewal pads a new .partial to the full segment size before it writes any
        WAL; a full disk can cut that padding short, and pg_receivewal then refuses to
        start ("has N bytes, should be 0 or 16777216") forever. Such a file holds no WAL
        (the slot still does), so it is moved aside, where it takes no new space."""
        size = self.repo.wal_segment_size if self.repo.identity() else None
        for path in self.repo.incoming_dir.glob("*.partial"):
            try:
                length = path.stat().st_size
            except OSError:
                continue
            if length == 0 or length == size or size is None:
                continue
            rejected = self.repo.archiver_dir / "rejected"
            rejected.mkdir(exist_ok=True)
            os.replace(path, rejected / f"{path.name}.torn")
            log.warning("archiver: moved %s (%d bytes: its pre-allocation was cut short, no WAL in it) "
                        "to %s", path.name, length, rejected)

    def _follow_timeline(self, conninfo: str) -> None:
        """After a failover, resume on the new primary's timeline: files that start past its
        fork point go to archiver/diverged/ (see timeline_follow)."""
        try:
            self.sweep()  # completed segments of the old timeline are archived, not set aside
        except SweepBlocked:
            pass  # recorded by sweep; a full disk must not keep pg_receivewal from starting
        server = server_timeline(conninfo)
        moved = follow_new_timeline(self.repo.incoming_dir, self.repo.archiver_dir / "diverged",
                                    self.repo.wal_segment_size, server, self.programs.run_as.chown)
        if moved:
            self.state.diverged = [*self.state.diverged, *moved][-20:]
            self._save()

    def _start_receiver(self) -> None:
        self._set_aside_torn_partials()
        primary = find_primary(self.config)
        conninfo = with_params(primary.node.conninfo,
                               application_name=self.config.archive.application_name)
        facts = primary.facts or {}
        seg = query_one(conninfo, "select pg_size_bytes(current_setting('wal_segment_size')) as s")["s"]
        self.repo.claim(str(facts["system_identifier"]), int(facts["server_version_num"]), int(seg))
        ensure_physical_slot(conninfo, self.config.archive.slot)
        self._follow_timeline(conninfo)
        plain, password = split_password(conninfo)
        self.upstream_conninfo = conninfo
        self.progress_value, self.progress_at = None, time.monotonic()
        programs = self.programs.for_server(version_num=facts["server_version_num"], what=primary.node.name)
        self.child = programs.spawn(
            "pg_receivewal",
            ["-D", str(self.repo.incoming_dir), "-S", self.config.archive.slot, "--synchronous",
             "--no-loop", "-d", plain],
            password=password, log_path=self.repo.archiver_dir / "pg_receivewal.log")
        self.upstream_conninfo = conninfo
        self.state.upstream = primary.node.name
        # Not "receiving" yet: only once the primary shows the walsender streaming.
        self.state.receiving = False
        if self.space_problem() is None:
            self.state.problem = None
        self._save()

    def _check_streaming(self) -> None:
        """receiving = True once the primary's pg_stat_replication shows our walsender
        streaming: a pg_receivewal that waits for a password or was refused never is."""
        if self.upstream_conninfo is None or time.monotonic() < self.next_stream_check:
            return
        self.next_stream_check = time.monotonic() + 0.5
        try:
            with session(self.upstream_conninfo, timeout=3) as conn:
                row = conn.execute("select 1 from pg_stat_replication where application_name = %s "
                                   "and state = 'streaming'",
                                   (self.config.archive.application_name,)).fetchone()
        except (PgdrError, psycopg.Error) as exc:
            log.debug("archiver: cannot check streaming: %s", exc)
            return
        if row is not None:
            self.state.receiving = True
            self._save()

    def receiver_stalled(self) -> str | None:
        """Why pg_receivewal counts as stalled: nothing written for [pg] stall_timeout while
        the upstream has WAL to send, or does not answer at all (a SIGSTOPped primary
        leaves pg_receivewal waiting forever). None while it progresses or all is idle."""
        value, now = self.stall_probe(), time.monotonic()
        if value != self.progress_value:
            self.progress_value, self.progress_at = value, now
            return None
        stall = self.config.pg.stall_timeout
        if now - self.progress_at < stall or self.upstream_conninfo is None:
            return None
        upstream = self.state.upstream or "the primary"
        try:
            row = query_one(self.upstream_conninfo,
                            "select pg_current_wal_lsn() > coalesce((select flush_lsn from pg_stat_replication "
                            "where application_name = %s limit 1), '0/0') as behind",
                            (self.config.archive.application_name,), timeout=5, statement_timeout=5,
                            what="the archive's position")
        except PgdrError as exc:
            return f"pg_receivewal received nothing for {stall:.0f}s and {upstream} does not answer: {exc.message}"
        if not row["behind"]:
            self.progress_at = now  # idle primary: nothing to receive
            return None
        return f"pg_receivewal received nothing for {stall:.0f}s while {upstream} has WAL to send"

    def _receiver_exit_reason(self, code: int) -> tuple[str, str | None]:
        """What pg_receivewal said last, and a hint when it names an auth/privilege problem."""
        # Its log may sit on the very disk that is full, so ask the disk first.
        space = self.space_problem()
        if space:
            return f"pg_receivewal exited with code {code}: {space}", None
        try:
            lines = (self.repo.archiver_dir / "pg_receivewal.log").read_text().splitlines()
        except OSError:
            lines = []
        tail = next((ln for ln in reversed(lines) if "error" in ln or "FATAL" in ln), None)
        refused = auth_error(tail or "", target_of(["-d", self.upstream_conninfo or ""]))
        if refused is not None:
            return f"pg_receivewal: {refused.message}", refused.hint
        return f"pg_receivewal exited with code {code}" + (f": {tail.strip()}" if tail else ""), None

    def run(self, on_ready: Callable[[], None] | None = None) -> None:
        """Run until stop() or SIGTERM: supervise pg_receivewal and sweep incoming/."""
        self.repo.ensure()
        with exclusive_lock(self.repo.lock_path("archiver"), "archiver"):
            self.state.pid = os.getpid()
            self.state.started_at = datetime.now(UTC).isoformat()
            self._save()
            backoff = 0.5
            next_start = 0.0
            sweep_backoff, next_sweep = 0.5, 0.0
            next_stall_check = 0.0
            child_started = time.monotonic()
            ready_sent = False
            try:
                while not self.stop_event.is_set():
                    if self.child is None and time.monotonic() >= next_start:
                        try:
                            self._start_receiver()
                            child_started = time.monotonic()
                        except PgdrError as exc:
                            self._fail(f"cannot start pg_receivewal: {exc.message}", exc.hint)
                            next_start = time.monotonic() + backoff
                            backoff = min(backoff * 2, MAX_BACKOFF)
                        except OSError as exc:  # e.g. no space for its log or state
                            self._fail(self._os_failure("cannot start pg_receivewal", exc))
                            next_start = time.monotonic() + backoff
                            backoff = min(backoff * 2, MAX_BACKOFF)
                    if self.child is not None and (code := self.child.poll()) is not None:
                        self.child = None
                        if time.monotonic() - child_started > HEALTHY_RUN:
                            backoff = 0.5  # it ran fine for a while: this is a new problem
                        if not self.stop_event.is_set():
                            self._fail(*self._receiver_exit_reason(code))
                            next_start = time.monotonic() + backoff
                            backoff = min(backoff * 2, MAX_BACKOFF)
                    if self.child is not None and time.monotonic() >= next_stall_check:
                        next_stall_check = time.monotonic() + STALL_CHECK_SECONDS
                        stalled = self.receiver_stalled()
                        if stalled:
                            self._stop_receiver()
                            self._fail(stalled)
                            next_start = time.monotonic() + backoff
                            backoff = min(backoff * 2, MAX_BACKOFF)
                    if self.child is not None and not self.state.receiving:
                        self._check_streaming()
                    self.relmap.tick(self.upstream_conninfo)
                    if time.monotonic() >= next_sweep:
                        try:
                            self.sweep()
                            sweep_backoff = 0.5
                        except SweepBlocked:  # recorded; retry with back-off until space returns
                            next_sweep = time.monotonic() + sweep_backoff
                            sweep_backoff = min(sweep_backoff * 2, MAX_BACKOFF)
                    if not ready_sent and self.child is not None and self.state.receiving and on_ready:
                        on_ready()
                        ready_sent = True
                    self.stop_event.wait(POLL_SECONDS)
            finally:
                self._stop_receiver()
                try:
                    self.sweep()
                except SweepBlocked:
                    pass
                self.state.receiving = False
                self.state.pid = None
                self._save()

    def _stop_receiver(self) -> None:
        if self.child is not None:
            self.child.stop(grace=10)
        self.child = None

    def stop(self) -> None:
        self.stop_event.set()


# ---- running it in the background ---------------------------------------------------
def start_background(config_path: Path, repo: Repository, timeout: float = 15) -> int:
    """Start `pgdr archiver run` detached (own session) and wait until it streams."""
    if is_running(repo):
        return read_state(repo).pid or 0
    repo.ensure()
    failures_before = read_state(repo).failures
    proc = start_detached([sys.executable, "-m", "pgdr", "--config", str(config_path), "archiver", "run"],
                          log_path=repo.archiver_dir / "archiver.log")
    deadline = time.monotonic() + timeout
    why = f"no walsender streaming to it within {timeout:.0f}s"
    while time.monotonic() < deadline:
        state = read_state(repo)
        if state.pid == proc.pid and state.receiving:
            return proc.pid
        if state.pid == proc.pid and state.failures > failures_before and not state.archive_blocked:
            why = state.last_failure or "failed"  # e.g. authentication: waiting cannot help
            break
        if proc.poll() is not None:
            why = read_state(repo).last_failure or "it exited"
            break
        time.sleep(0.1)
    _terminate(proc)
    hint = read_state(repo).last_failure_hint
    raise PgdrError(f"the archiver did not start streaming: {why}",
                    hint=hint or f"the failure is recorded in {state_path(repo)}; see {repo.archiver_dir / 'archiver.log'}")


def _terminate(proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """Stop an archiver that could not start: it would only retry the same failure."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def stop_background(repo: Repository, timeout: float = 20) -> bool:
    """SIGTERM the background archiver and wait for it to release its lock."""
    if not is_running(repo):
        return False
    try:
        pid = int(repo.lock_path("archiver").read_text().strip())
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError):
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and is_running(repo):
        time.sleep(0.05)
    if is_running(repo):
        os.kill(pid, signal.SIGKILL)
    return True


def archiver_state_dict(repo: Repository) -> dict[str, Any]:
    data = asdict(read_state(repo))
    data["running"] = is_running(repo)
    return data
