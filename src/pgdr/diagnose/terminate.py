"""`pgdr terminate`: end exactly the sessions that match, and say what happened to each.

The match is computed by one query (terminate_candidates.sql). Termination runs
the same query again restricted to the pids that were shown, so a session that
changed state in between (or a pid reused by a new backend) is left alone.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg

from pgdr.config import Config, NodeConfig
from pgdr.errors import UsageError
from pgdr.pg import sql
from pgdr.pg.connect import session
from pgdr.pg.probe import find_primary


@dataclass(frozen=True)
class Criteria:
    idle_in_transaction: float | None = None
    idle: float | None = None
    longer_than: float | None = None
    pid: int | None = None
    user: str | None = None
    database: str | None = None
    include_superusers: bool = False

    def validate(self) -> None:
        chosen = [x for x in (self.idle_in_transaction, self.idle, self.longer_than, self.pid)
                  if x is not None]
        if len(chosen) != 1:
            raise UsageError("give exactly one of --idle-in-transaction, --idle, --longer-than, --pid")

    def params(self, only_pids: list[int] | None = None) -> dict[str, Any]:
        return {"include_superusers": self.include_superusers, "usename": self.user,
                "datname": self.database, "pid": self.pid,
                "idle_in_xact": self.idle_in_transaction, "idle": self.idle,
                "longer_than": self.longer_than, "only_pids": only_pids}

    def describe(self) -> str:
        parts = []
        if self.idle_in_transaction is not None:
            parts.append(f"idle in transaction ≥ {self.idle_in_transaction:g}s")
        if self.idle is not None:
            parts.append(f"idle ≥ {self.idle:g}s")
        if self.longer_than is not None:
            parts.append(f"active query ≥ {self.longer_than:g}s")
        if self.pid is not None:
            parts.append(f"pid {self.pid}")
        if self.user:
            parts.append(f"user {self.user}")
        if self.database:
            parts.append(f"database {self.database}")
        if not self.include_superusers:
            parts.append("not superusers")
        return ", ".join(parts)


@dataclass
class Outcome:
    pid: int
    result: str  # terminated | no longer matches | failed | still running
    detail: str | None = None


@dataclass
class TerminatePlan:
    node: str
    criteria: Criteria
    sessions: list[dict[str, Any]]
    outcomes: list[Outcome] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"node": self.node, "criteria": self.criteria.describe(),
                "sessions": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in s.items()}
                             for s in self.sessions],
                "outcomes": [asdict(o) for o in self.outcomes]}


def _target(config: Config, node_name: str | None) -> NodeConfig:
    if node_name is not None:
        return config.node(node_name)
    return find_primary(config).node


def plan(config: Config, criteria: Criteria, node_name: str | None = None) -> TerminatePlan:
    criteria.validate()
    node = _target(config, node_name)
    with session(node.conninfo) as conn:
        rows = [dict(r) for r in conn.execute(sql.load("terminate_candidates"), criteria.params())]
    return TerminatePlan(node.name, criteria, rows)


def _signal_all(conn: psycopg.Connection[Any], pids: list[int], outcomes: dict[int, Outcome]) -> list[int]:
    """pg_terminate_backend for every pid in one statement; per pid when one is refused."""
    if not pids:
        return []
    try:
        rows = conn.execute("select pid, pg_terminate_backend(pid) as ok from unnest(%s::int[]) as pid", (pids,))
        return [r["pid"] for r in rows if r["ok"]]
    except psycopg.errors.InsufficientPrivilege:
        pass
    sent = []
    for pid in pids:
        try:
            row = conn.execute("select pg_terminate_backend(%s) as ok", (pid,)).fetchone()
        except psycopg.errors.InsufficientPrivilege as exc:
            outcomes[pid] = Outcome(pid, "failed", f"permission denied ({exc.sqlstate})")
            continue
        except psycopg.Error as exc:
            outcomes[pid] = Outcome(pid, "failed", f"{exc.sqlstate or type(exc).__name__}")
            continue
        if row and row["ok"]:
            sent.append(pid)
        else:
            outcomes[pid] = Outcome(pid, "failed", "no such session any more")
    return sent


def execute(config: Config, the_plan: TerminatePlan, wait_ms: int = 5000) -> TerminatePlan:
    """Terminate the planned sessions that still match; wait for each to exit."""
    node = config.node(the_plan.node)
    pids = [s["pid"] for s in the_plan.sessions]
    if not pids:
        return the_plan
    outcomes: dict[int, Outcome] = {}
    with session(node.conninfo) as conn:
        still = {r["pid"] for r in conn.execute(sql.load("terminate_candidates"),
                                                the_plan.criteria.params(only_pids=pids))}
        for pid in pids:
            if pid not in still:
                outcomes[pid] = Outcome(pid, "no longer matches", "ended or changed state since it was listed")
        targets = [p for p in pids if p in still]
        sent = _signal_all(conn, targets, outcomes)
        # Signal everyone first, then wait for all together: a pool of hundreds of stuck
        # sessions is freed in about one backend exit time, not hundreds of them.
        deadline = time.monotonic() + wait_ms / 1000
        alive = set(sent)
        while alive and time.monotonic() < deadline:
            rows = conn.execute("select pid from pg_stat_activity where pid = any(%s)", (list(alive),))
            alive = {r["pid"] for r in rows}
            if alive:
                time.sleep(0.02)
        for pid in sent:
            outcomes[pid] = Outcome(pid, "still running", f"did not exit within {wait_ms} ms") if pid in alive \
                else Outcome(pid, "terminated")
    the_plan.outcomes = [outcomes[p] for p in pids]
    return the_plan


