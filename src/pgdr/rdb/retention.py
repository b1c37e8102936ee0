"""Which Redis snapshots to keep: the newest keep_last OR those younger than keep_within
(default hourly for 7 days), and always the newest one that passed verification."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from pgdr.config import RedisConfig
from pgdr.rdb.store import META, VERIFY, SnapshotStore


@dataclass(frozen=True)
class Snapshot:
    id: str
    age_s: float
    verified: bool | None  # None: never verified


def snapshots(store: SnapshotStore, now: datetime | None = None) -> list[Snapshot]:
    """Published snapshots, oldest first, with their age and verification result."""
    now = now or datetime.now(UTC)
    out = []
    for snapshot_id in store.list():
        meta = store.get_json(f"{snapshot_id}/{META}") or {}
        try:
            finished = datetime.fromisoformat(str(meta["finished_at"]))
        except (KeyError, ValueError):
            continue
        record = store.get_json(f"{snapshot_id}/{VERIFY}")
        out.append(Snapshot(snapshot_id, (now - finished).total_seconds(),
                            None if record is None else bool(record.get("passed"))))
    return out


def plan(found: list[Snapshot], rc: RedisConfig) -> tuple[list[Snapshot], list[Snapshot]]:
    """(keep, remove)."""
    newest_ids = {s.id for s in found[-rc.keep_last:]}
    newest_verified = next((s.id for s in reversed(found) if s.verified), None)
    keep, remove = [], []
    for s in found:
        if s.id in newest_ids or s.age_s <= rc.keep_within or s.id == newest_verified:
            keep.append(s)
        else:
            remove.append(s)
    return keep, remove


def prune(store: SnapshotStore, rc: RedisConfig) -> list[str]:
    _keep, remove = plan(snapshots(store), rc)
    for s in remove:
        store.delete(s.id)
    return [s.id for s in remove]
