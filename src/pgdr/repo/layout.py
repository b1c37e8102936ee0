"""Where things live in a repository, and the repository's identity.

repo/
  pgdr-repo.json          which cluster this repository belongs to (system identifier)
  backups/<id>/           complete backups, each with pgdr.json (its manifest)
  backups/<id>.partial/   a backup in progress or killed: never listed, cleaned later
  wal/                    archived WAL: <segment>.zst and <tli>.history
  wal/incoming/           pg_receivewal's spool (the open .partial segment lives here)
  archiver/               the archiver's state and pid
  locks/                  flock files
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pgdr.errors import ConfigError, RepositoryError
from pgdr.fsutil import write_json_durable
from pgdr.pg.programs import RunAs

if TYPE_CHECKING:
    from pgdr.repo.store import Store

PARTIAL_SUFFIX = ".partial"
# An encrypted repository's marker (repo/crypto.py), a local object store's folder and an
# object store's working-folder marker (repo/remote.py): here so that `pgdr backup` can
# refuse a misconfigured repository before its copy without importing either module.
ENCRYPTION_FILE = "pgdr-encryption.json"
LOCAL_OBJECTS = "objects"
CACHE_MARKER = "pgdr-cache.json"


@dataclass(frozen=True)
class Repository:
    root: Path
    run_as: RunAs = RunAs()
    # An object store (S3, or an encrypted local folder) that is the repository; root is
    # then the local working folder and backups/ and wal/ a cache of it (repo/remote.py).
    store: Store | None = None

    @property
    def backups_dir(self) -> Path:
        return self.root / "backups"

    @property
    def wal_dir(self) -> Path:
        return self.root / "wal"

    @property
    def incoming_dir(self) -> Path:
        return self.wal_dir / "incoming"

    @property
    def archiver_dir(self) -> Path:
        return self.root / "archiver"

    @property
    def locks_dir(self) -> Path:
        return self.root / "locks"

    @property
    def identity_path(self) -> Path:
        return self.root / "pgdr-repo.json"

    def lock_path(self, name: str) -> Path:
        return self.locks_dir / f"{name}.lock"

    def ensure(self) -> None:
        """Create the folders; the server user owns them so its programs can write there."""
        for path in (self.root, self.backups_dir, self.wal_dir, self.incoming_dir,
                     self.archiver_dir, self.locks_dir):
            path.mkdir(parents=True, exist_ok=True)
            self.run_as.chown(path)
            os.chmod(path, 0o750)

    # ---- identity ----------------------------------------------------------------
    def identity(self) -> dict[str, Any] | None:
        try:
            return dict(json.loads(self.identity_path.read_text()))
        except FileNotFoundError:
            if self.store is None:
                return None
            from pgdr.repo.remote import fetch_identity

            return fetch_identity(self)  # the store's, so claim() compares with the bucket's owner
        except (OSError, ValueError) as exc:
            raise RepositoryError(f"unreadable {self.identity_path}: {exc}") from None

    def claim(self, system_identifier: str, pg_version_num: int, wal_segment_size: int) -> None:
        """Bind the repository to one cluster; refuse another cluster's backups or WAL."""
        self.ensure()
        current = self.identity()
        if current is None:
            write_json_durable(self.identity_path, {
                "system_identifier": system_identifier,
                "pg_version_num": pg_version_num,
                "wal_segment_size": wal_segment_size,
            })
            if self.store is not None:
                self.store.put_bytes(self.identity_path.name, self.identity_path.read_bytes())
            return
        if current.get("system_identifier") != system_identifier:
            raise RepositoryError(
                f"repository {self.root} belongs to cluster {current.get('system_identifier')}, "
                f"not to {system_identifier}",
                hint="use another repository path for this cluster")
        if int(current.get("pg_version_num", 0)) // 10000 != pg_version_num // 10000:
            raise RepositoryError(
                f"repository {self.root} holds PostgreSQL {int(current['pg_version_num']) // 10000} "
                f"data; the server is {pg_version_num // 10000}")

    @property
    def wal_segment_size(self) -> int:
        ident = self.identity()
        return int(ident["wal_segment_size"]) if ident else 16 * 1024 * 1024


def refuse_if_not_plain(path: Path) -> None:
    """A repository configured as a plain local folder must be one (before anything is
    written there): not an encrypted repository, nor an object store's working folder."""
    if (path / LOCAL_OBJECTS / ENCRYPTION_FILE).exists() or (path / ENCRYPTION_FILE).exists():
        raise ConfigError(f"repository {path} is encrypted; set [repository] encryption_key_env "
                          "to the variable that holds its passphrase")
    if (path / CACHE_MARKER).exists():  # a cache is not a repository: its files are pruned
        raise ConfigError(f"{path} is the working folder of an object-store repository "
                          f"({(path / CACHE_MARKER).read_text().strip()}); set [repository] url")


def new_backup_id(kind: str, now: datetime | None = None) -> str:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S")
    return f"{stamp}{ {'physical': 'F', 'incremental': 'I'}.get(kind, 'L')}"


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
