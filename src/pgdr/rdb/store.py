"""The one place Redis snapshots are written to and read from the repository.

SnapshotStore sits on an object store with the shape of the repository's coming
store interface (put_stream / open_read / put_bytes / get_bytes / exists / listing /
delete: an object appears only when complete), so pointing Redis at the S3 or the
encrypted repository is one constructor argument. Until then LocalObjects is that
interface over the repository folder (temp name, fsync, rename).

A snapshot is redis/<name>/<id>/dump.rdb.zst plus redis/<name>/<id>/snapshot.json, the
metadata, written LAST: a snapshot without its metadata is not published (listing
ignores it; the next backup of that Redis removes it). Every object is read back with
its sha256 checked against the metadata.

  repo/redis/<name>/<id>/dump.rdb.zst   the RDB, zstd-compressed
  repo/redis/<name>/<id>/snapshot.json  metadata (sizes, sha256, key counts per database…)
  repo/redis/<name>/<id>/verify.json    the last verification's result
"""

from __future__ import annotations

import builtins
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from pgdr.errors import PgdrError, RepositoryError
from pgdr.fsutil import durable_rename, fsync_path

DATA = "dump.rdb.zst"
META = "snapshot.json"
VERIFY = "verify.json"
_CHUNK = 1 << 20


class SnapshotDamaged(PgdrError):
    """A stored object does not match the sha256 its metadata recorded."""


class _Listed(Protocol):
    @property
    def key(self) -> str: ...


class Objects(Protocol):
    """What SnapshotStore needs from a store (the repository's store interface)."""

    def put_stream(self, key: str, reader: IO[bytes]) -> int: ...
    def put_bytes(self, key: str, data: bytes) -> None: ...
    def open_read(self, key: str) -> IO[bytes]: ...
    def get_bytes(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def listing(self, prefix: str) -> builtins.list[Any]: ...
    def delete(self, keys: builtins.list[str]) -> None: ...


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


class LocalObjects:
    """Objects as files under a folder: put whole (temp name, fsync, rename, fsync dir)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise RepositoryError(f"invalid object key {key!r}")
        return self.root / key

    def put_stream(self, key: str, reader: IO[bytes]) -> int:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp.{os.getpid()}")
        total = 0
        try:
            with open(tmp, "wb") as fh:
                while chunk := reader.read(_CHUNK):
                    fh.write(chunk)
                    total += len(chunk)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o640)
            durable_rename(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return total

    def put_bytes(self, key: str, data: bytes) -> None:
        import io

        self.put_stream(key, io.BytesIO(data))

    def open_read(self, key: str) -> IO[bytes]:
        try:
            return open(self._path(key), "rb")
        except FileNotFoundError:
            raise SnapshotDamaged(f"{key} is missing from the repository") from None

    def get_bytes(self, key: str) -> bytes:
        with self.open_read(key) as fh:
            return fh.read()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def listing(self, prefix: str) -> builtins.list[ObjectInfo]:
        """Every object under prefix, temp files of killed writers included (so they can
        be cleaned up)."""
        base = self._path(prefix.rstrip("/"))
        out = []
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                path = Path(dirpath) / name
                out.append(ObjectInfo(path.relative_to(self.root).as_posix(), path.stat().st_size))
        return sorted(out, key=lambda o: o.key)

    def delete(self, keys: builtins.list[str]) -> None:
        parents = set()
        for key in keys:
            path = self._path(key)
            path.unlink(missing_ok=True)
            parents.add(path.parent)
        for parent in sorted(parents, key=lambda p: len(p.parts), reverse=True):
            try:
                parent.rmdir()  # only when empty
                fsync_path(parent.parent)
            except OSError:
                pass


class _HashingReader:
    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.sha = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data: bytes = self.inner.read(n) if n is not None and n >= 0 else self.inner.read()
        self.sha.update(data)
        self.size += len(data)
        return data


@dataclass(frozen=True)
class Stored:
    size: int
    sha256: str


class SnapshotStore:
    """One Redis's snapshots: put / open / list / delete, as objects 'redis/<name>/<id>/<file>'."""

    def __init__(self, repo_root: Path, name: str, objects: Objects | None = None) -> None:
        self.objects: Objects = objects if objects is not None else LocalObjects(repo_root)
        self.prefix = f"redis/{name}/"

    def put(self, key: str, reader: Any) -> Stored:
        """Store an object whole from a stream (anything with read(n)); its size and sha256
        are those of the bytes handed to the store."""
        hashing = _HashingReader(reader)
        self.objects.put_stream(self.prefix + key, hashing)  # type: ignore[arg-type]
        return Stored(hashing.size, hashing.sha.hexdigest())

    def open(self, key: str, sha256: str) -> Iterator[bytes]:
        """The object's bytes; SnapshotDamaged at the end when they do not hash to sha256
        (the caller discards what it wrote from them)."""
        digest = hashlib.sha256()
        with self.objects.open_read(self.prefix + key) as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
                yield chunk
        if digest.hexdigest() != sha256:
            raise SnapshotDamaged(f"{key}: sha256 {digest.hexdigest()[:16]}… does not match the recorded "
                                  f"{sha256[:16]}… (altered or damaged in the repository)")

    def put_json(self, key: str, data: dict[str, Any]) -> None:
        self.objects.put_bytes(self.prefix + key, (json.dumps(data, indent=2, default=str) + "\n").encode())

    def get_json(self, key: str) -> dict[str, Any] | None:
        if not self.objects.exists(self.prefix + key):
            return None
        try:
            data = json.loads(self.objects.get_bytes(self.prefix + key))
        except (OSError, ValueError) as exc:
            raise RepositoryError(f"unreadable {self.prefix}{key}: {exc}") from None
        return data if isinstance(data, dict) else None

    def _ids(self) -> dict[str, builtins.list[str]]:
        out: dict[str, builtins.list[str]] = {}
        for obj in self.objects.listing(self.prefix):
            rest = obj.key[len(self.prefix):]
            if "/" in rest:
                snapshot_id, name = rest.split("/", 1)
                out.setdefault(snapshot_id, []).append(name)
        return out

    def list(self) -> builtins.list[str]:
        """Published snapshot ids (those with metadata), oldest first."""
        return sorted(i for i, names in self._ids().items() if META in names)

    def unpublished(self) -> builtins.list[str]:
        """Ids with objects but no metadata: a backup killed or failed before publishing."""
        return sorted(i for i, names in self._ids().items() if META not in names)

    def delete(self, snapshot_id: str) -> None:
        """Metadata first, so a half-deleted snapshot is never listed as complete."""
        names = self._ids().get(snapshot_id, [])
        base = f"{self.prefix}{snapshot_id}/"
        if META in names:
            self.objects.delete([base + META])
        self.objects.delete([base + n for n in names if n != META])
