"""Publishing a backup: the one place that makes a backup visible, and only when complete.

`pending_backup` takes the repository's backup lock, clears debris of killed backups,
reserves `<id>.partial`, and on any failure removes it. `publish` writes pgdr.json
durably and renames the folder to `<id>`: the rename is the moment the backup exists.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pgdr.errors import BackupFailed, PgdrError
from pgdr.fsutil import durable_rename, exclusive_lock, write_json_durable
from pgdr.repo.layout import PARTIAL_SUFFIX, Repository, new_backup_id, remove_stale_partials

if TYPE_CHECKING:  # pydantic's: `pgdr backup` reserves the folder and starts its copy before importing it
    from pgdr.repo.manifest import BackupManifest
    from pgdr.repo.streamup import StreamingUpload


@dataclass
class PendingBackup:
    id: str
    started: datetime
    partial: Path
    final: Path
    removed_partials: list[str]
    t0: float
    repo: Repository | None = None
    stream: StreamingUpload | None = None  # tars going up while pg_basebackup writes them

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def publish(self, manifest: BackupManifest) -> None:
        if self.repo is not None and self.repo.store is not None:
            from pgdr.repo.remote import publish_to_store, purge_backup

            # pgdr.json uploaded last: from then on the backup exists
            publish_to_store(self.repo, self.partial, self.id, manifest, self.stream)
            durable_rename(self.partial, self.final)
            purge_backup(self.repo, self.id)  # the cache keeps pgdr.json and backup_manifest
            return
        from pgdr.repo.manifest import MANIFEST_NAME

        # Sealed: pgdr.json carries the sha256 of its own content, so an edit is caught.
        # (write_json_durable fsyncs the folder after its own rename; pg_basebackup synced
        # the files it wrote and the folder)
        write_json_durable(self.partial / MANIFEST_NAME, manifest.seal().model_dump(mode="json"))
        durable_rename(self.partial, self.final)


@contextmanager
def pending_backup(repo: Repository, kind: str) -> Iterator[PendingBackup]:
    with exclusive_lock(repo.lock_path("backup"), "backup"):
        removed = remove_stale_partials(repo)
        if repo.store is not None:
            from pgdr.repo.remote import remove_incomplete

            removed += [f"{bid} (in {repo.store.url})" for bid in remove_incomplete(repo.store)]
        started = datetime.now(UTC)
        final = repo.backups_dir / new_backup_id(kind, started)
        while final.exists():  # two backups within one second
            time.sleep(1)
            started = datetime.now(UTC)
            final = repo.backups_dir / new_backup_id(kind, started)
        partial = final.with_name(final.name + PARTIAL_SUFFIX)
        partial.mkdir()
        repo.run_as.chown(partial)
        pending = PendingBackup(final.name, started, partial, final, removed, time.monotonic(), repo)
        if repo.store is not None:
            from pgdr.repo.streamup import StreamingUpload

            pending.stream = StreamingUpload(repo.store, partial, pending.id).start()
        try:
            yield pending
        except PgdrError as exc:
            if pending.stream is not None:
                pending.stream.abort()
            shutil.rmtree(partial, ignore_errors=True)
            if exc.exit_code == 2:  # a refusal of the request (config, usage): said as it is, exit 2
                raise
            raise BackupFailed(f"backup {pending.id} failed: {exc.message}", hint=exc.hint) from None
        except BaseException:
            if pending.stream is not None:
                pending.stream.abort()
            shutil.rmtree(partial, ignore_errors=True)
            raise
