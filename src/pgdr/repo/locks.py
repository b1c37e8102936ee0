"""Readers and expire: restore and verify hold SHARED locks on what they read; expire
takes each one EXCLUSIVELY without waiting, and skips (and says so) what is held.

locks/backup-<id>.lock   one per backup: held shared while a restore/verify reads it
locks/wal-archive.lock   held shared while recovery may fetch from the archive
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO

from pgdr.errors import LockBusy
from pgdr.repo.layout import Repository

WAL_LOCK = "wal-archive"


def backup_lock(repo: Repository, backup_id: str) -> Path:
    return repo.lock_path(f"backup-{backup_id}")


def wal_lock(repo: Repository) -> Path:
    return repo.lock_path(WAL_LOCK)


def _open(path: Path) -> IO[str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "a+")  # noqa: SIM115


@contextmanager
def shared_lock(path: Path, what: str, wait: float = 30.0) -> Iterator[None]:
    """LOCK_SH, waiting at most `wait` seconds for an expire that holds it to finish."""
    fh = _open(path)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockBusy(f"{what} is being removed by `pgdr expire` (lock {path}); "
                                   f"waited {wait:.0f}s") from None
                time.sleep(0.2)
        yield
    finally:
        fh.close()


@contextmanager
def reading(repo: Repository, backup_id: str) -> Iterator[None]:
    """What a restore or verify holds for as long as it reads the backup and the archive."""
    with ExitStack() as stack:
        stack.enter_context(shared_lock(backup_lock(repo, backup_id), f"backup {backup_id}"))
        stack.enter_context(shared_lock(wal_lock(repo), "the WAL archive"))
        yield


class Exclusive:
    """A non-blocking exclusive lock that reports whether it was obtained."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fh: IO[str] | None = None

    def acquire(self) -> bool:
        fh = _open(self.path)
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            return False
        self.fh = fh
        return True

    def release(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None
