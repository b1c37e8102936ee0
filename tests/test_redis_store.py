"""rdb/store.py over any object store: publish-when-complete, sha256 on read, debris.

No server: an in-memory store with the repository store's interface stands in for S3,
showing the snapshot layer needs nothing else from it."""

from __future__ import annotations

import io
from pathlib import Path
from typing import IO, Any

import pytest

from pgdr.rdb.store import DATA, META, LocalObjects, ObjectInfo, SnapshotDamaged, SnapshotStore


class MemoryObjects:
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def put_stream(self, key: str, reader: IO[bytes]) -> int:
        body = b""
        while chunk := reader.read(1 << 16):
            body += chunk
        self.data[key] = body  # appears only when complete, like a finished multipart upload
        return len(body)

    def put_bytes(self, key: str, data: bytes) -> None:
        self.data[key] = data

    def open_read(self, key: str) -> IO[bytes]:
        return io.BytesIO(self.data[key])

    def get_bytes(self, key: str) -> bytes:
        return self.data[key]

    def exists(self, key: str) -> bool:
        return key in self.data

    def listing(self, prefix: str) -> list[Any]:
        return [ObjectInfo(k, len(v)) for k, v in sorted(self.data.items()) if k.startswith(prefix)]

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            self.data.pop(key, None)


@pytest.mark.parametrize("kind", ["memory", "local"])
def test_snapshot_store_publishes_last_and_checks_every_read(kind: str, tmp_path: Path) -> None:
    objects: Any = MemoryObjects() if kind == "memory" else LocalObjects(tmp_path)
    store = SnapshotStore(tmp_path, "cache", objects)
    stored = store.put(f"a/{DATA}", io.BytesIO(b"x" * 3_000_000))
    assert stored.size == 3_000_000
    assert store.list() == [] and store.unpublished() == ["a"]  # data without metadata: not published
    store.put_json(f"a/{META}", {"id": "a"})
    assert store.list() == ["a"] and store.unpublished() == []
    assert b"".join(store.open(f"a/{DATA}", stored.sha256)) == b"x" * 3_000_000
    # one changed byte in the store: the read fails at the end
    if kind == "memory":
        objects.data[f"redis/cache/a/{DATA}"] = b"x" * 2_999_999 + b"y"
    else:
        (tmp_path / "redis/cache/a" / DATA).write_bytes(b"x" * 2_999_999 + b"y")
    with pytest.raises(SnapshotDamaged):
        b"".join(store.open(f"a/{DATA}", stored.sha256))
    store.put(f"b/{DATA}", io.BytesIO(b"partial"))
    store.delete("b")
    store.delete("a")
    assert store.list() == [] and store.unpublished() == []
    assert objects.listing("redis/") == []
    if kind == "local":
        assert not (tmp_path / "redis/cache/a").exists()


def test_object_keys_cannot_leave_the_repository(tmp_path: Path) -> None:
    from pgdr.errors import RepositoryError

    with pytest.raises(RepositoryError):
        LocalObjects(tmp_path).put_bytes("../escape", b"x")
