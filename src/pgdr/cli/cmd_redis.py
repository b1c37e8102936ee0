"""The Redis branches of `pgdr backup --redis`, `verify --redis`, `restore --redis` and
`status --redis`: parse, call pgdr.rdb, render. The commands delegate here at their top."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from pgdr.cli import output
from pgdr.cli.context import AppContext
from pgdr.errors import ConfigError, PgdrError, UsageError


def _entries(obj: AppContext, name: str | None) -> list[Any]:
    if name is not None:
        return [obj.config.redis_named(name)]
    if not obj.config.redis:
        raise ConfigError("no [[redis]] in the config", hint="add [[redis]] name = ..., url = \"redis://...\"")
    return list(obj.config.redis)


def backup(obj: AppContext, name: str | None, json_out: bool) -> None:
    """One snapshot of the named Redis (default: each [[redis]]); exit 1 if any failed."""
    from pgdr.rdb.snapshot import take_snapshot

    done: list[dict[str, Any]] = []
    failed = 0
    entries = _entries(obj, name)
    for rc in entries:
        try:
            result = take_snapshot(obj.config, obj.repo, rc)
        except PgdrError as exc:
            if len(entries) == 1:
                raise
            failed += 1
            output.error_line(exc.message, exc.hint)
            continue
        m = result.meta
        done.append({**m, "removed": result.removed})
        if not json_out:
            dbs = ", ".join(f"db{db} {c['keys']}" for db, c in m["databases"].items()) or "no keys"
            output.console.print(
                f"redis {rc.name}: snapshot {m['id']} complete ({m['method']}): {dbs}; "
                f"{output.human_bytes(m['rdb_bytes'])} → {output.human_bytes(m['stored']['bytes'])} "
                f"in {m['duration_s']:.1f}s; role {m['role']}, offset {m['master_repl_offset']}"
                + (f"; expired {len(result.removed)} old snapshot(s)" if result.removed else ""))
    if json_out:
        output.print_json(done)
    if failed:
        raise typer.Exit(1)


def verify(obj: AppContext, name: str, which: str, json_out: bool) -> None:
    from pgdr.rdb.verify import verify_snapshot

    result = verify_snapshot(obj.config, obj.repo, obj.config.redis_named(name), which)
    if json_out:
        output.print_json(result.as_dict())
    else:
        output.checks_table(f"verify redis {name} {result.snapshot_id}: {'PASSED' if result.passed else 'FAILED'}",
                            result.checks)
        output.console.print(f"total {result.total_s:.1f}s")
    for check in result.failed:
        output.error_line(f"verify failed: redis {name} {result.snapshot_id}: {check.name}: {check.summary}")
    if not result.passed:
        raise typer.Exit(1)


def restore(obj: AppContext, name: str, which: str | None, target_dir: Path | None, port: int | None,
            json_out: bool) -> None:
    from pgdr.rdb.restore import restore_snapshot

    if target_dir is None or port is None:
        raise UsageError("restore --redis needs --target-dir DIR (new, empty) and --port P (free)")
    result = restore_snapshot(obj.config, obj.repo, obj.config.redis_named(name), which, target_dir, port)
    if json_out:
        output.print_json(result.as_dict())
    else:
        output.checks_table(f"restore redis {name} {result.snapshot_id}: {'done' if result.passed else 'FAILED'}",
                            result.checks)
        if result.pid is not None:
            output.console.print(f"redis-server running on 127.0.0.1:{port} (pid {result.pid}), dir {target_dir}; "
                                 f"stop it with redis-cli -p {port} shutdown")
    for check in result.checks:
        if check.status == "fail":
            output.error_line(f"restore redis {name}: {check.name}: {check.summary}")
    if not result.passed:
        raise typer.Exit(1)


def status(obj: AppContext, name: str | None, json_out: bool) -> None:
    """Only the Redis part of `pgdr status` (exit 1 on any failure)."""
    from pgdr.checks import worst
    from pgdr.rdb.health import checks, gather

    facts = [gather(rc, obj.repo) for rc in _entries(obj, name)]
    found = [c for f in facts for c in checks(f)]
    state = worst(found)
    if json_out:
        output.print_json({"status": state, "redis": [f.as_dict() for f in facts],
                           "checks": [c.as_dict() for c in found]})
    else:
        output.checks_table(f"redis status: {state}", found)
    if state == "fail":
        raise typer.Exit(1)


def list_snapshots(obj: AppContext, name: str, json_out: bool) -> None:
    """Snapshots of one Redis in the repository, oldest first."""
    from pgdr.rdb.retention import snapshots
    from pgdr.rdb.store import META, SnapshotStore

    rc = obj.config.redis_named(name)
    store = SnapshotStore(obj.repo, rc.name)
    rows: list[dict[str, Any]] = []
    for snap in snapshots(store):
        meta = store.get_json(f"{snap.id}/{META}") or {}
        rows.append({"id": snap.id, "age_s": round(snap.age_s, 1), "keys": meta.get("keys"),
                     "databases": meta.get("databases"), "rdb_bytes": meta.get("rdb_bytes"),
                     "stored_bytes": (meta.get("stored") or {}).get("bytes"), "method": meta.get("method"),
                     "verified": {None: "never", True: "verified", False: "failed"}[snap.verified]})
    if json_out:
        output.print_json(rows)
        return
    output.table(f"{len(rows)} snapshot(s) of redis {name}", ["id", "age", "keys", "RDB", "stored", "verified"],
                 [[r["id"], f"{r['age_s'] / 3600:.1f}h", r["keys"], output.human_bytes(r["rdb_bytes"]),
                   output.human_bytes(r["stored_bytes"]), r["verified"]] for r in rows])
