"""Durable file operations: write, fsync, then rename (and fsync the directory).

A backup, a WAL segment or a record is visible under its final name only once its
bytes are on disk, so a crash or SIGKILL can leave debris but never a half file
that looks complete.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pgdr.errors import LockBusy


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_rename(src: Path, dst: Path) -> None:
    os.replace(src, dst)
    fsync_path(dst.parent)


def write_bytes_durable(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o644)
    durable_rename(tmp, path)


def replace_file_keeping_owner(path: Path, data: bytes) -> None:
    """Rewrite an operator's file (pgbouncer.ini, an env file, postgresql.auto.conf)
    atomically, keeping its owner, group and mode: a 0640 ini that holds passwords must
    not become world-readable, nor a 0600 one unreadable to the program that reads it.
    A symlink (/etc/pgbouncer/pgbouncer.ini → elsewhere) stays a symlink: its target is rewritten."""
    path = path.resolve()
    st = path.stat()
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchown(fd, st.st_uid, st.st_gid)
        os.fchmod(fd, st.st_mode & 0o7777)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    durable_rename(tmp, path)


def write_json_durable(path: Path, obj: Any) -> None:
    write_bytes_durable(path, (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())


def fsync_tree(root: Path) -> None:
    """fsync every file and directory below root (after a program wrote them with --no-sync)."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fsync_path(Path(dirpath) / name)
        fsync_path(Path(dirpath))


def tree_size(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            try:
                total += (Path(dirpath) / name).stat().st_size
            except FileNotFoundError:
                pass
    return total


@contextmanager
def exclusive_lock(path: Path, what: str) -> Iterator[None]:
    """A non-blocking flock: a second backup or archiver fails fast instead of queueing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+")  # noqa: SIM115
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockBusy(f"another pgdr {what} is running (lock {path})") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        yield
    finally:
        fh.close()


def lock_is_held(path: Path) -> bool:
    if not path.exists():
        return False
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
        return False
