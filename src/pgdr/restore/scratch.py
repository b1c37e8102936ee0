"""Scratch instances: a fresh folder, a free port, a private socket, always cleaned up.

<scratch root>/            default <repository>/../scratch, mode 0755 (the server
                           user must traverse it)
  <label>-<random>/        one per restore, owned by the server user, 0700
    data/                  the restored data directory
    run/                   the unix socket (0700), unless the path is too long
    server.log

Nothing is ever restored over an existing folder: every scratch folder is created
new (mkdtemp), and removed again unless the caller keeps it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pgdr.config import Config
from pgdr.errors import PgdrError
from pgdr.fsutil import write_json_durable
from pgdr.pg.children import stop_server
from pgdr.pg.instance import DETACHED_SETTINGS, SOCKET_PATH_MAX, Instance, check_traversable, free_port
from pgdr.pg.programs import Programs
from pgdr.repo.unfinished import OWNER_MARKER, owner, owner_dead

CREATING = ".creating-"
REMOVING = ".removing-"
# glibc >= 2.35 backs large malloc'd blocks with transparent huge pages (madvise) when
# this is set; older glibc and kernels with THP "never" ignore it.
HUGE_MALLOC = "glibc.malloc.hugetlb=1"


def scratch_server_env() -> dict[str, str]:
    """The environment a scratch server is started with: transparent huge pages for its
    backends' large allocations.

    Why: verify's critical path is bt_index_check(heapallindexed) of the largest index,
    a third of whose time goes to random probes of a Bloom filter of up to 64 MB
    (maintenance_work_mem; 16 MB at pgbench scale 100) that PostgreSQL pallocs, i.e.
    mallocs; on 4 kB pages nearly every probe misses the TLB as well as the cache. On huge pages the check took
    1.80-1.88 s against 1.95-2.18 s (pgbench scale 100, pgbench_accounts_pkey, four
    alternating restarts). Only scratch servers get it: a restored server belongs to its
    user, whose memory policy pgdr does not change. A GLIBC_TUNABLES the user set is
    kept and comes after ours: glibc applies the last setting of a tunable, so theirs
    wins, glibc.malloc.hugetlb=0 included."""
    current = os.environ.get("GLIBC_TUNABLES", "")
    return {"GLIBC_TUNABLES": f"{HUGE_MALLOC}:{current}" if current else HUGE_MALLOC}


def scratch_root(config: Config) -> Path:
    if config.verify.scratch_dir is not None:
        return config.verify.scratch_dir
    return config.repository.path.resolve().parent / "scratch"


def pick_port(port_range: tuple[int, int] | None) -> int:
    """A free port, from the configured range when there is one (firewalls, monitoring)."""
    if port_range is None:
        return free_port()
    import socket

    for port in range(port_range[0], port_range[1] + 1):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise PgdrError(f"no free port in verify.ports {port_range[0]}-{port_range[1]}",
                    hint="widen verify.ports or stop kept scratch instances")


@dataclass
class Scratch:
    """One scratch folder and the instance that will run from it."""

    folder: Path
    instance: Instance
    programs: Programs

    @classmethod
    def create(cls, root: Path, label: str, programs: Programs, port: int | None = None,
               port_range: tuple[int, int] | None = None) -> Scratch:
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o755)
        check_traversable(root, programs)
        # The folder appears under its name only with its owner marker inside, so any
        # folder a killed verify leaves can be proven ours and removed by the next one.
        # Killed before the rename, it leaves a CREATING folder (perhaps holding the
        # marker's half-written temporary file) whose name carries the owner's pid and
        # start time, so the next verify can prove that owner dead too.
        me = owner()
        creating = Path(tempfile.mkdtemp(prefix=f"{CREATING}{me['pid']}.{me['start']}-{label}-", dir=root))
        folder = root / f"{label}-{creating.name.rsplit('-', 1)[1]}"
        socket_dir = folder / "run"
        if len(str(socket_dir)) > SOCKET_PATH_MAX:
            digest = hashlib.sha1(str(folder).encode()).hexdigest()[:12]
            socket_dir = Path(tempfile.gettempdir()) / f"pgdr-scratch-{digest}"
        write_json_durable(creating / OWNER_MARKER, {"owner": me, "socket_dir": str(socket_dir)})
        os.rename(creating, folder)
        os.chmod(folder, 0o700)
        programs.run_as.chown(folder)
        socket_dir.mkdir(mode=0o700)
        programs.run_as.chown(socket_dir)
        instance = Instance(label, folder / "data", port or pick_port(port_range), socket_dir, programs,
                            log_file=folder / "server.log", supervised=True,
                            server_env=scratch_server_env())
        return cls(folder, instance, programs)

    def keep(self) -> None:
        """The user keeps this scratch instance: no later verify may remove it."""
        write_json_durable(self.folder / OWNER_MARKER, {"owner": None, "kept": True,
                                                         "socket_dir": str(self.instance.socket_dir)})
        self.instance.release()

    def settings(self) -> dict[str, str | int]:
        """A scratch server: local only, no archiving, no replication, no fsync (thrown away)."""
        settings = self.instance.local_settings()
        settings.update(DETACHED_SETTINGS)
        settings.update({
            "ssl": "off",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "on",
            "cluster_name": self.instance.name,
        })
        return settings

    def destroy(self) -> list[str]:
        """Stop the server and remove every file; returns problems.

        Immediate shutdown (SIGQUIT, SIGKILL after 10 s): the copy is thrown away, so
        nothing it holds needs writing. A fast shutdown's checkpoint (a standby's
        restartpoint) wrote every page the checks had dirtied, hint bits included, only
        for rmtree to remove it, and pg_ctl -w looks only every 100 ms."""
        problems: list[str] = []
        stop_server(self.instance.data_dir)
        if self.instance.is_running():
            self.instance.kill9()
        if self.instance.is_running():
            problems.append(f"the server in {self.instance.data_dir} did not stop")
        self.instance.release()
        # Renamed first: rmtree removes the owner marker at some point along the way, and a
        # verify killed after that left a folder no later verify could prove dead (seen in
        # test_process). The new name carries this pgdr's pid and start time instead.
        me = owner()
        doomed = self.folder.with_name(f"{REMOVING}{me['pid']}.{me['start']}-{self.folder.name}")
        try:
            os.rename(self.folder, doomed)
        except OSError:
            doomed = self.folder
        shutil.rmtree(doomed, ignore_errors=True)
        if not str(self.instance.socket_dir).startswith(str(self.folder)):
            shutil.rmtree(self.instance.socket_dir, ignore_errors=True)
        if doomed.exists():
            problems.append(f"could not remove {doomed}")
        return problems


def reap_stale(root: Path) -> list[Path]:
    """Remove the scratch folders under root that a killed verify left: only folders whose
    marker names a pgdr that is dead (pid + start time) — never a kept or a live one.
    Their server, if one still runs from the folder, is stopped first."""
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for folder in root.iterdir():
        if folder.name.startswith((CREATING, REMOVING)):
            # CREATING: never held a server (no data dir yet); REMOVING: its server was
            # stopped before the rename
            if _creator_dead(folder):
                _remove_when_unused(folder)
                if not folder.exists():
                    removed.append(folder)
            continue
        try:
            data = json.loads((folder / OWNER_MARKER).read_text())
        except (OSError, ValueError):
            continue
        if data.get("kept") or not owner_dead(data):
            continue
        stop_server(folder / "data")
        _remove_when_unused(folder)
        socket_dir = Path(str(data.get("socket_dir") or folder / "run"))
        if not str(socket_dir).startswith(str(folder)):
            shutil.rmtree(socket_dir, ignore_errors=True)
        if not folder.exists():
            removed.append(folder)
    return removed


REAP_WAIT_SECONDS = 10.0


def _users_of(folder: Path) -> list[int]:
    """Processes working inside folder (their cwd or an open file there): a dead verify's
    extraction (tar runs in the folder) can outlive it by the moment its guard needs to
    end the group, longer when a write is stuck behind a sync."""
    inside = str(folder.resolve()) + os.sep
    found: list[int] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            paths = [os.readlink(f"/proc/{entry.name}/cwd")]
            paths += [os.readlink(fd.path) for fd in os.scandir(f"/proc/{entry.name}/fd")]
        except OSError:
            continue
        if any((p + os.sep).startswith(inside) for p in paths):
            found.append(int(entry.name))
    return found


def _remove_when_unused(folder: Path, timeout: float = REAP_WAIT_SECONDS) -> None:
    """Remove a dead verify's folder once nothing works in it any more (bounded: after
    timeout it is removed anyway, and whatever a late writer adds is tried again once).
    Removing while a writer still runs left a half-extracted data directory behind: the
    rmtree finished, then the writer created more files."""
    deadline = time.monotonic() + timeout
    if os.path.isdir("/proc"):
        while _users_of(folder) and time.monotonic() < deadline:
            time.sleep(0.05)
    shutil.rmtree(folder, ignore_errors=True)
    while folder.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
        shutil.rmtree(folder, ignore_errors=True)


def _creator_dead(folder: Path) -> bool:
    """A CREATING (REMOVING) folder's name is `.creating-<pid>.<start>-<label>-<random>`
    (`.removing-<pid>.<start>-<name>`): is that pgdr gone? A name in another form (an
    older pgdr) counts as dead only when empty."""
    tag = folder.name.removeprefix(CREATING).removeprefix(REMOVING).split("-", 1)[0]
    pid, _, start = tag.partition(".")
    if not pid.isdigit():
        with contextlib.suppress(OSError):
            return not any(folder.iterdir())
        return False
    return owner_dead({"owner": {"pid": int(pid), "start": int(start) if start.isdigit() else None}})
