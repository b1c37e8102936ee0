"""A backup's own manifest (pgdr.json) and reading the catalog from the repository.

The repository is the truth: `list`, `expire` and `status` read these files; there
is no separate index to drift out of date.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, SerializerFunctionWrapHandler, ValidationError, model_serializer, model_validator

from pgdr.errors import RepositoryError
from pgdr.repo import digest
from pgdr.repo.layout import PARTIAL_SUFFIX, Repository

# without pydantic (pending_backup runs before pgdr backup imports it); importable from here
from pgdr.repo.layout import new_backup_id as new_backup_id
from pgdr.repo.layout import remove_stale_partials as remove_stale_partials

MANIFEST_NAME = "pgdr.json"
# 1: file digests are sha256. 2: BLAKE3 (repo/digest.py); format 1 is still read.
FORMAT_VERSION = 2


class FileEntry(BaseModel):
    """A backup file's size and digest: `blake3` in what pgdr writes now, `sha256` in
    backups written before (format 1). Exactly one is recorded."""

    size: int
    blake3: str | None = None
    sha256: str | None = None

    @model_validator(mode="after")
    def _one_digest(self) -> FileEntry:
        if (self.blake3 is None) == (self.sha256 is None):
            raise ValueError("a file entry records exactly one digest (blake3 or sha256)")
        return self

    @model_serializer(mode="wrap")
    def _recorded_only(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Only the digest it records: a format-1 entry dumps as it was written, so the
        seal (content_digest) of a backup written before BLAKE3 still matches."""
        return {k: v for k, v in handler(self).items() if v is not None or k == "size"}

    @classmethod
    def of(cls, size: int, hexdigest: str, algorithm: str = digest.WRITTEN) -> FileEntry:
        return cls.model_validate({"size": size, algorithm: hexdigest})

    @property
    def algorithm(self) -> str:
        return "blake3" if self.blake3 is not None else "sha256"

    @property
    def digest(self) -> str:
        value = self.blake3 if self.blake3 is not None else self.sha256
        assert value is not None
        return value


class Tablespace(BaseModel):
    """A user tablespace of the source: pg_basebackup -Ft wrote it as <oid>.tar[.zst]."""

    name: str
    location: str           # on the source host: a restore must never write there
    file: str


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
    tablespaces: dict[str, Tablespace] = {}
    # A native incremental backup (pg_basebackup --incremental, PostgreSQL 17+): the backup
    # whose backup_manifest it was taken against, and the whole chain it needs, oldest (a
    # full backup) first, ending with that parent. Empty for a full backup.
    parent: str | None = None
    chain: list[str] = []
    # sha256 of the canonical JSON of everything above (see seal()); None only in
    # manifests written before it existed.
    manifest_sha256: str | None = None

    def content_digest(self) -> str:
        body = self.model_dump(mode="json", exclude={"manifest_sha256"})
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def seal(self) -> BackupManifest:
        """The manifest with its own checksum: an edit of any field is then detectable."""
        return self.model_copy(update={"manifest_sha256": self.content_digest()})

    def algorithm_of(self, name: str) -> str:
        """The digest pgdr.json records for a file; a file it does not list is hashed with
        the one pgdr writes (and then reported as not listed)."""
        entry = self.files.get(name)
        return entry.algorithm if entry is not None else digest.WRITTEN

    @property
    def incremental(self) -> bool:
        return self.parent is not None

    @property
    def display_kind(self) -> str:
        """What `list` shows: physical, incremental or logical (kind stays "physical" for an
        incremental backup, so everything that restores physical backups takes it)."""
        return "incremental" if self.parent is not None else self.kind

    @property
    def age_seconds(self) -> float:
        return (datetime.now(UTC) - self.stop_time).total_seconds()


def chain_of(backups_dir: Path, manifest: BackupManifest) -> list[tuple[Path, BackupManifest]]:
    """The backups an incremental backup needs, oldest (the full one) first and itself last,
    each pgdr.json read and checked; a missing or mismatched link raises ManifestDamaged."""
    links = [*manifest.chain, manifest.id] if manifest.parent is not None else [manifest.id]
    if manifest.parent is not None and (not manifest.chain or manifest.chain[-1] != manifest.parent):
        raise ManifestDamaged(f"backup {manifest.id}: its chain {manifest.chain} does not end with its "
                              f"parent {manifest.parent}")
    found: list[tuple[Path, BackupManifest]] = []
    for link in links[:-1]:
        folder = backups_dir / link
        if not folder.is_dir():
            raise ManifestDamaged(f"backup {manifest.id} is incremental and needs {link}, which is "
                                  "not in the repository", hint="restore or verify an older full backup")
        found.append((folder, read_manifest(folder)))
    found.append((backups_dir / manifest.id, manifest))
    for (_f, older), (_g, newer) in zip(found, found[1:], strict=False):
        if newer.parent != older.id or older.system_identifier != newer.system_identifier:
            raise ManifestDamaged(f"backup {newer.id}: its parent should be {older.id}, "
                                  f"pgdr.json says {newer.parent}")
    if found[0][1].parent is not None:
        raise ManifestDamaged(f"backup {manifest.id}: the chain's first backup {found[0][1].id} is not a full backup")
    return found


