"""Facts from one node: a connection attempt (its cause when it fails) and one query per concern.

Everything here is read-only and set-based: no query per connection, so a server
with hundreds of sessions answers in milliseconds. The facts are plain dicts that
both the findings (analyze.py) and the Prometheus collector read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from pgdr.config import Config, DiagnoseConfig, NodeConfig
from pgdr.pg import sql

# Causes, mapped to the runbooks' common-errors table (see analyze.CAUSE_ACTIONS);
# the classification itself is pg/connect.py's, the one place failures are named.
from pgdr.pg.connect import (
    AUTH_FAILED,
    NO_DATABASE,
    OTHER,
    READ_ONLY,
    REFUSED,
    STARTING_UP,
    TIMEOUT,
    TOO_MANY_CLIENTS,
    WRAPAROUND,
    open_raw,
)
from pgdr.pg.connect import classify as classify_failure
from pgdr.pg.conninfo import mask_text, with_params

log = logging.getLogger(__name__)

__all__ = ["AUTH_FAILED", "NO_DATABASE", "OTHER", "READ_ONLY", "REFUSED", "STARTING_UP", "TIMEOUT",
           "TOO_MANY_CLIENTS", "WRAPAROUND", "classify_failure"]

# PostgreSQL stops assigning XIDs 3 million before wraparound (2^31).
XID_WRAP_LIMIT = 2**31 - 1
XID_STOP_MARGIN = 3_000_000


@dataclass
class NodeFacts:
    node: NodeConfig
    reachable: bool = False
    cause: str | None = None
    error: str | None = None
    connect_s: float | None = None
    instance: dict[str, Any] = field(default_factory=dict)
    sessions: list[dict[str, Any]] = field(default_factory=list)
    locks: list[dict[str, Any]] = field(default_factory=list)
    replication: list[dict[str, Any]] = field(default_factory=list)
    slots: list[dict[str, Any]] = field(default_factory=list)
    archiver: dict[str, Any] | None = None
    databases: list[dict[str, Any]] = field(default_factory=list)
    log: dict[str, Any] | None = None
    query_errors: dict[str, str] = field(default_factory=dict)

    @property
    def role(self) -> str:
        if not self.reachable:
            return "unreachable"
        return "standby" if self.instance.get("in_recovery") else "primary"


def open_connection(node: NodeConfig, timeout: float, application_name: str = "pgdr_diagnose"
                    ) -> psycopg.Connection[Any]:
    return open_raw(with_params(node.conninfo, application_name=application_name), timeout=timeout)


def _run(facts: NodeFacts, conn: psycopg.Connection[Any], name: str,
         params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One concern's query; a failure (permissions, a version without a view) is recorded, not fatal."""
    try:
        return [dict(r) for r in conn.execute(sql.load(name), params)]
    except psycopg.Error as exc:
        sqlstate = getattr(exc, "sqlstate", None)
        facts.query_errors[name] = f"{sqlstate or ''} {mask_text(str(exc).strip().splitlines()[0])}".strip()
        return []


def gather_node(node: NodeConfig, cfg: DiagnoseConfig, *, primary_checks: bool = True,
                read_log: bool = True) -> NodeFacts:
    import time

    facts = NodeFacts(node)
    t0 = time.monotonic()
    try:
        conn = open_connection(node, cfg.connect_timeout)
    except psycopg.Error as exc:
        facts.cause = classify_failure(exc)
        last = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        facts.error = mask_text(last)
        return facts
    facts.reachable = True
    facts.connect_s = time.monotonic() - t0
    try:
        conn.execute("set statement_timeout = '5s'; set lock_timeout = '1s'")
        rows = _run(facts, conn, "diag_instance")
        facts.instance = rows[0] if rows else {}
        thresholds = {"qlen": cfg.query_chars, "long_query": cfg.long_query,
                      "long_xact": cfg.long_transaction, "idle_in_xact": cfg.idle_in_transaction}
        facts.sessions = _run(facts, conn, "diag_sessions", thresholds)
        facts.locks = _run(facts, conn, "diag_locks", {"qlen": cfg.query_chars})
        facts.databases = _run(facts, conn, "diag_databases")
        if primary_checks and not facts.instance.get("in_recovery"):
            facts.replication = _run(facts, conn, "diag_replication")
            facts.slots = _run(facts, conn, "diag_slots")
            archiver = _run(facts, conn, "diag_archiver")
            facts.archiver = archiver[0] if archiver else None
        if read_log:
            where = _run(facts, conn, "diag_logfile")
            facts.log = scan_log(node, where[0] if where else {}, cfg.log_tail_bytes)
    finally:
        conn.close()
    return facts


def gather_all(config: Config, *, read_log: bool = True) -> list[NodeFacts]:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, len(config.nodes))) as pool:
        return list(pool.map(lambda n: gather_node(n, config.diagnose, read_log=read_log),
                             config.nodes))


# ---- the server log -------------------------------------------------------------

# Messages PostgreSQL writes when it meets damaged data (elog texts, not SQLSTATEs:
# the log is text). Each names what to look at next.
CORRUPTION_PATTERNS: dict[str, str] = {
    "page verification failed": "checksum mismatch on a data page",
    "invalid page in block": "damaged page (header or checksum)",
    "invalid page header": "damaged page header",
    "could not read block": "a relation file is short or unreadable",
    "unexpected zero page": "an index page is zeroed",
    "missing chunk number": "TOAST data is missing",
    "could not access status of transaction": "commit log (pg_xact) damage",
    "found xmin": "tuple visibility damage (xmin before relfrozenxid)",
    "has not been created yet": "multixact damage",
    "invalid memory alloc request size": "a damaged varlena length",
    "not accepting commands to avoid wraparound": "wraparound protection is active",
}


def _find_log(node: NodeConfig, where: dict[str, Any]) -> Path | None:
    if node.log_file is not None:
        return node.log_file
    current = where.get("logfile")
    if current:
        path = Path(current)
        if not path.is_absolute():
            path = Path(where.get("data_directory") or node.data_dir or ".") / path
        return path
    if node.data_dir is not None:
        logs = sorted((node.data_dir / "log").glob("*.log"), key=lambda p: p.stat().st_mtime)
        if logs:
            return logs[-1]
    return None


def scan_log(node: NodeConfig, where: dict[str, Any], tail_bytes: int) -> dict[str, Any]:
    """Corruption signatures in the last tail_bytes of the server log, when it is readable here."""
    path = _find_log(node, where)
    if path is None:
        return {"readable": False, "reason": "no log file known (set log_file for the node)"}
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, 2)
            fh.seek(max(0, size - tail_bytes))
            data = fh.read().decode("utf-8", errors="replace")
    except OSError as exc:
        return {"readable": False, "path": str(path), "reason": exc.strerror or str(exc)}
    hits: list[dict[str, str]] = []
    counts: dict[str, int] = {}
    for line in data.splitlines():
        lower = line.lower()
        for pattern, meaning in CORRUPTION_PATTERNS.items():
            if pattern in lower:
                counts[pattern] = counts.get(pattern, 0) + 1
                if len(hits) < 20:
                    hits.append({"signature": pattern, "meaning": meaning, "line": mask_text(line[:300])})
    return {"readable": True, "path": str(path), "scanned_bytes": min(size, tail_bytes),
            "counts": counts, "lines": hits}
