"""The one place Redis snapshots are written to and read from the repository.

SnapshotStore sits on the repository's own object store (repo/store.py): the configured
S3 bucket or encrypted folder (`Repository.store`), else a LocalStore over the repository
folder, so a Redis snapshot goes where the PostgreSQL backups go and is encrypted when
they are. Every object appears only when complete (renamed temp file, completed multipart
upload).

A snapshot is redis/<name>/<id>/dump.rdb.zst plus redis/<name>/<id>/snapshot.json, the
metadata, written LAST: a snapshot without its metadata is not published (listing
ignores it; the next backup of that Redis removes it, with the temp files a killed
writer left in a local folder). Every object is read back with its sha256 checked
against the metadata (and, when encrypted, each chunk authenticated).

  redis/<name>/<id>/dump.rdb.zst   the RDB, zstd-compressed
  redis/<name>/<id>/snapshot.json  metadata (sizes, sha256, key counts per database…)
  redis/<name>/<id>/verify.json    the last verification's result
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from pgdr.errors import PgdrError, RepositoryError
from pgdr.fsutil import fsync_path
from pgdr.repo import digest
from pgdr.repo.layout import Repository
from pgdr.repo.store import LocalStore, ObjectMissing, Store

DATA = "dump.rdb.zst"
META = "snapshot.json"
VERIFY = "verify.json"
_CHUNK = 1 << 20


class SnapshotDamaged(PgdrError):
    """A stored object does not match the sha256 its metadata recorded (or is missing, or
    fails authentication in an encrypted repository)."""


def repository_store(repo: Repository) -> Store:
    """The repository's object store: the configured one, else its local folder."""
    return repo.store if repo.store is not None else LocalStore(repo.root, repo.run_as)


def _local_root(objects: Store) -> Path | None:
    """The folder behind a local store (encrypted or not): killed writers leave temp files
    there that the listing does not show (S3 aborts its uploads, or lifecycle rules do)."""
    from pgdr.repo.crypto import EncryptedStore

    inner = objects.inner if isinstance(objects, EncryptedStore) else objects
    return inner.root if isinstance(inner, LocalStore) else None


# What snapshot.json records for a snapshot's bytes (its keys say so: "rdb_sha256",
# "stored.sha256"). Redis snapshots are not on any path where the hash's speed shows, so
# they keep the digest they were first written with; repo/digest.py makes the hasher.
DIGEST = "sha256"


class _HashingReader:
    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.sha = digest.hasher(DIGEST)
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
    """One Redis's snapshots: put / open / list / delete, as objects 'redis/<name>/<id>/<file>'
    of the repository's store."""

    def __init__(self, repo: Repository, name: str) -> None:
        self.objects: Store = repository_store(repo)
        self.prefix = f"redis/{name}/"

    def put(self, key: str, reader: Any) -> Stored:
        """Store an object whole from a stream (anything with read(n)); its size and sha256
        are those of the bytes handed to the store (before any encryption)."""
        hashing = _HashingReader(reader)
        self.objects.put_stream(self.prefix + key, cast(IO[bytes], hashing))
        return Stored(hashing.size, hashing.sha.hexdigest())

    def open(self, key: str, sha256: str) -> Iterator[bytes]:
        """The object's bytes; SnapshotDamaged at the end when they do not hash to sha256,
        or as soon as an encrypted chunk fails authentication (the caller discards what it
        wrote from them)."""
        from pgdr.repo.crypto import ObjectDamaged

        running = digest.hasher(DIGEST)
        try:
            with self.objects.open_read(self.prefix + key) as fh:
                while chunk := fh.read(_CHUNK):
                    running.update(chunk)
                    yield chunk
        except ObjectMissing:
            raise SnapshotDamaged(f"{key} is missing from the repository") from None
        except ObjectDamaged as exc:
            raise SnapshotDamaged(exc.message, hint=exc.hint) from None
        if running.hexdigest() != sha256:
            raise SnapshotDamaged(f"{key}: sha256 {running.hexdigest()[:16]}… does not match the recorded "
                                  f"{sha256[:16]}… (altered or damaged in the repository)")

    def put_json(self, key: str, data: dict[str, Any]) -> None:
        self.objects.put_bytes(self.prefix + key, (json.dumps(data, indent=2, default=str) + "\n").encode())

    def get_json(self, key: str) -> dict[str, Any] | None:
        try:
            raw = self.objects.get_bytes(self.prefix + key)
        except ObjectMissing:
            return None
        try:
            data = json.loads(raw)
        except ValueError as exc:
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

    def remove_unpublished(self) -> builtins.list[str]:
        """Remove what killed or failed backups left (call it holding this Redis's backup
        lock: nobody else is writing a snapshot then)."""
        removed = self.unpublished()
        for snapshot_id in removed:
            self.delete(snapshot_id)
        root = _local_root(self.objects)
        base = root / self.prefix if root is not None else None
        if base is not None and base.is_dir():
            for folder in base.iterdir():
                if folder.is_dir() and not (folder / META).exists():
                    for temp in folder.glob(".*.tmp*"):  # a writer killed mid-put
                        temp.unlink(missing_ok=True)
                    self._remove_if_empty(folder)
        return removed

    def delete(self, snapshot_id: str) -> None:
        """Metadata first, so a half-deleted snapshot is never listed as complete."""
        names = self._ids().get(snapshot_id, [])
        base = f"{self.prefix}{snapshot_id}/"
        if META in names:
            self.objects.delete([base + META])
        self.objects.delete([base + n for n in names if n != META])
        root = _local_root(self.objects)
        if root is not None:
            self._remove_if_empty(root / base)

    @staticmethod
    def _remove_if_empty(folder: Path) -> None:
        try:
            folder.rmdir()
            fsync_path(folder.parent)
        except OSError:
            pass  # not empty (or already gone)
