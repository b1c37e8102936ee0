"""A stored snapshot back to a plain RDB file, every byte checked on the way: the stored
object's sha256 (rdb/store.py), then the decompressed file's sha256."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pgdr.errors import UsageError
from pgdr.rdb.store import DIGEST, META, SnapshotDamaged, SnapshotStore
from pgdr.repo import digest


def find_snapshot(store: SnapshotStore, name: str, which: str | None) -> dict[str, Any]:
    """The metadata of snapshot `which` (an id, 'latest' or None for the newest)."""
    ids = store.list()
    if not ids:
        raise UsageError(f"no snapshot of redis {name} in the repository",
                         hint=f"take one: `pgdr backup --redis {name}`")
    snapshot_id = ids[-1] if which in (None, "latest") else which
    if snapshot_id not in ids:
        raise UsageError(f"no snapshot {snapshot_id!r} of redis {name} (newest: {ids[-1]})")
    meta = store.get_json(f"{snapshot_id}/{META}")
    if meta is None:
        raise SnapshotDamaged(f"snapshot {snapshot_id} of redis {name} lost its metadata")
    return meta


def materialize(store: SnapshotStore, meta: dict[str, Any], dest: Path) -> None:
    """Write the snapshot's RDB to dest; SnapshotDamaged (and no dest) when any check fails."""
    import zstandard

    stored = meta["stored"]
    raw_sha = digest.hasher(DIGEST)
    chunks = store.open(stored["key"], stored["sha256"])
    try:
        decompressor = zstandard.ZstdDecompressor().decompressobj()
        with open(dest, "wb") as out:
            for chunk in chunks:
                data = decompressor.decompress(chunk)
                raw_sha.update(data)
                out.write(data)
        if raw_sha.hexdigest() != meta["rdb_sha256"]:
            raise SnapshotDamaged(f"{stored['key']}: the decompressed RDB does not match its recorded sha256")
    except zstandard.ZstdError as exc:
        dest.unlink(missing_ok=True)
        for _ in chunks:  # read to the end: the stored object's own sha256 says more than zstd
            pass
        raise SnapshotDamaged(f"{stored['key']}: cannot decompress: {exc}") from None
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
