"""`pgdr backup --redis NAME`: one RDB snapshot into the repository, published only
when complete.

Local server (data_dir set): BGSAVE, wait for it (bounded, and say for what), copy
the file it wrote. Remote: `redis-cli --rdb` streams one (the password through
REDISCLI_AUTH, never argv). Either way the file is scanned (key counts per database
come from the snapshot itself), compressed, checksummed, stored through rdb/store.py,
and its metadata written last.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pgdr.config import Config, RedisConfig
from pgdr.errors import BackupFailed, PgdrError
from pgdr.fsutil import exclusive_lock
from pgdr.rdb import programs
from pgdr.rdb.rdbfile import RdbDamaged, scan
from pgdr.rdb.store import DATA, DIGEST, META, SnapshotStore
from pgdr.rdb.target import RedisTarget
from pgdr.repo import digest
from pgdr.repo.layout import Repository

COMPRESSION_LEVEL = 3
_POLL = 0.2


@dataclass
class SnapshotResult:
    meta: dict[str, Any]
    removed: list[str]


def incoming_dir(config: Config) -> Path:
    """Where a snapshot is assembled and a scratch redis runs: local disk beside the
    repository (which may be an S3 bucket)."""
    from pgdr.restore.scratch import scratch_root

    path = scratch_root(config) / "redis"
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def new_id() -> str:
    now = datetime.now(UTC)
    return now.strftime("%Y%m%dT%H%M%S") + f"{now.microsecond // 1000:03d}Z"


def take_snapshot(config: Config, repo: Repository, rc: RedisConfig) -> SnapshotResult:
    from pgdr.rdb.retention import prune

    target = RedisTarget.of(rc)
    store = SnapshotStore(repo, rc.name)
    repo.locks_dir.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(repo.lock_path(f"redis-{rc.name}"), f"backup of redis {rc.name}"):
        store.remove_unpublished()  # under the lock: nobody else is writing one
        work = incoming_dir(config)
        for stale in work.glob(f"{rc.name}-*.rdb"):  # left by a killed backup of this Redis
            if stale.name[len(rc.name) + 1:-4].isdigit():
                stale.unlink(missing_ok=True)
        rdb = work / f"{rc.name}-{os.getpid()}.rdb"
        try:
            meta = _take(rc, target, store, rdb)
        finally:
            rdb.unlink(missing_ok=True)
        removed = prune(store, rc)
    return SnapshotResult(meta, removed)


def _take(rc: RedisConfig, target: RedisTarget, store: SnapshotStore, rdb: Path) -> dict[str, Any]:
    started = time.time()
    server = target.info()
    snapshot_id = new_id()
    if rc.data_dir is not None:
        method = "bgsave"
        _bgsave_and_copy(rc, target, rdb, started)
    else:
        method = "redis-cli --rdb"
        _stream(rc, target, rdb)
    try:
        summary = scan(rdb)
    except RdbDamaged as exc:
        raise BackupFailed(f"redis {rc.name}: the snapshot is not a complete RDB: {exc.message}") from None
    rdb_bytes = rdb.stat().st_size
    raw_sha = digest.hasher(DIGEST)
    with open(rdb, "rb") as fh:
        stored = store.put(f"{snapshot_id}/{DATA}", _Compressing(fh, raw_sha))
    finished = time.time()
    offset = summary.aux.get("repl-offset")
    meta: dict[str, Any] = {
        "id": snapshot_id, "kind": "redis", "name": rc.name, "source": target.url.display, "method": method,
        "started_at": datetime.fromtimestamp(started, UTC).isoformat(),
        "finished_at": datetime.fromtimestamp(finished, UTC).isoformat(),
        "duration_s": round(finished - started, 3),
        "redis_version": server.get("redis_version"), "rdb_version": summary.version,
        "rdb_ctime": int(summary.aux["ctime"]) if summary.aux.get("ctime", "").isdigit() else None,
        "role": server.get("role"),
        "master_repl_offset": int(offset) if offset and offset.lstrip("-").isdigit()
        else server.get("master_repl_offset"),
        "databases": summary.key_counts(),
        "keys": sum(c.keys for c in summary.databases.values()),
        "rdb_bytes": rdb_bytes, "rdb_sha256": raw_sha.hexdigest(),
        "stored": {"key": f"{snapshot_id}/{DATA}", "bytes": stored.size, "sha256": stored.sha256,
                   "compression": f"zstd:{COMPRESSION_LEVEL}"},
    }
    store.put_json(f"{snapshot_id}/{META}", meta)  # published: last
    return meta


class _Compressing:
    """A stream of the zstd-compressed file, hashing the raw bytes on the way (the store
    reads it like a file and hashes what it stores)."""

    def __init__(self, fh: Any, raw_sha: Any) -> None:
        import zstandard

        self.fh = fh
        self.raw_sha = raw_sha
        self.compressor = zstandard.ZstdCompressor(level=COMPRESSION_LEVEL).compressobj()
        self.buffer = bytearray()
        self.done = False

    def read(self, n: int = -1) -> bytes:
        want = n if n is not None and n > 0 else 1 << 62
        while len(self.buffer) < want and not self.done:
            raw = self.fh.read(1 << 20)
            if raw:
                self.raw_sha.update(raw)
                self.buffer += self.compressor.compress(raw)
            else:
                self.buffer += self.compressor.flush()
                self.done = True
        out = bytes(self.buffer[:want])
        del self.buffer[:want]
        return out


def _persistence(target: RedisTarget) -> dict[str, Any]:
    return target.info("persistence")


def _bgsave_and_copy(rc: RedisConfig, target: RedisTarget, dest: Path, started: float) -> None:
    """BGSAVE on the server, wait (bounded) for rdb_bgsave_in_progress to return to 0,
    check rdb_last_bgsave_status, then copy the file it wrote."""
    import redis

    assert rc.data_dir is not None
    deadline = time.monotonic() + rc.bgsave_timeout
    _wait_no_bgsave(rc, target, deadline, "a BGSAVE already running to finish")
    client = target.client()
    try:
        dbfilename = _config_get(client, "dbfilename") or "dump.rdb"
        server_dir = _config_get(client, "dir")
        if server_dir is not None and Path(server_dir).resolve() != rc.data_dir.resolve():
            raise BackupFailed(f"redis {rc.name} writes its RDB to {server_dir}, not to data_dir {rc.data_dir}",
                               hint="fix data_dir in [[redis]] (or remove it to stream with redis-cli --rdb)")
        try:
            client.bgsave()
        except redis.ResponseError as exc:
            raise BackupFailed(f"redis {rc.name} refused BGSAVE: {exc}") from None
        except redis.RedisError as exc:
            raise BackupFailed(f"redis {rc.name}: BGSAVE failed: {exc}") from None
    finally:
        client.close()
    info = _wait_no_bgsave(rc, target, deadline, "BGSAVE to finish (rdb_bgsave_in_progress:0)")
    if info.get("rdb_last_bgsave_status") != "ok":
        raise BackupFailed(
            f"redis {rc.name}: BGSAVE failed (rdb_last_bgsave_status:{info.get('rdb_last_bgsave_status')}): "
            f"the server could not write {rc.data_dir / dbfilename}",
            hint="see the redis log: is its dir writable by the redis user, is the disk full?")
    source = rc.data_dir / dbfilename
    try:
        with open(source, "rb") as src, open(dest, "wb") as out:  # one open: a later BGSAVE renames a new file in
            shutil.copyfileobj(src, out, 1 << 20)
    except OSError as exc:
        raise BackupFailed(f"redis {rc.name}: cannot read {source}: {exc.strerror}") from None
    ctime = scan_ctime(dest)
    if ctime is not None and ctime < int(started) - 1:
        raise BackupFailed(f"redis {rc.name}: {source} was written at {ctime}, before this BGSAVE",
                           hint="the server's dir/dbfilename is not data_dir/dump.rdb?")


def scan_ctime(path: Path) -> int | None:
    try:
        value = scan(path).aux.get("ctime", "")
    except RdbDamaged:
        return None
    return int(value) if value.isdigit() else None


def _config_get(client: Any, key: str) -> str | None:
    import redis

    try:
        found = client.config_get(key)
    except redis.ResponseError:  # CONFIG renamed away: trust the config file
        return None
    value = found.get(key) if isinstance(found, dict) else None
    return str(value) if value else None


def _wait_no_bgsave(rc: RedisConfig, target: RedisTarget, deadline: float, what: str) -> dict[str, Any]:
    while True:
        try:
            info = _persistence(target)
        except PgdrError as exc:
            raise BackupFailed(f"redis {rc.name}: lost while waiting for {what}: {exc.message}") from None
        if not int(info.get("rdb_bgsave_in_progress") or 0):
            return info
        if time.monotonic() > deadline:
            raise BackupFailed(f"redis {rc.name}: waited {rc.bgsave_timeout:.0f}s for {what}; it is still running",
                               hint="raise bgsave_timeout in [[redis]] for a large dataset")
        time.sleep(_POLL)


def _stream(rc: RedisConfig, target: RedisTarget, dest: Path) -> None:
    """redis-cli --rdb: the server forks and sends a snapshot as to a new replica."""
    try:
        programs.run("redis-cli", [*target.cli_args(), "--rdb", str(dest)],
                     extra_env=target.cli_env({}), timeout=rc.bgsave_timeout,
                     stall_timeout=min(rc.bgsave_timeout, 120.0), progress_path=dest,
                     stalled_what=f"streaming the RDB of redis {rc.name}")
    except PgdrError as exc:
        raise BackupFailed(f"redis {rc.name}: redis-cli --rdb failed: {exc.message}", hint=exc.hint) from None
