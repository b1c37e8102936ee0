"""`pgdr expire`: retention by count and by age, never at the cost of recoverability.

A backup is kept when it is among the newest `keep_last` of its kind OR younger than
`keep_within`; the newest complete physical backup and the newest VERIFIED backup of
each kind are always kept. WAL is removed only below the oldest kept physical backup's
start segment, so every kept backup can still be recovered to any later point; while
a backup's pgdr.json is unreadable no WAL is removed at all (its needs are unknown).
History files are always kept. An incremental backup's chain (repo/manifest.py) is kept
whole: every backup a kept incremental backup needs is kept with it.

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
    _keep_chains_whole(plan)
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


def _keep_chains_whole(plan: ExpirePlan) -> None:
    """An incremental backup is only restorable with every backup of its chain: each one a
    kept backup needs is kept too. A damaged pgdr.json of an incremental backup (its id
    ends in I) hides its chain, so every physical backup older than it is kept."""
    by_id = {b.id: b for b in plan.keep + plan.remove}
    needed: dict[str, str] = {}
    for backup in plan.keep:
        for link in backup.chain:
            needed.setdefault(link, backup.id)
    for damaged in plan.damaged:
        if damaged.id.endswith("I"):
            for b in plan.remove:
                if b.kind == "physical" and b.id < damaged.id:
                    needed.setdefault(b.id, damaged.id)
    for backup in list(plan.remove):
        if backup.id in needed:
            plan.remove.remove(backup)
            plan.keep.append(backup)
            plan.notes.append(f"kept {backup.id}: incremental backup {needed[backup.id]} needs it")
    missing = sorted({link for b in plan.keep for link in b.chain if link not in by_id})
    if missing:
        plan.notes.append("incremental backup chain(s) already broken: " + ", ".join(missing)
                          + " missing from the repository")
    plan.keep.sort(key=lambda b: b.stop_time)


def apply_expire(repo: Repository, plan: ExpirePlan) -> ExpirePlan:
    """Remove what the plan says, except what a running restore or verify holds (skipped
    and noted in the returned plan)."""
    with exclusive_lock(repo.lock_path("backup"), "backup or expire"):
        removed = []
        # Newest first: a restore or verify of an incremental backup locks that backup
        # only, so when it is skipped, the backups of its chain are skipped with it.
        held_chains: dict[str, str] = {}
        for backup in sorted(plan.remove, key=lambda b: b.stop_time, reverse=True):
            if backup.id in held_chains:
                plan.skipped.append(backup.id)
                plan.notes.append(f"skipped {backup.id}: a restore or verify is reading "
                                  f"{held_chains[backup.id]}, which needs it")
                continue
            lock = Exclusive(backup_lock(repo, backup.id))
            if not lock.acquire():
                plan.skipped.append(backup.id)
                plan.notes.append(f"skipped {backup.id}: a restore or verify is reading it")
                for link in backup.chain:
                    held_chains.setdefault(link, backup.id)
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
