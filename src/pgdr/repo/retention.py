"""`pgdr expire`: retention by count and by age, never at the cost of recoverability.

A backup is kept when it is among the newest `keep_last` of its kind OR younger than
`keep_within`; the newest complete physical backup and the newest VERIFIED backup of
each kind are always kept. WAL is removed only below the oldest kept physical backup's
start segment, so every kept backup can still be recovered to any later point; while
a backup's pgdr.json is unreadable no WAL is removed at all (its needs are unknown).
History files are always kept.

Restore and verify hold shared locks (repo/locks.py) on the backup and the archive
they read; expire takes each exclusively without waiting, and skips what is held.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field

from pgdr.config import RetentionConfig
from pgdr.fsutil import exclusive_lock, fsync_path
from pgdr.pg.lsn import parse_lsn, parse_segment_name
from pgdr.repo.layout import Repository
from pgdr.repo.locks import Exclusive, backup_lock, wal_lock
from pgdr.repo.manifest import BackupManifest, DamagedBackup, scan_backups
from pgdr.repo.records import verification_status
from pgdr.repo.wal import WalArchive


@dataclass
class ExpirePlan:
    keep: list[BackupManifest] = field(default_factory=list)
    remove: list[BackupManifest] = field(default_factory=list)
    wal_remove: list[str] = field(default_factory=list)
    wal_keep_from: str | None = None
    bytes_freed: int = 0
    notes: list[str] = field(default_factory=list)        # what was not done, and why
    damaged: list[DamagedBackup] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)      # held by a restore/verify when applied

    def as_dict(self) -> dict[str, object]:
        return {"keep": [b.id for b in self.keep], "remove": [b.id for b in self.remove],
                "wal_remove_count": len(self.wal_remove), "wal_keep_from": self.wal_keep_from,
                "bytes_freed": self.bytes_freed, "notes": self.notes,
                "damaged": [d.as_dict() for d in self.damaged], "skipped": self.skipped}


def plan_expire(repo: Repository, policy: RetentionConfig) -> ExpirePlan:
    plan = ExpirePlan()
    backups, plan.damaged = scan_backups(repo)
    for kind in ("physical", "logical"):
        group = [b for b in backups if b.kind == kind]
        newest_first = list(reversed(group))
        verified = next((b.id for b in newest_first if verification_status(repo, b.id) == "verified"), None)
        for rank, backup in enumerate(newest_first):
            if rank < policy.keep_last or backup.age_seconds < policy.keep_within:
                plan.keep.append(backup)
            elif backup.id == verified:
                plan.keep.append(backup)
                plan.notes.append(f"kept {backup.id}: the newest verified {kind} backup")
            else:
                plan.remove.append(backup)
    kept_physical = [b for b in plan.keep if b.kind == "physical"]
    archive = WalArchive(repo)
    if plan.damaged:
        plan.notes.append("no WAL removed: backup(s) " + ", ".join(d.id for d in plan.damaged)
                          + " have an unreadable pgdr.json, so the WAL they need is unknown")
    elif kept_physical:
        oldest = min(kept_physical, key=lambda b: b.stop_time)
        seg_size = repo.wal_segment_size
        boundary = parse_lsn(oldest.start_lsn) // seg_size
        plan.wal_keep_from = oldest.start_wal
        for f in archive.files():
            seg = parse_segment_name(f.name, seg_size)
            if seg is not None and seg.segno < boundary:
                plan.wal_remove.append(f.name)
                plan.bytes_freed += f.size
    for backup in plan.remove:
        plan.bytes_freed += backup.bytes_on_disk
    return plan


def apply_expire(repo: Repository, plan: ExpirePlan) -> ExpirePlan:
    """Remove what the plan says, except what a running restore or verify holds (skipped
    and noted in the returned plan)."""
    with exclusive_lock(repo.lock_path("backup"), "backup or expire"):
        removed = []
        for backup in plan.remove:
            lock = Exclusive(backup_lock(repo, backup.id))
            if not lock.acquire():
                plan.skipped.append(backup.id)
                plan.notes.append(f"skipped {backup.id}: a restore or verify is reading it")
                continue
            try:
                if repo.store is not None:
                    from pgdr.repo.remote import delete_backup

                    delete_backup(repo.store, backup.id)
                target = repo.backups_dir / backup.id
                # Rename first so a crash mid-delete never leaves a half backup that lists as complete.
                doomed = target.with_name(target.name + ".partial")
                target.rename(doomed)
                fsync_path(repo.backups_dir)
                shutil.rmtree(doomed, ignore_errors=True)
                removed.append(backup)
            finally:
                lock.release()
        plan.remove = removed
        if plan.wal_remove:
            lock = Exclusive(wal_lock(repo))
            if not lock.acquire():
                plan.notes.append(f"kept {len(plan.wal_remove)} WAL segment(s): a restore or verify "
                                  "is reading the archive")
                plan.wal_remove = []
            else:
                try:
                    if repo.store is not None:
                        repo.store.delete([f"wal/{name}.zst" for name in plan.wal_remove])
                    for name in plan.wal_remove:
                        (repo.wal_dir / f"{name}.zst").unlink(missing_ok=True)
                    fsync_path(repo.wal_dir)
                finally:
                    lock.release()
    return plan
