"""The one way pgdr runs an external program (Barman's command_wrappers, with guards).

Every program runs:
- in a process group (a session) of its own, registered in children.REGISTRY, so
  pgdr ends the whole group — pg_basebackup's `-X stream` child included — on every
  exit path, and the next pgdr ends it if pgdr itself was SIGKILLed;
- under a guard that ends the group when pgdr dies, without preexec_fn (which is
  unsafe in threaded processes): `setpriv --pdeathsig USR2` execs a tiny /bin/sh
  that first checks its parent is still the pgdr that forked it (a parent that died
  in between would never send the signal), then runs the program in the background
  and waits; on USR2 it SIGKILLs its own group. PR_SET_PDEATHSIG fires when the
  *thread* that forked exits, which is why run() waits in the thread that started it;
- with stderr streamed to the log line by line, passwords masked;
- with bounded waits: an overall timeout, and a stall timeout with a progress probe
  (no progress for that long: the group is killed and the error names what stalled);
- cancellable: a `cancel` event, or pgdr shutting down (SIGINT/SIGTERM), ends it.
"""

from __future__ import annotations

import functools
import logging
import os
import select
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pgdr.errors import ProgramFailed
from pgdr.pg import children
from pgdr.pg.conninfo import mask_text

log = logging.getLogger(__name__)

# Set by the CLI's SIGINT/SIGTERM handlers: every run in progress ends its program.
SHUTTING_DOWN = threading.Event()

# $0: pgdr's pid, $1: the folder to run the program in, then the program. The folder is
# entered only after the parent check and the trap: a guard whose pgdr died before the
# check (under load it can wait seconds for a CPU to find out, then exits 125 without
# starting anything) never sits in the program's folder - a scratch folder a test or the
# next pgdr checks for processes - and the Popen child itself runs in /.
_GUARD_SCRIPT = ('[ "$PPID" = "$0" ] || exit 125; '
                 "trap 'kill -KILL 0' USR2; "
                 'cd -- "$1" || exit 125; shift; '
                 'exec 3<&0; "$@" 0<&3 3<&- & wait $!')


class Cancelled(ProgramFailed):
    """A run was cancelled (Ctrl-C, SIGTERM, or its cancel event)."""


class Stalled(ProgramFailed):
    """A program made no progress for its stall timeout and was ended."""


def _guard_prefix() -> list[str]:
    setpriv = shutil.which("setpriv")
    if setpriv is None or not Path("/bin/sh").exists():
        return []
    return [setpriv, "--pdeathsig", "USR2", "/bin/sh", "-c", _GUARD_SCRIPT, str(os.getpid())]


_GUARD: list[str] | None = None


def guard_prefix() -> list[str]:
    """argv prefix that makes a child die with this pgdr process (empty when unavailable);
    the folder to run in follows it, then the program (see _popen)."""
    global _GUARD
    if _GUARD is None or (_GUARD and _GUARD[-1] != str(os.getpid())):
        _GUARD = _guard_prefix()
    return _GUARD


def dir_progress(path: Path, *, idle_while_empty: bool = False) -> Callable[[], object]:
    """A progress probe: the bytes and newest mtime below path (a backup or dump folder).
    idle_while_empty: no stall is counted before the first byte (a spread checkpoint)."""
    def probe() -> object:
        total, newest = 0, 0.0
        for dirpath, _dirs, files in os.walk(path):
            for name in files:
                try:
                    st = os.stat(os.path.join(dirpath, name))
                except OSError:
                    continue
                total += st.st_size
                newest = max(newest, st.st_mtime)
        if idle_while_empty and total == 0:
            return None
        return (total, newest)
    return probe


@dataclass
class Completed:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str


