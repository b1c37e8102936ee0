"""Records kept beside backups (verification results; later restores and drills)."""

from __future__ import annotations

import json
from typing import Any

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
