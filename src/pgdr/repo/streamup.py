"""Upload a backup's tar files to the object store while pg_basebackup is still writing them.

pg_basebackup -Ft writes base.tar[.zst] and <oid>.tar[.zst] front to back (never seeking),
so each is followed like `tail -f`: whatever has been written goes into the multipart upload
(parts in parallel), and the bytes already read are released from the local disk with
fallocate(PUNCH_HOLE), so the local folder holds at most a few parts of each, never the
whole backup. pg_wal.tar (the tar WAL method seeks back to fix headers) and
backup_manifest are small and go up after pg_basebackup ends, with pgdr.json last.

The uploader computes each file's size and digest (repo/digest.py) from the bytes it
sent; pgdr.json records those (the local file is mostly holes by then). A file that
vanishes (pg_basebackup retried with another compression) has its upload aborted; any
failure of the store ends the backup.
"""

from __future__ import annotations

import ctypes
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, cast

from pgdr.errors import RepositoryError
from pgdr.repo import digest
from pgdr.repo.store import Store

STREAMED = re.compile(r"^(base|\d+)\.tar(\.(zst|gz|lz4))?$")
_PUNCH = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
_ALIGN = 1 << 16
POLL = 0.05


class _Aborted(RepositoryError):
    pass


def _punch(fd: int, length: int) -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.fallocate(fd, _PUNCH, ctypes.c_long(0), ctypes.c_long(length))) == 0


class TailReader:
    """read() over a file another process is appending to; EOF only once `finished` is set."""

    def __init__(self, path: Path, finished: threading.Event, aborted: threading.Event) -> None:
        self.path, self.finished, self.aborted = path, finished, aborted
        self.fd = os.open(path, os.O_RDWR)
        self.inode = os.fstat(self.fd).st_ino
        self.offset = 0
        self.punched = 0
        self.can_punch = True
        self.digest = digest.hasher()

    def read(self, size: int = -1) -> bytes:
        size = size if size > 0 else 1 << 20
        while True:
            if self.aborted.is_set():
                raise _Aborted(f"upload of {self.path.name} abandoned")
            done = self.finished.is_set()  # before the size: then no byte written later is missed
            available = os.fstat(self.fd).st_size - self.offset
            if available > 0:
                data = os.pread(self.fd, min(size, available), self.offset)
                self.offset += len(data)
                self.digest.update(data)
                self._release()
                return data
            if done:
                try:
                    same = os.stat(self.path).st_ino == self.inode
                except FileNotFoundError:
                    same = False
                if not same:
                    raise _Aborted(f"{self.path.name} was removed while uploading")
                return b""
            time.sleep(POLL)

    def _release(self) -> None:
        upto = self.offset - self.offset % _ALIGN
        if self.can_punch and upto > self.punched:
            self.can_punch = _punch(self.fd, upto)  # e.g. a filesystem without holes: keep the file
            self.punched = upto

    def close(self) -> None:
        os.close(self.fd)


@dataclass
class StreamingUpload:
    store: Store
    folder: Path
    backup_id: str
    finished: threading.Event = field(default_factory=threading.Event)
    aborted: threading.Event = field(default_factory=threading.Event)
    threads: dict[str, threading.Thread] = field(default_factory=dict)
    results: dict[str, tuple[int, str]] = field(default_factory=dict)
    errors: dict[str, BaseException] = field(default_factory=dict)
    watcher: threading.Thread | None = None

    def start(self) -> StreamingUpload:
        self.watcher = threading.Thread(target=self._watch, name="pgdr-stream-watch", daemon=True)
        self.watcher.start()
        return self

    def _watch(self) -> None:
        while True:
            done = self.finished.is_set() or self.aborted.is_set()
            self._pick_up()
            if done:
                return
            time.sleep(POLL)

    def _pick_up(self) -> None:
        try:
            names = os.listdir(self.folder)
        except FileNotFoundError:
            return
        for name in names:
            if STREAMED.match(name) and name not in self.threads and not self.aborted.is_set():
                thread = threading.Thread(target=self._upload, args=(name,), name=f"pgdr-stream-{name}",
                                          daemon=True)
                self.threads[name] = thread
                thread.start()

    def _upload(self, name: str) -> None:
        try:
            reader = TailReader(self.folder / name, self.finished, self.aborted)
        except FileNotFoundError:
            return
        try:
            self.store.put_stream(f"backups/{self.backup_id}/{name}", cast(IO[bytes], reader))
            self.results[name] = (reader.offset, reader.digest.hexdigest())
        except BaseException as exc:  # recorded; finish() raises it
            self.errors[name] = exc
        finally:
            reader.close()

    def finish(self) -> dict[str, tuple[int, str]]:
        """pg_basebackup has ended: upload the rest of each file and wait; (size, hex digest) by file."""
        self.finished.set()
        if self.watcher is not None:
            self.watcher.join()
        for thread in list(self.threads.values()):
            thread.join()
        real = {name: exc for name, exc in self.errors.items() if not isinstance(exc, _Aborted)
                or (self.folder / name).exists()}
        if real:
            name, exc = sorted(real.items())[0]
            if isinstance(exc, RepositoryError):
                raise exc
            raise RepositoryError(f"upload of {name} failed: {exc}")
        return self.results

    def abort(self) -> None:
        self.aborted.set()
        if self.watcher is not None:
            self.watcher.join()
        for thread in list(self.threads.values()):
            thread.join()