class _Pump(threading.Thread):
    """Reads a pipe line by line: keeps it (bounded) and logs it (masked)."""

    def __init__(self, stream: IO[bytes], name: str, to_log: bool, keep_bytes: int,
                 on_line: Callable[[str], None] | None = None) -> None:
        super().__init__(daemon=True)
        self.on_line = on_line
        self.stream = stream
        self.name_ = name
        self.to_log = to_log
        self.keep_bytes = keep_bytes
        self.chunks: list[bytes] = []
        self.size = 0
        self.lines = 0

    def run(self) -> None:
        # stderr line by line (to the log); stdout in large reads (pg_waldump's can be big)
        by_line = self.to_log or self.on_line is not None
        read = self.stream.readline if by_line else functools.partial(os.read, self.stream.fileno(), 1 << 16)
        for chunk in iter(read, b""):
            self.lines += 1
            self.size += len(chunk)
            self.chunks.append(chunk)
            if self.size > self.keep_bytes and len(self.chunks) > 1:
                self.size -= len(self.chunks.pop(0))
            if self.to_log or self.on_line is not None:
                line = mask_text(chunk.decode(errors="replace").rstrip())
                if self.to_log:
                    log.debug("%s: %s", self.name_, line)
                if self.on_line is not None:
                    self.on_line(line)
        self.stream.close()

    def text(self) -> str:
        return b"".join(self.chunks).decode(errors="replace")


def _popen(argv: Sequence[str], *, env: Mapping[str, str] | None, user_kwargs: Mapping[str, Any],
           stdin: Any, stdout: Any, stderr: Any, cwd: str) -> subprocess.Popen[bytes]:
    if not argv or not (os.path.isabs(argv[0]) or shutil.which(argv[0])):
        raise ProgramFailed(f"cannot start {argv[0] if argv else 'an empty command'}: not found")
    if not os.path.isdir(cwd):
        raise ProgramFailed(f"cannot start {argv[0]}: no folder {cwd}")
    cwd = os.path.abspath(cwd)   # the guard enters it from /
    guard = guard_prefix()
    try:
        return subprocess.Popen(
            [*guard, cwd, *argv] if guard else list(argv), stdin=stdin, stdout=stdout, stderr=stderr, env=env,
            cwd="/" if guard else cwd, start_new_session=True, close_fds=True, **user_kwargs)
    except OSError as exc:
        raise ProgramFailed(f"cannot start {argv[0]}: {exc.strerror}") from None


def end_group(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM the program's group, SIGKILL it after grace seconds; reaps the leader."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        proc.poll()
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.02)
    else:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        log.warning("process %s did not exit after SIGKILL", proc.pid)


