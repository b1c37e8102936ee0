"""`pgdr restore --redis NAME [--backup ID] --target-dir DIR --port P`: a NEW redis-server
from a snapshot, never over a running one.

Refused (nothing touched) when the port already answers, when a live redis-server runs
in DIR, or when DIR is not empty. The snapshot is checked on the way out of the
repository (sha256), loaded by the new server (bounded wait that names what it waits
for), and its key counts compared with the metadata. The server keeps running.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgdr.checks import Check
from pgdr.config import Config, RedisConfig
from pgdr.errors import PgdrError, UsageError
from pgdr.rdb import programs
from pgdr.rdb.fetch import find_snapshot, materialize
from pgdr.rdb.rdbfile import RdbDamaged, scan
from pgdr.rdb.scratch import wait_loaded
from pgdr.rdb.store import SnapshotStore
from pgdr.rdb.verify import compare_counts
from pgdr.repo.layout import Repository


@dataclass
class RedisRestoreResult:
    name: str
    snapshot_id: str
    target_dir: Path
    port: int
    pid: int | None = None
    checks: list[Check] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def passed(self) -> bool:
        return all(c.status != "fail" for c in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": "redis", "name": self.name, "snapshot_id": self.snapshot_id,
                "target_dir": str(self.target_dir), "port": self.port, "pid": self.pid, "passed": self.passed,
                "duration_s": round(self.duration_s, 3), "checks": [c.as_dict() for c in self.checks]}


def port_answers(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def live_redis_in(folder: Path) -> int | None:
    """The pid of a redis-server whose working directory is folder (redis chdirs to its dir)."""
    target = folder.resolve()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if not (proc / "comm").read_text().startswith("redis-server"):
                continue
            if Path(os.readlink(proc / "cwd")) == target:
                return int(proc.name)
        except OSError:
            continue
    return None


def _refuse_unsafe(target_dir: Path, port: int) -> None:
    pid = live_redis_in(target_dir) if target_dir.exists() else None
    if pid is not None:
        raise UsageError(f"a redis-server (pid {pid}) is running in {target_dir}: restore never replaces a "
                         f"running one", hint="restore into a new folder, or stop that server first")
    if port_answers(port):
        raise UsageError(f"port {port} already answers on 127.0.0.1: restore never starts over a running server",
                         hint="choose a free --port")
    if target_dir.exists() and (not target_dir.is_dir() or any(target_dir.iterdir())):
        raise UsageError(f"{target_dir} is not an empty folder", hint="choose a new --target-dir")


def restore_snapshot(config: Config, repo: Repository, rc: RedisConfig, which: str | None,
                     target_dir: Path, port: int) -> RedisRestoreResult:
    started = time.monotonic()
    target_dir = target_dir.absolute()
    _refuse_unsafe(target_dir, port)
    store = SnapshotStore(repo, rc.name)
    meta = find_snapshot(store, rc.name, which)
    result = RedisRestoreResult(rc.name, meta["id"], target_dir, port)
    created = not target_dir.exists()
    target_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
    rdb = target_dir / "dump.rdb"
    try:
        materialize(store, meta, rdb)  # SnapshotDamaged: nothing started
        summary = scan(rdb)
    except RdbDamaged as exc:
        _remove_created(target_dir, created)
        raise RdbDamaged(f"snapshot {meta['id']} is not a complete RDB: {exc.message}; nothing was started",
                         hint="verify it (`pgdr verify --redis`) and restore an older one") from None
    except BaseException:
        _remove_created(target_dir, created)
        raise
    result.checks.append(Check("checksum", "ok", "the snapshot's sha256 matches"))
    expected: dict[str, dict[str, int]] = meta.get("databases") or {}
    databases = max(16, max((int(db) for db in expected), default=0) + 1)
    conf = target_dir / "redis.conf"
    conf.write_text("\n".join([
        "# written by pgdr restore --redis: a new server from snapshot " + meta["id"],
        f"port {port}", "bind 127.0.0.1", f'dir "{target_dir}"', "dbfilename dump.rdb",
        "daemonize yes", f'pidfile "{target_dir / "redis.pid"}"', f'logfile "{target_dir / "redis.log"}"',
        "appendonly no", f"databases {databases}", ""]))
    os.chmod(conf, 0o640)
    _refuse_unsafe_port_again(port)
    before_ms = int(time.time() * 1000)
    programs.run("redis-server", [str(conf)], timeout=30)
    pid_file = target_dir / "redis.pid"

    def alive() -> bool:
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            return True  # not written yet: the daemon is starting
        result.pid = pid
        return Path(f"/proc/{pid}").exists()

    try:
        info = wait_loaded(port, time.monotonic() + rc.bgsave_timeout, alive, target_dir / "redis.log",
                           f"the restored redis-server (port {port})")
    except PgdrError as exc:
        result.checks.append(Check("load", "fail", exc.message, hint=exc.hint))
        result.duration_s = time.monotonic() - started
        return result
    after_ms = int(time.time() * 1000)
    alive()
    result.checks.append(Check("load", "ok", f"redis-server {info.get('redis_version')} (pid {result.pid}) "
                               f"serves it on 127.0.0.1:{port}"))
    result.checks.append(compare_counts(summary, expected, info, before_ms, after_ms))
    result.duration_s = time.monotonic() - started
    return result


def _remove_created(target_dir: Path, created: bool) -> None:
    """Undo our own folder (it holds only the file we fetched) after a refusal."""
    if created:
        shutil.rmtree(target_dir, ignore_errors=True)


def _refuse_unsafe_port_again(port: int) -> None:
    """Checked again just before the start: fetching a large snapshot takes time."""
    if port_answers(port):
        raise UsageError(f"port {port} began answering during the restore: not starting over it",
                         hint="choose a free --port")