class ManifestDamaged(RepositoryError):
    """pgdr.json is missing, unparsable, or its content no longer matches its own checksum."""


def _short(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__


def read_manifest(backup_dir: Path) -> BackupManifest:
    """The backup's pgdr.json, refused (ManifestDamaged, exit 1) when it does not parse or
    when its recorded checksum does not match its content."""
    try:
        raw: Any = json.loads((backup_dir / MANIFEST_NAME).read_text())
        written = raw.get("format", 1) if isinstance(raw, dict) else 1
        if isinstance(written, int) and written > FORMAT_VERSION:
            raise ManifestDamaged(f"backup {backup_dir.name}: {MANIFEST_NAME} is format {written}, written by a "
                                  f"newer pgdr (this one reads up to {FORMAT_VERSION})",
                                  hint="use the pgdr that wrote it, or a newer one")
        manifest = BackupManifest.model_validate(raw)
    except FileNotFoundError:
        raise ManifestDamaged(f"backup {backup_dir.name} has no {MANIFEST_NAME}") from None
    except (OSError, ValueError, ValidationError) as exc:
        raise ManifestDamaged(f"backup {backup_dir.name}: unreadable {MANIFEST_NAME}: {_short(exc)}") from None
    if manifest.manifest_sha256 is not None and manifest.manifest_sha256 != manifest.content_digest():
        raise ManifestDamaged(f"backup {backup_dir.name}: {MANIFEST_NAME} was changed after the backup "
                              "(its content does not match its manifest_sha256)",
                              hint="restore it from a copy, or take a new backup")
    return manifest


@dataclass(frozen=True)
class DamagedBackup:
    """A backup folder whose pgdr.json cannot be trusted: listed, never silently skipped."""

    id: str
    path: Path
    problem: str

    def as_dict(self) -> dict[str, str]:
        return {"id": self.id, "path": str(self.path), "problem": self.problem}


def scan_backups(repo: Repository) -> tuple[list[BackupManifest], list[DamagedBackup]]:
    """Every complete backup folder: readable ones (oldest first) and damaged ones."""
    found: list[BackupManifest] = []
    damaged: list[DamagedBackup] = []
    if repo.store is not None:  # the bucket's listing is the truth: bring the cache up to it
        from pgdr.repo.remote import sync_catalog_once

        sync_catalog_once(repo)
    if not repo.backups_dir.is_dir():
        return found, damaged
    for entry in sorted(repo.backups_dir.iterdir()):
        if not entry.is_dir() or entry.name.endswith(PARTIAL_SUFFIX):
            continue
        try:
            found.append(read_manifest(entry))
        except RepositoryError as exc:
            damaged.append(DamagedBackup(entry.name, entry, exc.message))
    return sorted(found, key=lambda m: m.stop_time), damaged


def list_backups(repo: Repository, kind: str | None = None) -> list[BackupManifest]:
    """Readable complete backups, oldest first. Damaged ones: see damaged_backups()."""
    found, _damaged = scan_backups(repo)
    return [m for m in found if kind is None or m.kind == kind]


def damaged_backups(repo: Repository) -> list[DamagedBackup]:
    return scan_backups(repo)[1]


def find_backup(repo: Repository, backup_id: str) -> BackupManifest:
    backups = list_backups(repo)
    if backup_id == "latest":
        if not backups:
            raise RepositoryError(f"no complete backup in {repo.root}", hint="run `pgdr backup`")
        return backups[-1]
    for manifest in backups:
        if manifest.id == backup_id:
            return manifest
    folder = repo.backups_dir / backup_id
    if folder.is_dir() and not backup_id.endswith(PARTIAL_SUFFIX):
        read_manifest(folder)  # raises ManifestDamaged with the reason
    raise RepositoryError(f"no complete backup {backup_id!r} in {repo.root}",
                          hint="`pgdr list` shows the backups")


def backup_dir(repo: Repository, backup_id: str) -> Path:
    """The backup's folder; from an object store, its files are fetched (and checked) first."""
    if repo.store is not None:
        from pgdr.repo.remote import fetch_backup

        return fetch_backup(repo, backup_id)
    return repo.backups_dir / backup_id
