"""Work pgdr started and may not finish: a restore in progress, a scratch folder in use.

A SIGKILLed pgdr cannot say "I did not finish". So before it starts such work it
writes a marker naming itself (pid + the kernel's start time, see pg/children.py),
and removes the marker only when the work is complete or cleanly undone. A marker
whose owner is dead is proof of interrupted work: `status` reports interrupted
restores, and the next verify removes the scratch folders a killed one left.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pgdr.fsutil import write_json_durable
from pgdr.pg.children import is_alive, start_time
from pgdr.repo.layout import Repository

# Written into a restore's target directory before extraction, removed on success.
INCOMPLETE_MARKER = "PGDR_RESTORE_INCOMPLETE"
# Written into each scratch folder; names the verify that owns it.
OWNER_MARKER = "pgdr-owner.json"


def owner() -> dict[str, Any]:
    pid = os.getpid()
    return {"pid": pid, "start": start_time(pid), "at": datetime.now(UTC).isoformat()}


def owner_dead(data: dict[str, Any]) -> bool:
    """The recorded owner no longer runs (a reused pid has another start time)."""
    who = data.get("owner") or {}
    return not (isinstance(who.get("pid"), int) and is_alive(who["pid"], who.get("start")))


def _folder(repo: Repository) -> Path:
    return repo.root / "unfinished"


def begin_restore(repo: Repository, target_dir: Path, info: dict[str, Any]) -> Path:
    """Record a restore into target_dir as in progress (in the repository, where status looks)."""
    folder = _folder(repo)
    folder.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha1(str(target_dir).encode()).hexdigest()[:16]
    path = folder / f"restore-{key}.json"
    write_json_durable(path, {"kind": "restore", "data_dir": str(target_dir), "owner": owner(), **info})
    return path


def mark_incomplete(target_dir: Path) -> None:
    """The marker inside the target directory itself, for whoever looks at the folder."""
    (target_dir / INCOMPLETE_MARKER).write_text(json.dumps(
        {"owner": owner(), "note": "pgdr restore did not finish: this data directory is incomplete; "
                                   "remove it and restore again"}) + "\n")


def finish(path: Path | None, target_dir: Path | None = None) -> None:
    if target_dir is not None:
        (target_dir / INCOMPLETE_MARKER).unlink(missing_ok=True)
    if path is not None:
        path.unlink(missing_ok=True)


def interrupted_restores(repo: Repository) -> list[dict[str, Any]]:
    """Restores whose pgdr died before finishing; those whose folder is gone are forgotten."""
    found = []
    for path in sorted(_folder(repo).glob("restore-*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not owner_dead(data):
            continue
        if not Path(data.get("data_dir", "")).exists():
            path.unlink(missing_ok=True)
            continue
        found.append(data)
    return found
