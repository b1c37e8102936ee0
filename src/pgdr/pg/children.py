"""Which processes pgdr owns, on disk, so that none outlives pgdr — not even a SIGKILLed one.

Every program pgdr starts runs in a process group of its own (process.py); every
server pgdr starts and supervises (a scratch instance, a recovering restore) is
recorded by its data directory. Both are kept here, in memory and in a small file
per pgdr process: <run dir>/<pid>-<start time>.json. A pid alone is not an
identity (pids are reused), so owners and children are named by pid plus the
start time the kernel gives in /proc/PID/stat.

- On every exit path of a live pgdr (normal end, exception, SIGINT, SIGTERM)
  `end_all()` ends every group and stops every supervised server.
- A SIGKILLed pgdr cannot clean up. The next pgdr that starts calls `reap_orphans()`:
  for each file whose owner is dead it kills the groups that still exist and were
  started no earlier than recorded, and stops the servers whose postmaster still
  runs from the recorded directory (checked through /proc/PID/cwd: the postmaster
  changes into its data directory). Nothing that cannot be proven pgdr's is touched.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import select
import signal
import stat
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PROC = Path("/proc")


def start_time(pid: int) -> int | None:
    """The kernel's start time of pid (clock ticks since boot), None when it is gone or a zombie."""
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2:].split()
    # fields[0] is field 3 (state); start time is field 22
    if not fields or fields[0] in ("Z", "X"):
        return None
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def is_alive(pid: int, started: int | None = None) -> bool:
    """pid runs (not a zombie) and, when given, is the process that started at `started`."""
    now = start_time(pid)
    return now is not None and (started is None or now == started)


def _process_group(pid: int) -> int | None:
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    try:
        return int(raw[raw.rfind(")") + 2:].split()[2])
    except (IndexError, ValueError):
        return None


def group_members(pgid: int, not_before: int) -> list[int]:
    """Live processes in group pgid started at or after not_before (older ones are not ours).
    A group whose id now belongs to a different leader (the pid was reused) is not ours."""
    leader = start_time(pgid)
    if leader is not None and leader != not_before:
        return []
    members = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if _process_group(pid) != pgid:
            continue
        started = start_time(pid)
        if started is not None and started >= not_before:
            members.append(pid)
    return members


def run_dir() -> Path:
    """Where owners' files live: $PGDR_RUN_DIR, /run/pgdr for root, else a private /tmp folder."""
    explicit = os.environ.get("PGDR_RUN_DIR")
    if explicit:
        path = Path(explicit)
    elif os.geteuid() == 0 and Path("/run").is_dir():
        path = Path("/run/pgdr")
    else:
        path = Path(f"/tmp/pgdr-run-{os.geteuid()}")
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.lstat()  # not a symlink someone else planted in /tmp
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise PermissionError(f"{path} is not a private folder of this user")
    return path


@dataclass
class Group:
    """A process group pgdr started: the leader's pid is the group id."""

    pgid: int
    start: int
    name: str


@dataclass
class Server:
    """A PostgreSQL server pgdr supervises until it hands it over (or removes it)."""

    data_dir: str
    name: str


