"""Migration records in the repository's records/ folder, beside restores and drills.

A migration's record is written when its freeze point is taken (outcome "running") and
rewritten when it ends, so a pgdr killed mid-migration still leaves the freeze point
on record for the rollback.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pgdr.errors import UsageError
from pgdr.fsutil import write_json_durable
from pgdr.repo.layout import Repository
from pgdr.repo.records import list_records, records_dir

KIND = "migrate"
ROLLBACK_KIND = "migrate-rollback"


def write(repo: Repository, record: dict[str, Any]) -> Path:
    """Create or replace the record (its "id" names the file)."""
    path = records_dir(repo) / f"{record['id']}.json"
    write_json_durable(path, record)
    return path


def new_id(kind: str) -> str:
    """Record ids sort by time like every other record's (`pgdr report latest`)."""
    return f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}-{kind}"


def rollbacks_of(repo: Repository, migration_id: str) -> list[dict[str, Any]]:
    return [r for r in list_records(repo, ROLLBACK_KIND) if r.get("migration_id") == migration_id]


def migrations(repo: Repository) -> list[dict[str, Any]]:
    """Production migrations, oldest first (rehearsals are recorded too, but never rolled back)."""
    return [r for r in list_records(repo, KIND) if not r.get("rehearsal")]


def find(repo: Repository, wanted: str) -> dict[str, Any]:
    """A migration by record id (or a unique prefix of it), or 'latest'."""
    found = migrations(repo)
    if not found:
        raise UsageError(f"no migration recorded in {records_dir(repo)}", hint="run `pgdr migrate -- COMMAND` first")
    if wanted == "latest":
        return found[-1]
    matches = [r for r in found if str(r.get("id", "")).startswith(wanted)]
    if len(matches) != 1:
        raise UsageError(f"{'no' if not matches else 'more than one'} migration record matches {wanted!r}",
                         hint="`pgdr report --list` lists record ids; or use --rollback latest")
    return matches[0]
