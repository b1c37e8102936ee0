"""`pgdr verify --redis NAME [ID|latest]`: prove a snapshot restores.

1. the stored bytes match their sha256 (repository damage),
2. redis-check-rdb accepts the file (its own CRC64 and structure),
3. a scratch redis-server (local, random port, no persistence) loads it,
4. and holds the key counts per database the metadata recorded, less keys whose TTL
   had passed by the time it loaded (redis drops those when loading).
The result is stored beside the snapshot (verify.json), like PostgreSQL verifications.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pgdr.checks import Check
from pgdr.config import Config, RedisConfig
from pgdr.errors import PgdrError
from pgdr.rdb import programs
from pgdr.rdb.fetch import find_snapshot, materialize
from pgdr.rdb.rdbfile import RdbDamaged, RdbSummary, scan
from pgdr.rdb.scratch import scratch_server
from pgdr.rdb.snapshot import incoming_dir
from pgdr.rdb.store import VERIFY, SnapshotDamaged, SnapshotStore
from pgdr.repo.layout import Repository


@dataclass
class RedisVerifyResult:
    name: str
    snapshot_id: str
    checks: list[Check] = field(default_factory=list)
    total_s: float = 0.0

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.status != "fail" for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    def as_dict(self) -> dict[str, Any]:
        return {"kind": "redis", "name": self.name, "snapshot_id": self.snapshot_id, "passed": self.passed,
                "total_s": round(self.total_s, 3), "checks": [c.as_dict() for c in self.checks]}


def verify_snapshot(config: Config, repo: Repository, rc: RedisConfig, which: str | None) -> RedisVerifyResult:
    store = SnapshotStore(repo, rc.name)
    meta = find_snapshot(store, rc.name, which)
    result = RedisVerifyResult(rc.name, meta["id"])
    started = time.monotonic()
    work = incoming_dir(config)
    _remove_dead_scratch(work, rc.name)
    folder = work / f"verify-{rc.name}-{os.getpid()}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(mode=0o700)
    try:
        _run_checks(rc, store, meta, folder, result)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    result.total_s = time.monotonic() - started
    store.put_json(f"{meta['id']}/{VERIFY}", {**result.as_dict(), "finished_at": datetime.now(UTC).isoformat()})
    return result


def _remove_dead_scratch(work: Path, name: str) -> None:
    """Scratch folders of verifications whose pgdr died (their redis-server died with it)."""
    prefix = f"verify-{name}-"
    for folder in work.glob(f"{prefix}*"):
        pid = folder.name[len(prefix):]
        if not pid.isdigit() or Path(f"/proc/{pid}").exists():
            continue
        shutil.rmtree(folder, ignore_errors=True)


def _run_checks(rc: RedisConfig, store: SnapshotStore, meta: dict[str, Any], folder: Any,
                result: RedisVerifyResult) -> None:
    rdb = folder / "dump.rdb"
    try:
        materialize(store, meta, rdb)
    except SnapshotDamaged as exc:
        result.checks.append(Check("checksum", "fail", exc.message,
                                   hint="this snapshot is damaged: use an older one, take a new one"))
        return
    result.checks.append(Check("checksum", "ok", f"sha256 of {meta['stored']['bytes']} stored bytes and "
                               f"{meta['rdb_bytes']} RDB bytes match"))
    done = programs.run("redis-check-rdb", [str(rdb)], timeout=rc.bgsave_timeout, ok_codes=range(256))
    lines = [ln.strip() for ln in (done.stdout + done.stderr).splitlines() if ln.strip()]
    if done.returncode != 0:
        cause = next((ln for ln in lines if "RDB ERROR" in ln or "Unexpected" in ln or "Wrong" in ln
                      or "Invalid" in ln or "Short read" in ln), lines[-1] if lines else f"exit {done.returncode}")
        result.checks.append(Check("redis-check-rdb", "fail", cause, evidence={"output": lines[-12:]}))
        return
    result.checks.append(Check("redis-check-rdb", "ok", next((ln for ln in lines if "looks OK" in ln), "ok")))
    try:
        summary = scan(rdb)  # structure, and the TTLs, before a server loads it
    except RdbDamaged as exc:
        result.checks.append(Check("structure", "fail", exc.message))
        return
    before_ms = int(time.time() * 1000)
    expected: dict[str, dict[str, int]] = meta.get("databases") or {}
    highest = max((int(db) for db in expected), default=0)
    try:
        with scratch_server(folder, rdb.name, rc.bgsave_timeout, databases=highest + 1) as (_scratch, info):
            after_ms = int(time.time() * 1000)
    except PgdrError as exc:
        result.checks.append(Check("load", "fail", exc.message, hint=exc.hint))
        return
    result.checks.append(Check("load", "ok", f"a scratch redis-server {info.get('redis_version')} loaded it"))
    result.checks.append(compare_counts(summary, expected, info, before_ms, after_ms))


def _loaded_counts(info: dict[str, Any]) -> dict[str, int]:
    out = {}
    for key, value in info.items():
        if key.startswith("db") and key[2:].isdigit() and isinstance(value, dict):
            out[key[2:]] = int(value.get("keys", 0))
    return out


def compare_counts(summary: RdbSummary, expected: dict[str, dict[str, int]], info: dict[str, Any],
                   before_ms: int, after_ms: int) -> Check:
    """Loaded keys per database == recorded, less keys whose TTL passed before loading
    (between the counts expired at the start and after the load)."""
    loaded = _loaded_counts(info)
    problems = []
    for db in sorted(set(expected) | set(loaded), key=int):
        want = int(expected.get(db, {}).get("keys", 0))
        got = loaded.get(db, 0)
        counted = summary.databases.get(int(db))
        low = want - (counted.expired_by(after_ms) if counted else 0)
        high = want - (counted.expired_by(before_ms) if counted else 0)
        if not low <= got <= high:
            problems.append(f"db{db}: {got} keys loaded, metadata says {want}"
                            + (f" ({want - high} to {want - low} of them expired by now)" if low != want else ""))
    evidence = {"expected": expected, "loaded": loaded}
    if problems:
        return Check("key counts", "fail", "; ".join(problems), evidence=evidence,
                     hint="the snapshot does not hold what was backed up")
    total = sum(loaded.values())
    return Check("key counts", "ok", f"{total} keys in {len(loaded)} database(s) match the metadata",
                 evidence=evidence)