def postmaster_of(data_dir: Path) -> int | None:
    """The live postmaster running from data_dir: postmaster.pid's pid, proven by its cwd."""
    try:
        pid = int((data_dir / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        cwd = os.readlink(PROC / str(pid) / "cwd")
    except OSError:
        return None
    if not is_alive(pid) or Path(cwd).resolve() != data_dir.resolve():
        return None
    return pid


def lower_priority(task: int, by: int = 10) -> None:
    """Raise the nice value of a process (or, on Linux, one thread: its native id) that
    pgdr owns by `by`, up to 19, so it yields the CPU to the work that decides how long
    a command takes. Best effort: EPERM or a task already gone changes nothing."""
    try:
        os.setpriority(os.PRIO_PROCESS, task, min(19, os.getpriority(os.PRIO_PROCESS, task) + by))
    except OSError:
        pass


def stop_server(data_dir: Path, grace: float = 10.0) -> bool:
    """Immediate shutdown (SIGQUIT) of the postmaster running from data_dir, SIGKILL after
    grace; True when one was running. Bounded: waits at most grace + 5 s."""
    pid = postmaster_of(data_dir)
    if pid is None:
        return False
    started = start_time(pid)
    for sig, wait in ((signal.SIGQUIT, grace), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
        if wait_gone(pid, started, wait):
            return True
    log.warning("the server in %s (pid %s) did not stop after SIGKILL", data_dir, pid)
    return True


def wait_gone(pid: int, started: int | None, seconds: float) -> bool:
    """True once pid (the process that started at `started`) has exited, within seconds.
    Woken by the exit itself through a pidfd (Linux 5.3+; any process, not only a child):
    a 50 ms poll made every scratch server's stop ~40 ms longer than its exit. Elsewhere,
    or when the pidfd cannot be had, it looks every 10 ms."""
    deadline = time.monotonic() + seconds
    try:
        fd: int | None = os.pidfd_open(pid)
    except (AttributeError, OSError):
        fd = None
    try:
        while is_alive(pid, started):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if fd is None:
                time.sleep(min(0.01, left))
                continue
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            poller.poll(left * 1000)  # readable at the exit; re-checked by is_alive
        return True
    finally:
        if fd is not None:
            os.close(fd)


def kill_group(pgid: int, not_before: int, grace: float = 3.0) -> bool:
    """SIGTERM then SIGKILL every process of group pgid that is ours; True if any was alive."""
    members = group_members(pgid, not_before)
    if not members:
        return False
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        for pid in members:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            members = [p for p in members if is_alive(p)]
            if not members:
                return True
            time.sleep(0.05)
    return True


class Registry:
    """This pgdr process's children, mirrored to its file in run_dir()."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.groups: dict[int, Group] = {}
        self.servers: dict[str, Server] = {}
        self._path: Path | None = None
        self._owner: tuple[int, int] | None = None

    def _file(self) -> Path | None:
        pid = os.getpid()
        if self._owner is None or self._owner[0] != pid:  # a forked copy is a new owner
            started = start_time(pid)
            if started is None:
                return None
            self._owner = (pid, started)
            self.groups, self.servers = {}, {}
            try:
                self._path = run_dir() / f"{pid}-{started}.json"
            except OSError as exc:
                log.warning("cannot record child processes: %s", exc)
                self._path = None
        return self._path

    def _save(self) -> None:
        path = self._file()
        if path is None:
            return
        if not self.groups and not self.servers:
            path.unlink(missing_ok=True)
            return
        data: dict[str, Any] = {"owner": self._owner, "groups": [asdict(g) for g in self.groups.values()],
                                "servers": [asdict(s) for s in self.servers.values()]}
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(data))
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("cannot record child processes in %s: %s", path, exc)

    def add_group(self, pgid: int, name: str) -> None:
        started = start_time(pgid) or 0
        with self.lock:
            self._file()
            self.groups[pgid] = Group(pgid, started, name)
            self._save()

    def remove_group(self, pgid: int) -> None:
        with self.lock:
            if self.groups.pop(pgid, None) is not None:
                self._save()

    def add_server(self, data_dir: Path, name: str) -> None:
        with self.lock:
            self._file()
            key = str(data_dir.resolve())
            self.servers[key] = Server(key, name)
            self._save()

    def release_server(self, data_dir: Path) -> None:
        """The server is handed over (or stopped): pgdr no longer ends it on exit."""
        with self.lock:
            if self.servers.pop(str(data_dir.resolve()), None) is not None:
                self._save()

    def end_all(self) -> None:
        """End every group and supervised server of this process (exit paths)."""
        with self.lock:
            if self._owner is None or self._owner[0] != os.getpid():
                return
            groups, servers = list(self.groups.values()), list(self.servers.values())
        for group in groups:
            if kill_group(group.pgid, group.start):
                log.warning("ended %s (process group %s) on exit", group.name, group.pgid)
        for server in servers:
            if stop_server(Path(server.data_dir)):
                log.warning("stopped the %s server in %s on exit", server.name, server.data_dir)
        with self.lock:
            self.groups.clear()
            self.servers.clear()
            self._save()


    def _after_fork(self) -> None:
        """A forked worker (waldump's process pool) starts with no children and a fresh
        lock: another thread may have held this one at the moment of the fork."""
        self.lock = threading.Lock()
        self.groups, self.servers = {}, {}
        self._path = self._owner = None


REGISTRY = Registry()
atexit.register(REGISTRY.end_all)
os.register_at_fork(after_in_child=REGISTRY._after_fork)


def reap_orphans() -> list[str]:
    """End what dead pgdr processes left behind; returns one line per thing ended."""
    try:
        folder = run_dir()
    except OSError:
        return []
    ended: list[str] = []
    for path in folder.glob("*.json"):
        try:
            pid_text, start_text = path.stem.split("-", 1)
            owner_pid, owner_start = int(pid_text), int(start_text)
        except ValueError:
            continue
        if is_alive(owner_pid, owner_start):
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
            continue
        for raw in data.get("groups", []):
            group = Group(**raw)
            if kill_group(group.pgid, group.start, grace=1.0):
                ended.append(f"{group.name} (pid {group.pgid}) left by pgdr pid {owner_pid}")
        for raw in data.get("servers", []):
            server = Server(**raw)
            if stop_server(Path(server.data_dir)):
                ended.append(f"the {server.name} server in {server.data_dir} left by pgdr pid {owner_pid}")
        path.unlink(missing_ok=True)
    for line in ended:
        log.warning("ended %s", line)
    return ended