def _sweep_group(pgid: int) -> None:
    """After the leader exited: anything left in its group is a straggler; kill it."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run(argv: Sequence[str], *, name: str | None = None, env: Mapping[str, str] | None = None,
        user_kwargs: Mapping[str, Any] | None = None, ok_codes: Sequence[int] = (0,),
        timeout: float | None = None, stdout_path: Path | None = None, input_bytes: bytes | None = None,
        stall_timeout: float | None = None, progress: Callable[[], object] | None = None,
        stalled_what: str | None = None, cancel: threading.Event | None = None,
        cwd: str = "/", log_stderr: bool = True,
        feed: Callable[[IO[bytes]], None] | None = None,
        on_line: Callable[[str], None] | None = None,
        stdin_fd: int | None = None, stdout_fd: int | None = None,
        on_start: Callable[[], object] | None = None) -> Completed:
    """Run to completion; raise ProgramFailed (stderr's gist), Stalled or Cancelled.

    stdin_fd / stdout_fd: a pipe end handed to the program as its stdin / stdout (two
    runs joined by one pipe pgdr made, see restore/extract.py); closed here once the
    program has started, or failed to, so the other end sees EOF when the program ends.

    on_line: called with each line of stdout and stderr as it arrives, passwords masked
    (`pgdr migrate` streams the user's command to the terminal this way).

    on_start: called once the program is started (`pgdr backup` starts its checks then,
    so that their imports do not hold the interpreter while the copy is being started).

    progress: called about once a second when stall_timeout is set; a changed value is
    progress, None means "nothing to do now" (the stall clock restarts). Without a
    probe, output on stdout/stderr counts as progress.
    """
    name = name or os.path.basename(argv[0])
    log.debug("run: %s", mask_text(" ".join(argv)))
    out_file = open(stdout_path, "wb") if stdout_path else None  # noqa: SIM115
    stdin: Any = subprocess.PIPE if (input_bytes is not None or feed is not None) else subprocess.DEVNULL
    try:
        proc = _popen(argv, env=env, user_kwargs=user_kwargs or {},
                      stdin=stdin if stdin_fd is None else stdin_fd,
                      stdout=out_file or (subprocess.PIPE if stdout_fd is None else stdout_fd),
                      stderr=subprocess.PIPE, cwd=cwd)
    finally:
        if out_file:
            out_file.close()
        for fd in (stdin_fd, stdout_fd):
            if fd is not None:
                os.close(fd)
    children.REGISTRY.add_group(proc.pid, name)
    try:
        if on_start is not None:
            on_start()
        err = _Pump(proc.stderr, name, log_stderr, 64 * 1024, on_line)  # type: ignore[arg-type]
        err.start()
        out = None
        if proc.stdout is not None:
            out = _Pump(proc.stdout, name, False, 1 << 30, on_line)
            out.start()
        if input_bytes is not None and proc.stdin is not None:
            try:
                proc.stdin.write(input_bytes)
                proc.stdin.close()
            except BrokenPipeError:
                pass
        if feed is not None and proc.stdin is not None:
            try:
                feed(proc.stdin)
            finally:
                try:
                    proc.stdin.close()
                except BrokenPipeError:
                    pass
        _wait(proc, name, timeout, stall_timeout, progress, stalled_what, cancel,
              lambda: (err.lines, out.lines if out else 0, err.size, out.size if out else 0))
        err.join(5)
        if out:
            out.join(5)
        _sweep_group(proc.pid)
    except BaseException:
        end_group(proc)
        raise
    finally:
        children.REGISTRY.remove_group(proc.pid)
    stderr = err.text()
    code = proc.returncode
    if code not in ok_codes:
        log.debug("%s exited with %s; its stderr: %s", name, code, mask_text(stderr.strip()[-4000:]))
        raise ProgramFailed(f"{name} failed: {summarize_stderr(stderr, code)}")
    return Completed(list(argv), code, out.text() if out else "", stderr)


class _ExitWatch:
    """Wait for a child's exit with a timeout, woken the moment it exits (a pidfd, Linux
    5.3+), not at the next poll: Popen.wait(timeout) polls with sleeps up to 50 ms, a
    delay every program pgdr runs in sequence (tar, pg_verifybackup, pg_ctl) added up."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.fd: int | None = None
        try:
            self.fd = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):  # not Linux, an old kernel, or already reaped
            self.fd = None

    def wait(self, seconds: float) -> bool:
        """True once the child has exited (and is reaped)."""
        if self.fd is None:
            try:
                self.proc.wait(seconds)
                return True
            except subprocess.TimeoutExpired:
                return False
        poller = select.poll()  # not select(): no FD_SETSIZE limit
        poller.register(self.fd, select.POLLIN)
        if not poller.poll(seconds * 1000):
            return False
        self.proc.wait()
        return True

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _wait(proc: subprocess.Popen[bytes], name: str, timeout: float | None, stall_timeout: float | None,
          progress: Callable[[], object] | None, stalled_what: str | None,
          cancel: threading.Event | None, output: Callable[[], object]) -> None:
    started = last_change = time.monotonic()
    probe = progress or output
    last_value: object = probe() if stall_timeout else None
    next_probe = started + 1.0
    exited = _ExitWatch(proc)
    try:
        while True:
            if exited.wait(0.1):
                return
            now = time.monotonic()
            if SHUTTING_DOWN.is_set() or (cancel is not None and cancel.is_set()):
                end_group(proc)
                raise Cancelled(f"{name} was cancelled")
            if timeout is not None and now - started > timeout:
                end_group(proc)
                raise ProgramFailed(f"{name} did not finish within {timeout:.0f}s and was ended")
            if stall_timeout and now >= next_probe:
                next_probe = now + 1.0
                value = probe()
                if value is None or value != last_value:
                    last_value, last_change = value, now
                elif now - last_change > stall_timeout:
                    end_group(proc)
                    raise Stalled(f"{name} made no progress for {stall_timeout:.0f}s"
                                  + (f" ({stalled_what})" if stalled_what else "") + " and was ended",
                                  hint="a peer that stopped answering, a full or hung disk? "
                                       "raise the stall timeout in pgdr.toml if it is just slow")
    finally:
        exited.close()


