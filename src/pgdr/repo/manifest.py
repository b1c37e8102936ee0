"""A backup's own manifest (pgdr.json) and reading the catalog from the repository.

The repository is the truth: `list`, `expire` and `status` read these files; there
is no separate index to drift out of date.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ValidationError

from pgdr.errors import RepositoryError
from pgdr.repo.layout import PARTIAL_SUFFIX, Repository

MANIFEST_NAME = "pgdr.json"
FORMAT_VERSION = 1


class FileEntry(BaseModel):
    size: int
    sha256: str


class Relation(BaseModel):
    database: str
    schema_name: str
    name: str
    kind: str

    @property
    def qualified(self) -> str:
        return f"{self.schema_name}.{self.name}"


class LogicalDatabase(BaseModel):
    directory: str
    bytes: int
    snapshot_lsn: str
    tables: dict[str, int]


class BackupManifest(BaseModel):
    format: int = FORMAT_VERSION
    id: str
    kind: Literal["physical", "logical"]
    cluster: str
    source_node: str
    start_time: datetime
    stop_time: datetime
    duration_s: float
    start_lsn: str
    stop_lsn: str
    timeline: int
    start_wal: str | None = None
    stop_wal: str | None = None
    pg_version: str
    pg_version_num: int
    system_identifier: str
    wal_segment_size: int
    data_checksums: bool
    compression: str
    bytes_on_disk: int
    bytes_logical: int
    files: dict[str, FileEntry]
    relations: dict[str, Relation] = {}
    databases: dict[str, LogicalDatabase] = {}

    @property
    def age_seconds(self) -> float:
        return (datetime.now(UTC) - self.stop_time).total_seconds()


def new_backup_id(kind: str, now: datetime | None = None) -> str:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S")
    return f"{stamp}{'F' if kind == 'physical' else 'L'}"


def read_manifest(backup_dir: Path) -> BackupManifest:
    try:
        return BackupManifest.model_validate(json.loads((backup_dir / MANIFEST_NAME).read_text()))
    except FileNotFoundError:
        raise RepositoryError(f"backup {backup_dir.name} has no {MANIFEST_NAME}") from None
    except (ValueError, ValidationError) as exc:
        raise RepositoryError(f"backup {backup_dir.name}: unreadable {MANIFEST_NAME}: {exc}") from None


def list_backups(repo: Repository, kind: str | None = None) -> list[BackupManifest]:
    """Complete backups, oldest first. Partial folders and unreadable manifests are skipped."""
    if not repo.backups_dir.is_dir():
        return []
    found = []
    for entry in sorted(repo.backups_dir.iterdir()):
        if not entry.is_dir() or entry.name.endswith(PARTIAL_SUFFIX):
            continue
        try:
            manifest = read_manifest(entry)
        except RepositoryError:
            continue
        if kind is None or manifest.kind == kind:
            found.append(manifest)
    return sorted(found, key=lambda m: m.stop_time)


def find_backup(repo: Repository, backup_id: str) -> BackupManifest:
    backups = list_backups(repo)
    if backup_id == "latest":
        if not backups:
            raise RepositoryError(f"no complete backup in {repo.root}", hint="run `pgdr backup`")
        return backups[-1]
    for manifest in backups:
        if manifest.id == backup_id:
            return manifest
    raise RepositoryError(f"no complete backup {backup_id!r} in {repo.root}",
                          hint="`pgdr list` shows the backups")


def backup_dir(repo: Repository, backup_id: str) -> Path:
    return repo.backups_dir / backup_id


def remove_stale_partials(repo: Repository) -> list[str]:
    """Delete folders of killed backups. Call only while holding the backup lock: then
    no other backup can be writing, so every partial folder is debris."""
    removed = []
    if repo.backups_dir.is_dir():
        for entry in repo.backups_dir.iterdir():
            if entry.name.endswith(PARTIAL_SUFFIX):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry.name)
    return removed
