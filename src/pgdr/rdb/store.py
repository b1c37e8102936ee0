"""The one place Redis snapshots are written to and read from the repository.

Shaped like an object store so it can later sit on the S3 / encrypted repository:
objects are put whole (temp name, fsync, rename: never visible half written) and read
back with their sha256 checked. A snapshot is <name>/<id>/dump.rdb.zst plus
<name>/<id>/snapshot.json, the metadata, written LAST: a snapshot without its metadata
is not published (listing ignores it; retention removes it).

  repo/redis/<name>/<id>/dump.rdb.zst   the RDB, zstd-compressed
  repo/redis/<name>/<id>/snapshot.json  metadata (sizes, sha256, key counts per database…)
  repo/redis/<name>/<id>/verify.json    the last verification's result
"""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgdr.errors import PgdrError, RepositoryError
from pgdr.fsutil import durable_rename, fsync_path, write_json_durable

DATA = "dump.rdb.zst"
META = "snapshot.json"
VERIFY = "verify.json"
_CHUNK = 1 << 20


class SnapshotDamaged(PgdrError):
    """A stored object does not match the sha256 its metadata recorded."""


@dataclass(frozen=True)
class Stored:
    size: int
    sha256: str


class SnapshotStore:
    """One Redis's snapshots: put / open / list / delete, as objects keyed '<id>/<file>'."""

    def __init__(self, repo_root: Path, name: str) -> None:
        self.root = repo_root / "redis" / name

    def _path(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):
            raise RepositoryError(f"bad object name {key!r}")
        return self.root / key

    def put(self, key: str, chunks: Iterable[bytes]) -> Stored:
        """Write an object whole: under a temp name, fsynced, then renamed into place."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
        digest = hashlib.sha256()
        size = 0
        try:
            with open(tmp, "wb") as fh:
                for chunk in chunks:
                    fh.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o640)
            durable_rename(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return Stored(size, digest.hexdigest())

    def open(self, key: str, sha256: str) -> Iterator[bytes]:
        """The object's bytes; SnapshotDamaged at the end when they do not hash to sha256
        (the caller discards what it wrote from them)."""
        path = self._path(key)
        digest = hashlib.sha256()
        try:
            fh = open(path, "rb")  # noqa: SIM115
        except FileNotFoundError:
            raise SnapshotDamaged(f"{key} is missing from the repository") from None
        with fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
                yield chunk
        if digest.hexdigest() != sha256:
            raise SnapshotDamaged(f"{key}: sha256 {digest.hexdigest()[:16]}… does not match the recorded "
                                  f"{sha256[:16]}… (altered or damaged in the repository)")

    def put_json(self, key: str, data: dict[str, Any]) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_durable(path, data)

    def get_json(self, key: str) -> dict[str, Any] | None:
        try:
            data = json.loads(self._path(key).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise RepositoryError(f"unreadable {key} in {self.root}: {exc}") from None
        return data if isinstance(data, dict) else None

    def list(self) -> list[str]:
        """Published snapshot ids (those with metadata), oldest first."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / META).is_file())

    def unpublished(self) -> builtins.list[str]:
        """Ids with data but no metadata: a backup killed or failed before publishing."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not (p / META).exists())

    def delete(self, snapshot_id: str) -> None:
        """Metadata first, so a half-deleted snapshot is never listed as complete."""
        folder = self._path(snapshot_id)
        (folder / META).unlink(missing_ok=True)
        if folder.parent.is_dir():
            fsync_path(folder.parent)
        shutil.rmtree(folder, ignore_errors=True)
