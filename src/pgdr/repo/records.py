"""Records kept beside backups (verification results; later restores and drills)."""

from __future__ import annotations

import json

from pgdr.repo.layout import Repository

VERIFY_RECORD = "verify.json"


def verification_status(repo: Repository, backup_id: str) -> str:
    """'verified', 'failed' or 'never' — read from the record in the backup's folder."""
    path = repo.backups_dir / backup_id / VERIFY_RECORD
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return "never"
    return "verified" if record.get("passed") else "failed"
