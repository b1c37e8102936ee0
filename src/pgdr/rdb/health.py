"""Each Redis as status, /metrics and diagnose see it: reachable, role and replication
link, last BGSAVE result, memory, evicted keys, and its snapshots' ages in the repository.

One gatherer (facts), one set of checks; the writers render them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pgdr.checks import Check, Status
from pgdr.config import Config, RedisConfig
from pgdr.errors import PgdrError
from pgdr.rdb.retention import Snapshot, snapshots
from pgdr.rdb.store import SnapshotStore
from pgdr.rdb.target import RedisTarget
from pgdr.repo.layout import Repository

if TYPE_CHECKING:
    from pgdr.diagnose.findings import Finding

PROBE_TIMEOUT = 3.0


@dataclass
class RedisFacts:
    name: str
    source: str
    max_age: float
    reachable: bool = False
    error: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    snapshots: list[Snapshot] = field(default_factory=list)

    @property
    def role(self) -> str | None:
        return self.info.get("role") if self.reachable else None

    @property
    def newest(self) -> Snapshot | None:
        return self.snapshots[-1] if self.snapshots else None

    @property
    def newest_verified(self) -> Snapshot | None:
        return next((s for s in reversed(self.snapshots) if s.verified), None)

    def as_dict(self) -> dict[str, Any]:
        i = self.info
        newest, verified = self.newest, self.newest_verified
        return {"name": self.name, "source": self.source, "reachable": self.reachable, "error": self.error,
                "role": self.role, "master_link_status": i.get("master_link_status"),
                "connected_slaves": i.get("connected_slaves"), "rdb_last_bgsave_status": i.get("rdb_last_bgsave_status"),
                "used_memory": i.get("used_memory"), "maxmemory": i.get("maxmemory"),
                "evicted_keys": i.get("evicted_keys"), "snapshots": len(self.snapshots),
                "newest_snapshot": {"id": newest.id, "age_s": round(newest.age_s, 1)} if newest else None,
                "newest_verified": {"id": verified.id, "age_s": round(verified.age_s, 1)} if verified else None}


def gather(rc: RedisConfig, repo: Repository, timeout: float = PROBE_TIMEOUT) -> RedisFacts:
    target = RedisTarget.of(rc)
    facts = RedisFacts(rc.name, target.url.display, rc.max_snapshot_age)
    try:
        facts.info = target.info(timeout=min(timeout, rc.connect_timeout))
        facts.reachable = True
    except PgdrError as exc:
        facts.error = exc.message
    try:
        facts.snapshots = snapshots(SnapshotStore(repo, rc.name))
    except PgdrError as exc:
        facts.error = (facts.error + "; " if facts.error else "") + exc.message
    return facts


def gather_all(config: Config, repo: Repository) -> list[RedisFacts]:
    return [gather(rc, repo) for rc in config.redis]


def _age(seconds: float) -> str:
    return f"{seconds / 3600:.1f}h" if seconds >= 5400 else f"{seconds / 60:.0f}m"


def checks(f: RedisFacts) -> list[Check]:
    """status's checks for one Redis: any 'fail' makes `pgdr status` exit 1."""
    name = f"redis {f.name}"
    out: list[Check] = []
    if not f.reachable:
        out.append(Check(name, "fail", f"unreachable: {f.error}", hint="start it, or check [[redis]] url"))
    else:
        i = f.info
        role = i.get("role")
        summary = f"{role}, redis {i.get('redis_version')}, used memory {i.get('used_memory_human')}, " \
                  f"evicted keys {i.get('evicted_keys', 0)}"
        status: Status = "ok"
        hint = None
        if role == "slave" and i.get("master_link_status") != "up":
            status, hint = "fail", "the replica lost its master: check the master and the replica's log"
            summary += f"; replication link {i.get('master_link_status')}"
        elif role == "slave":
            summary += f"; replicating from {i.get('master_host')}:{i.get('master_port')}"
        else:
            summary += f"; {i.get('connected_slaves', 0)} replica(s)"
        out.append(Check(name, status, summary, hint=hint, evidence=f.as_dict()))
        if i.get("rdb_last_bgsave_status") not in (None, "ok"):
            out.append(Check(f"{name} bgsave", "fail",
                             f"last BGSAVE failed (rdb_last_bgsave_status:{i.get('rdb_last_bgsave_status')})",
                             hint="see the redis log: unwritable dir or full disk? with "
                                  "stop-writes-on-bgsave-error it refuses writes now"))
    newest, verified = f.newest, f.newest_verified
    if newest is None:
        out.append(Check(f"{name} snapshot", "fail", "no snapshot in the repository",
                         hint=f"run `pgdr backup --redis {f.name}` (or schedule job redis-backup)"))
        return out
    late = newest.age_s > f.max_age
    out.append(Check(f"{name} snapshot", "fail" if late else "ok",
                     f"newest {newest.id}, {_age(newest.age_s)} old"
                     + (f" (limit {_age(f.max_age)})" if late else ""),
                     evidence={"id": newest.id, "age_s": round(newest.age_s, 1), "limit_s": f.max_age},
                     hint=f"run `pgdr backup --redis {f.name}`" if late else None))
    if verified is None:
        out.append(Check(f"{name} verified snapshot", "warn", "no snapshot has been verified",
                         hint=f"run `pgdr verify --redis {f.name}`"))
    else:
        stale = verified.age_s > f.max_age
        failed_newest = newest.verified is False
        out.append(Check(f"{name} verified snapshot", "warn" if stale or failed_newest else "ok",
                         (f"newest snapshot {newest.id} FAILED verification; " if failed_newest else "")
                         + f"newest verified {verified.id}, {_age(verified.age_s)} old",
                         evidence={"id": verified.id, "age_s": round(verified.age_s, 1)}))
    return out


def status_checks(config: Config, repo: Repository) -> list[Check]:
    """What `pgdr status` adds for the [[redis]] entries."""
    return [c for f in gather_all(config, repo) for c in checks(f)]


_SEVERITY = {"ok": "ok", "warn": "warning", "fail": "critical"}


def findings(config: Config, repo: Repository) -> list[Finding]:
    """What `pgdr diagnose` adds: the status checks as findings, plus memory pressure."""
    from pgdr.diagnose.findings import Finding

    out: list[Finding] = []
    for f in gather_all(config, repo):
        for c in checks(f):
            out.append(Finding("redis", _SEVERITY[c.status], f"{c.name}: {c.summary}", f.name,  # type: ignore[arg-type]
                               {k: v for k, v in c.evidence.items() if k != "snapshots"}, c.hint))
        if not f.reachable:
            continue
        used, limit = int(f.info.get("used_memory") or 0), int(f.info.get("maxmemory") or 0)
        evicted = int(f.info.get("evicted_keys") or 0)
        if limit and used > 0.9 * limit:
            out.append(Finding("redis_memory", "warning", f"used memory {used} bytes is over 90% of maxmemory {limit}",
                               f.name, {"used_memory": used, "maxmemory": limit},
                               "raise maxmemory or check what fills the cache"))
        else:
            out.append(Finding("redis_memory", "ok", f"used memory {f.info.get('used_memory_human')}"
                               + (f" of {limit} bytes" if limit else " (no maxmemory)"), f.name))
        if evicted:
            out.append(Finding("redis_evictions", "info", f"{evicted} key(s) evicted since the server started",
                               f.name, {"evicted_keys": evicted, "policy": f.info.get("maxmemory_policy")}))
    return out
