"""Records kept beside backups (verification results; later restores and drills)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pgdr.fsutil import write_json_durable
from pgdr.repo.layout import Repository

VERIFY_RECORD = "verify.json"


def read_verification(repo: Repository, backup_id: str) -> dict[str, Any] | None:
    """The verification record of a backup, or None when it was never verified."""
    path = repo.backups_dir / backup_id / VERIFY_RECORD
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def verification_status(repo: Repository, backup_id: str) -> str:
    """'verified', 'failed' or 'never' — read from the record in the backup's folder."""
    record = read_verification(repo, backup_id)
    if record is None:
        return "never"
    return "verified" if record.get("passed") else "failed"


def known_bad(repo: Repository, backup_id: str) -> bool:
    """Verification found the backup itself damaged (not only the WAL archived after it)."""
    record = read_verification(repo, backup_id)
    if record is None:
        return False
    return not record.get("backup_ok", record.get("passed"))


def records_dir(repo: Repository) -> Path:
    path = repo.root / "records"
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_record(repo: Repository, kind: str, data: dict[str, Any]) -> Path:
    """Store an operation's record (failover, restore, drill…) durably; returns its path."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    record_id = f"{stamp}-{kind}"
    path = records_dir(repo) / f"{record_id}.json"
    write_json_durable(path, {"id": record_id, "kind": kind, **data})
    return path


def list_records(repo: Repository, kind: str | None = None) -> list[dict[str, Any]]:
    out = []
    for path in sorted(records_dir(repo).glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if kind is None or record.get("kind") == kind:
            out.append(record)
    return out


def topology_path(repo: Repository) -> Path:
    return repo.root / "topology.json"


def read_topology(repo: Repository) -> dict[str, Any]:
    try:
        return dict(json.loads(topology_path(repo).read_text()))
    except (OSError, ValueError):
        return {}