class Child:
    """A long-running program (pg_receivewal): poll it, stop it; its group is registered."""

    def __init__(self, proc: subprocess.Popen[bytes], name: str) -> None:
        self.proc = proc
        self.name = name
        self.pid = proc.pid

    def poll(self) -> int | None:
        code = self.proc.poll()
        if code is not None:
            _sweep_group(self.pid)
            children.REGISTRY.remove_group(self.pid)
        return code

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM (a clean exit for pg_receivewal), SIGKILL after grace; bounded."""
        if self.proc.poll() is None:
            end_group(self.proc, grace)
        _sweep_group(self.pid)
        children.REGISTRY.remove_group(self.pid)


def spawn(argv: Sequence[str], *, name: str | None = None, env: Mapping[str, str] | None = None,
          user_kwargs: Mapping[str, Any] | None = None, log_path: Path | None = None,
          cwd: str = "/") -> Child:
    """Start a long-running program, output appended to log_path (or discarded)."""
    name = name or os.path.basename(argv[0])
    log.debug("spawn: %s", mask_text(" ".join(argv)))
    out: Any = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        proc = _popen(argv, env=env, user_kwargs=user_kwargs or {}, stdin=subprocess.DEVNULL,
                      stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
    finally:
        if log_path:
            out.close()
    children.REGISTRY.add_group(proc.pid, name)
    return Child(proc, name)


_WATCHDOG_SCRIPT = (
    '[ "$PPID" = "$0" ] || exit 125; d=$1; '
    'stop() { pid=$(head -n 1 "$d/postmaster.pid" 2>/dev/null) && [ -n "$pid" ] && '
    '[ "$(readlink "/proc/$pid/cwd")" = "$d" ] && kill -QUIT "$pid"; exit 0; }; '
    "trap stop TERM HUP; "
    "while :; do sleep 2 & wait $!; done")


class Watchdog:
    """Stops a supervised server the moment pgdr dies (even by SIGKILL).

    pg_ctl puts the postmaster in a session of its own, out of reach of the program
    guard, so a tiny shell started with `setpriv --pdeathsig TERM` waits beside it; on
    pgdr's death (or on end_all's SIGTERM) it sends the postmaster SIGQUIT (immediate
    shutdown) — only the postmaster whose /proc/PID/cwd is the data directory. release()
    ends the watchdog silently (SIGKILL) when the server is handed over."""

    def __init__(self, data_dir: Path) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            return  # the next pgdr's reap_orphans still stops it
        self.proc = subprocess.Popen(
            [setpriv, "--pdeathsig", "TERM", "/bin/sh", "-c", _WATCHDOG_SCRIPT, str(os.getpid()),
             str(data_dir.resolve())],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, close_fds=True, cwd="/")
        children.REGISTRY.add_group(self.proc.pid, f"watchdog of {data_dir}")

    def release(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        children.REGISTRY.remove_group(self.proc.pid)
        self.proc = None


def start_detached(argv: Sequence[str], *, log_path: Path,
                   env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a pgdr service that must outlive this process (`pgdr archiver start`): its own
    session, no guard, not registered. The only untracked start in pgdr."""
    with open(log_path, "ab") as out:
        return subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd="/", env=env, close_fds=True)


TAR_SUMMARY = "Exiting with failure status due to previous errors"
OS_CAUSES = ("No space left on device", "Disk quota exceeded", "Read-only file system",
             "Permission denied", "Input/output error")


def summarize_stderr(stderr: str, returncode: int) -> str:
    """The most telling line of a PostgreSQL program's stderr, passwords masked."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    # The operating system's cause beats a program's summary ("tar: Exiting with failure
    # status due to previous errors" hides "Cannot write: No space left on device").
    for cause in OS_CAUSES:
        for line in lines:
            if cause in line:
                return mask_text(line)
    for prefix in ("error:", "FATAL:", "fatal:", "ERROR:"):
        for line in lines:
            if prefix in line:
                return mask_text(line)
    # GNU tar ends with a summary that names nothing ("Exiting with failure status due to
    # previous errors"): the first of those previous errors says what went wrong.
    told = [ln for ln in lines if not ln.endswith(TAR_SUMMARY)]
    if told and len(told) < len(lines):
        return mask_text(told[0])
    return mask_text(lines[-1]) if lines else f"exit code {returncode}"
