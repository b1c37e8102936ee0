"""Facts -> findings: each with severity, evidence and the runbook's action."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from pgdr.backup.archiver import archiver_state_dict
from pgdr.config import Config, DiagnoseConfig
from pgdr.diagnose import gather as g
from pgdr.diagnose.findings import DiagnoseReport, Finding, Severity
from pgdr.errors import PgdrError
from pgdr.mode import is_logical_only
from pgdr.pg.standbys import match_standbys
from pgdr.repo.layout import Repository

# The runbooks' common-errors table: cause -> what to do.
CAUSE_ACTIONS: dict[str, tuple[str, str]] = {
    g.REFUSED: ("connection refused", ("start the server (`pg_ctl start`) or fail over "
                "(`pgdr failover`); check host/port and that it listens there")),
    g.AUTH_FAILED: ("authentication failed", ("check the user/password in the conninfo, "
                    ".pgpass and pg_hba.conf; rotate the secret if it changed")),
    g.STARTING_UP: ("the server is starting up, in recovery or shutting down",
                    "wait and retry; if it stays so, read the server log for crash recovery progress"),
    g.TOO_MANY_CLIENTS: ("too many clients already",
                         ("find idle and idle-in-transaction sessions (`pgdr diagnose`) and "
                          "terminate them (`pgdr terminate --idle 10m`); put a pooler in front")),
    g.NO_DATABASE: ("the database does not exist", "fix dbname in the conninfo"),
    g.TIMEOUT: ("connection timed out", ("the server hangs or the network drops packets: "
                "check the host, its load and firewall")),
    g.READ_ONLY: ("the server is read-only", ("writes go to the primary: repoint clients "
                  "or promote a standby (`pgdr failover`)")),
    g.WRAPAROUND: ("not accepting commands to avoid wraparound data loss",
                   ("run VACUUM (FREEZE) in single-user mode on the oldest database; "
                    "end old transactions and drop stale slots/prepared transactions first")),
    g.OTHER: ("connection failed", "read the error and the server log"),
}


def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _r(value: Any) -> Any:
    return round(value, 3) if isinstance(value, float) else value


def _session_evidence(row: dict[str, Any]) -> dict[str, Any]:
    keys = ("pid", "usename", "datname", "application_name", "client_addr", "state",
            "wait_event_type", "wait_event", "query_s", "xact_s", "state_s", "query", "xmin_age")
    return {k: _r(row.get(k)) for k in keys if k in row}


def connectivity(facts: g.NodeFacts, expected_role: str) -> Finding:
    name = facts.node.name
    if not facts.reachable:
        cause = facts.cause or g.OTHER
        label, action = CAUSE_ACTIONS[cause]
        return Finding("connectivity", "critical", f"{label}: {facts.error}", name,
                       {"cause": cause, "error": facts.error}, action)
    inst = facts.instance
    evidence = {"role": facts.role, "connect_ms": round((facts.connect_s or 0) * 1000, 1)}
    max_age = inst.get("max_xid_age")
    if max_age is not None and max_age >= g.XID_WRAP_LIMIT - g.XID_STOP_MARGIN:
        label, action = CAUSE_ACTIONS[g.WRAPAROUND]
        return Finding("connectivity", "critical", label, name,
                       {**evidence, "cause": g.WRAPAROUND, "max_xid_age": max_age}, action)
    if expected_role == "primary" and (inst.get("in_recovery") or inst.get("read_only")):
        label, action = CAUSE_ACTIONS[g.READ_ONLY]
        return Finding("connectivity", "critical", f"configured primary is {label}", name,
                       {**evidence, "cause": g.READ_ONLY,
                        "in_recovery": inst.get("in_recovery")}, action)
    return Finding("connectivity", "ok", f"reachable, {facts.role}", name, evidence)


def connections(facts: g.NodeFacts, cfg: DiagnoseConfig) -> Finding:
    inst = facts.instance
    max_conn = int(inst["max_connections"])
    reserved = int(inst.get("superuser_reserved") or 0) + int(inst.get("reserved") or 0)
    available = max(1, max_conn - reserved)
    used = int(inst.get("client_connections") or 0)
    pct = 100.0 * used / available
    evidence = {"client_connections": used, "all_backends": inst.get("all_backends"),
                "by_state": inst.get("by_state") or {}, "max_connections": max_conn,
                "superuser_reserved_connections": inst.get("superuser_reserved"),
                "reserved_connections": inst.get("reserved"),
                "available_to_applications": available, "used_pct": round(pct, 1)}
    states = ", ".join(f"{k} {v}" for k, v in sorted((inst.get("by_state") or {}).items()))
    summary = f"{used}/{available} client connections ({pct:.0f}%): {states or 'none'}"
    if pct >= cfg.connections_critical_pct:
        return Finding("connections", "critical", summary, facts.node.name, evidence,
                       "new clients are about to be refused: terminate idle sessions "
                       "(`pgdr terminate --idle 10m`), fix the leak, add a pooler")
    if pct >= cfg.connections_warn_pct:
        return Finding("connections", "warning", summary, facts.node.name, evidence,
                       "check the pool sizes of the applications; terminate idle sessions")
    return Finding("connections", "ok", summary, facts.node.name, evidence)


def sessions(facts: g.NodeFacts, cfg: DiagnoseConfig) -> list[Finding]:
    name = facts.node.name
    idle_tx = [s for s in facts.sessions if (s.get("state") or "").startswith("idle in transaction")
               and (s.get("state_s") or 0) >= cfg.idle_in_transaction]
    long_q = [s for s in facts.sessions if s.get("state") == "active"
              and (s.get("query_s") or 0) >= cfg.long_query]
    long_x = [s for s in facts.sessions if (s.get("xact_s") or 0) >= cfg.long_transaction]
    out: list[Finding] = []
    limit = cfg.max_sessions_listed
    if idle_tx:
        oldest = max(s["state_s"] for s in idle_tx)
        out.append(Finding(
            "idle_in_transaction", "warning",
            f"{len(idle_tx)} session(s) idle in transaction over {_fmt_s(cfg.idle_in_transaction)}"
            f" (oldest {_fmt_s(oldest)}); they hold locks and stop vacuum",
            name, {"count": len(idle_tx), "threshold_s": cfg.idle_in_transaction,
                   "sessions": [_session_evidence(s) for s in idle_tx[:limit]]},
            f"`pgdr terminate --idle-in-transaction {_fmt_s(cfg.idle_in_transaction)}`; "
            "set idle_in_transaction_session_timeout; fix the application's transaction handling"))
    else:
        out.append(Finding("idle_in_transaction", "ok",
                           f"none over {_fmt_s(cfg.idle_in_transaction)}", name))
    if long_q:
        oldest = max(s["query_s"] for s in long_q)
        out.append(Finding(
            "long_queries", "warning",
            f"{len(long_q)} query(ies) running over {_fmt_s(cfg.long_query)} (longest {_fmt_s(oldest)})",
            name, {"count": len(long_q), "threshold_s": cfg.long_query,
                   "sessions": [_session_evidence(s) for s in long_q[:limit]]},
            f"check the plans (EXPLAIN); cancel with pg_cancel_backend or "
            f"`pgdr terminate --longer-than {_fmt_s(cfg.long_query)}`"))
    else:
        out.append(Finding("long_queries", "ok", f"none over {_fmt_s(cfg.long_query)}", name))
    if long_x:
        oldest = max(s["xact_s"] for s in long_x)
        out.append(Finding(
            "long_transactions", "warning",
            f"{len(long_x)} transaction(s) open over {_fmt_s(cfg.long_transaction)} "
            f"(oldest {_fmt_s(oldest)}); they hold back vacuum",
            name, {"count": len(long_x), "threshold_s": cfg.long_transaction,
                   "sessions": [_session_evidence(s) for s in long_x[:limit]]},
            "find out what the oldest transactions wait for; end them if the owner agrees"))
    else:
        out.append(Finding("long_transactions", "ok", f"none over {_fmt_s(cfg.long_transaction)}", name))
    return out


def blocking_chains(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Trees of who blocks whom, rooted at the sessions that block others but wait on nobody."""
    by_pid = {r["pid"]: r for r in rows}
    children: dict[int, list[int]] = {}
    for r in rows:
        for blocker in r.get("blocked_by") or []:
            children.setdefault(blocker, []).append(r["pid"])
    roots = [pid for pid in children if not (by_pid.get(pid, {}).get("blocked_by"))]
    if not roots and children:  # a cycle (deadlock about to be detected): start anywhere
        roots = [min(children)]

    def node(pid: int, seen: frozenset[int]) -> dict[str, Any]:
        row = by_pid.get(pid, {"pid": pid})
        item: dict[str, Any] = {k: _r(row.get(k)) for k in ("pid", "usename", "datname", "application_name", "state",
                                            "wait_event_type", "wait_event", "waiting_for", "query_s",
                                            "xact_s", "state_s", "query") if k in row}
        item["blocks"] = [node(c, seen | {pid}) for c in sorted(children.get(pid, [])) if c not in seen]
        return item

    return [node(pid, frozenset()) for pid in sorted(roots)]


def _depth(tree: dict[str, Any]) -> int:
    return 1 + max((_depth(c) for c in tree["blocks"]), default=0)


def _flatten(tree: dict[str, Any], depth: int = 0) -> list[str]:
    waits = f", waits {tree['waiting_for']}" if tree.get("waiting_for") else ""
    head = f"{'  ' * depth}{'└ ' if depth else ''}pid {tree['pid']} ({tree.get('state')}{waits})"
    lines = [f"{head}: {tree.get('query')}"]
    for child in tree["blocks"]:
        lines.extend(_flatten(child, depth + 1))
    return lines


def locks(facts: g.NodeFacts, cfg: DiagnoseConfig) -> Finding:
    name = facts.node.name
    waiting = [r for r in facts.locks if r.get("blocked_by")]
    if not waiting:
        return Finding("lock_waits", "ok", "no session waits on a lock", name)
    chains = blocking_chains(facts.locks)
    longest_wait = max((r.get("state_s") or 0) for r in waiting)
    depth = max((_depth(c) for c in chains), default=0)
    severity: Severity = "critical" if longest_wait >= cfg.lock_wait * 6 else (
        "warning" if longest_wait >= cfg.lock_wait else "info")
    roots = ", ".join(str(c["pid"]) for c in chains)
    return Finding(
        "lock_waits", severity,
        f"{len(waiting)} session(s) wait on locks (longest {_fmt_s(longest_wait)}, chain depth {depth}); "
        f"root blocker(s): pid {roots}",
        name, {"waiting": len(waiting), "longest_wait_s": round(longest_wait, 3), "depth": depth,
               "root_blockers": [c["pid"] for c in chains], "chains": chains,
               "text": [line for c in chains for line in _flatten(c)]},
        "look at what the root blocker runs; if it is idle in transaction or stuck, "
        f"`pgdr terminate --pid {chains[0]['pid'] if chains else 'N'}` (the waiters then proceed)")


def replication(facts: g.NodeFacts, config: Config, all_facts: list[g.NodeFacts]) -> list[Finding]:
    cfg = config.diagnose
    out: list[Finding] = []
    standby_facts = {f.node.name: f for f in all_facts}
    slots = {s["slot_name"]: s for s in facts.slots}
    others = [n for n in config.nodes if n.name != facts.node.name]
    # The cluster knows its standbys by slot, application_name or address (pg/standbys.py).
    matched = match_standbys(
        [r for r in facts.replication if r["application_name"] != config.archive.application_name],
        facts.slots,
        [(n, standby_facts[n.name].instance if n.name in standby_facts else None) for n in others])
    for standby in config.standbys:
        if standby.name == facts.node.name:
            continue
        rep = matched.get(standby.name)
        slot = slots.get(rep["slot_name"]) if rep and rep.get("slot_name") else slots.get(standby.name)
        ev: dict[str, Any] = {"standby": standby.name}
        if slot is not None:
            ev["slot"] = {k: slot.get(k) for k in ("slot_name", "active", "wal_status", "retained_bytes")}
        if rep is None:
            sf = standby_facts.get(standby.name)
            ev["standby_reachable"] = bool(sf and sf.reachable)
            if sf is not None and not sf.reachable:
                ev["standby_error"] = sf.error
                ev["cause"] = sf.cause
            out.append(Finding(
                "replication", "critical",
                f"standby {standby.name} is not streaming from {facts.node.name}"
                + (f" ({CAUSE_ACTIONS[sf.cause or g.OTHER][0]})" if sf is not None and not sf.reachable else "")
                + (f"; its slot retains {slot['retained_bytes']} bytes" if slot and slot.get("retained_bytes") is not None else ""),
                facts.node.name, ev,
                "start the standby and read its log; if it cannot catch up, rebuild it "
                "(`pgdr rejoin`), or drop its slot before the primary's disk fills"))
            continue
        ev.update({k: _r(rep.get(k)) for k in ("pid", "state", "sync_state", "client_addr", "sent_lag_bytes",
                                                "flush_lag_bytes", "replay_lag_bytes", "write_lag_s",
                                                "flush_lag_s", "replay_lag_s")})
        lag_s = rep.get("replay_lag_s") or 0.0
        lag_b = rep.get("replay_lag_bytes") or 0
        summary = (f"{standby.name}: {rep['state']} ({rep['sync_state']}), replay lag "
                   f"{lag_b} bytes / {lag_s:.1f}s")
        if rep["state"] != "streaming":
            out.append(Finding("replication", "warning", summary, facts.node.name, ev,
                               "the standby is catching up; watch that the lag shrinks"))
        elif lag_s > cfg.replication_lag or lag_b > cfg.replication_lag_bytes:
            out.append(Finding("replication", "warning", summary, facts.node.name, ev,
                               "check the standby's I/O and network; long queries on it "
                               "(hot_standby_feedback, max_standby_streaming_delay)"))
        else:
            out.append(Finding("replication", "ok", summary, facts.node.name, ev))
    claimed = {r.get("pid") for r in matched.values()}
    for rep in facts.replication:
        app = rep["application_name"]
        if rep.get("pid") not in claimed and app != config.archive.application_name:
            out.append(Finding("replication", "info",
                               f"unconfigured walsender {app!r}: {rep['state']}, replay lag "
                               f"{rep.get('replay_lag_bytes')} bytes", facts.node.name,
                               {k: _r(v) for k, v in rep.items()}))
    for slot in facts.slots:
        retained = slot.get("retained_bytes") or 0
        ev = {k: slot.get(k) for k in ("slot_name", "slot_type", "database", "active", "active_pid",
                                       "wal_status", "restart_lsn", "retained_bytes", "safe_wal_size")}
        if slot.get("wal_status") == "lost":
            out.append(Finding("replication_slots", "critical",
                               f"slot {slot['slot_name']} lost its WAL: its consumer cannot resume",
                               facts.node.name, ev, "rebuild the consumer, then drop the slot"))
        elif not slot.get("active") and retained > cfg.slot_retained_bytes:
            out.append(Finding("replication_slots", "critical",
                               f"inactive slot {slot['slot_name']} retains {retained} bytes of WAL",
                               facts.node.name, ev,
                               "start its consumer, or drop the slot "
                               f"(select pg_drop_replication_slot('{slot['slot_name']}')) before the disk fills"))
        elif not slot.get("active"):
            out.append(Finding("replication_slots", "warning",
                               f"slot {slot['slot_name']} is inactive (retains {retained} bytes)",
                               facts.node.name, ev, "start its consumer or drop the slot"))
        else:
            out.append(Finding("replication_slots", "ok",
                               f"slot {slot['slot_name']} active, retains {retained} bytes",
                               facts.node.name, ev))
    return out


def _segment_distance(a: str | None, b: str | None) -> int | None:
    """Segments from a to b (WAL file names of the same timeline, 16 MB segments assumed by name)."""
    if not a or not b or len(a) != 24 or len(b) != 24:
        return None
    try:
        log_a, seg_a = int(a[8:16], 16), int(a[16:24], 16)
        log_b, seg_b = int(b[8:16], 16), int(b[16:24], 16)
    except ValueError:
        return None
    per_log = 0x100000000 // (16 * 1024 * 1024)
    return (log_b * per_log + seg_b) - (log_a * per_log + seg_a)


def archiver(facts: g.NodeFacts, cfg: DiagnoseConfig, repo: Repository | None,
             app_name: str = "pgdr_archiver") -> list[Finding]:
    out: list[Finding] = []
    name = facts.node.name
    a = facts.archiver
    if a is not None:
        ev = {k: _r(v) for k, v in a.items()}
        ev["archive_command"] = (a.get("archive_command") or "")[:200]
        ev["segments_behind"] = _segment_distance(a.get("last_archived_wal"), a.get("current_wal"))
        failing = bool(a.get("failed_count")) and a.get("last_failed_time") is not None and (
            a.get("last_archived_time") is None or a["last_failed_time"] > a["last_archived_time"])
        if a.get("archive_mode") == "off":
            out.append(Finding("archive_command", "ok", "archive_mode is off (pgdr streams WAL itself)",
                               name, {"archive_mode": "off"}))
        elif failing:
            out.append(Finding(
                "archive_command", "critical",
                f"archive_command is failing: {a['failed_count']} failure(s), last {a['last_failed_wal']} "
                f"at {a['last_failed_time']}; {a.get('ready_count')} segment(s) waiting",
                name, ev, "run the archive_command by hand as the postgres user to see why; fix it before "
                "pg_wal fills the disk (do not delete files from pg_wal)"))
        elif (a.get("ready_count") or 0) > cfg.archive_ready_warn:
            out.append(Finding("archive_command", "warning",
                               f"{a['ready_count']} segment(s) wait to be archived", name, ev,
                               "archiving is slower than WAL generation: check the archive's storage"))
        else:
            out.append(Finding("archive_command", "ok",
                               f"archived {a.get('archived_count')} segment(s), {a.get('failed_count')} failure(s), "
                               f"{a.get('ready_count')} waiting", name, ev))
    if repo is not None:
        try:
            state = archiver_state_dict(repo)
        except (OSError, PgdrError) as exc:
            out.append(Finding("pgdr_archiver", "warning", f"cannot read the archiver state: {exc}", None))
            return out
        receiver = next((r for r in facts.replication if r["application_name"] == app_name), None)
        ev = {**state, "streaming": receiver is not None}
        if receiver is not None:
            ev.update(flush_lag_bytes=receiver.get("flush_lag_bytes"), flush_lag_s=_r(receiver.get("flush_lag_s")))
        if not state.get("running"):
            out.append(Finding("pgdr_archiver", "critical", "pgdr's WAL archiver is not running"
                               + (f"; last failure: {state['last_failure']}" if state.get("last_failure") else ""),
                               None, ev, "`pgdr archiver start`; until then PITR stops at the last archived segment"))
        elif receiver is None:
            out.append(Finding("pgdr_archiver", "warning", "pgdr's archiver runs but is not streaming"
                               + (f"; last failure: {state['last_failure']}" if state.get("last_failure") else ""),
                               None, ev, "`pgdr archiver status`; check the primary and the slot"))
        else:
            out.append(Finding("pgdr_archiver", "ok", f"streaming, {receiver.get('flush_lag_bytes')} bytes behind",
                               None, ev))
    return out


def databases(facts: g.NodeFacts, cfg: DiagnoseConfig) -> list[Finding]:
    name = facts.node.name
    out: list[Finding] = []
    rows = facts.databases
    # wraparound
    worst = max(rows, key=lambda r: r.get("xid_age") or 0, default=None)
    wrap = [{"datname": r["datname"], "xid_age": r["xid_age"], "mxid_age": r.get("mxid_age"),
             "xids_left": g.XID_WRAP_LIMIT - (r["xid_age"] or 0)} for r in rows]
    if worst is not None:
        age = worst["xid_age"] or 0
        summary = (f"oldest database {worst['datname']}: age(datfrozenxid) {age:,}, "
                   f"{g.XID_WRAP_LIMIT - age:,} XIDs to wraparound")
        ev = {"databases": wrap}
        action = ("VACUUM (FREEZE, VERBOSE) the oldest tables of that database; look for old "
                  "transactions, prepared transactions and stale replication slots holding xmin back")
        if age >= cfg.wraparound_critical_age:
            out.append(Finding("wraparound", "critical", summary, name, ev, action))
        elif age >= cfg.wraparound_warn_age:
            out.append(Finding("wraparound", "warning", summary, name, ev, action))
        else:
            out.append(Finding("wraparound", "ok", summary, name, ev))
    # checksum failures
    bad = [r for r in rows if r.get("checksum_failures")]
    if bad:
        out.append(Finding(
            "checksums", "critical",
            "checksum failures: " + ", ".join(f"{r['datname'] or '(shared)'} {r['checksum_failures']}" for r in bad),
            name, {"databases": [{"datname": r["datname"], "checksum_failures": r["checksum_failures"],
                                  "last_failure": r.get("checksum_last_failure")} for r in bad]},
            "storage is corrupting pages: fail over to a healthy standby, take no backup over the last "
            "good one, run `pg_amcheck` and restore the damaged relations (`pgdr verify`, `pgdr restore`)"))
    else:
        out.append(Finding("checksums", "ok", "no checksum failures recorded", name))
    sizes = {r["datname"]: r.get("size_bytes") for r in rows if r.get("datname")}
    total = sum(v for v in sizes.values() if v)
    out.append(Finding("database_sizes", "info", f"{len(sizes)} databases, {total:,} bytes in all",
                       name, {"sizes": sizes, "total_bytes": total}))
    return out


def log_signatures(facts: g.NodeFacts) -> Finding:
    name = facts.node.name
    info = facts.log
    if info is None or not info.get("readable"):
        return Finding("server_log", "info", f"server log not read: {(info or {}).get('reason', 'skipped')}",
                       name, info or {})
    if info["counts"]:
        return Finding("server_log", "critical",
                       "corruption signatures in the server log: "
                       + ", ".join(f"{k} ×{v}" for k, v in info["counts"].items()),
                       name, info,
                       "identify the relations named in the lines; run `pg_amcheck`; fail over or "
                       "restore the damaged relations from a verified backup")
    return Finding("server_log", "ok", f"no corruption signature in the last {info['scanned_bytes']:,} bytes "
                   f"of {info['path']}", name, {"path": info["path"], "scanned_bytes": info["scanned_bytes"]})


def analyze(config: Config, facts_list: list[g.NodeFacts], repo: Repository | None) -> list[Finding]:
    findings: list[Finding] = []
    for facts in facts_list:
        findings.append(connectivity(facts, facts.node.role))
    primaries = [f for f in facts_list if f.reachable and f.role == "primary"]
    if not primaries:
        refused = [f for f in facts_list if f.cause == g.AUTH_FAILED]
        findings.append(Finding("primary", "critical", "no writable primary reachable", None,
                                {"nodes": {f.node.name: f.role for f in facts_list}},
                                # a refused password is not a dead server: no failover advice
                                CAUSE_ACTIONS[g.AUTH_FAILED][1] if refused else
                                "start the primary or promote a standby (`pgdr failover`)"))
    elif len(primaries) > 1:
        findings.append(Finding("primary", "critical", "more than one writable primary: "
                                + ", ".join(p.node.name for p in primaries), None, {},
                                "split brain: fence all but one now"))
    for facts in facts_list:
        if not facts.reachable:
            continue
        for concern, err in facts.query_errors.items():
            findings.append(Finding("diagnose", "info", f"{concern} not gathered: {err}", facts.node.name))
        if facts.instance:
            findings.append(connections(facts, config.diagnose))
        findings.extend(sessions(facts, config.diagnose))
        findings.append(locks(facts, config.diagnose))
        if facts.role == "primary":
            findings.extend(replication(facts, config, facts_list))
            if is_logical_only(config):
                findings.append(Finding("pgdr_archiver", "ok", "not applicable (logical-only): "
                                        "no WAL archive, recovery is to the newest logical backup",
                                        facts.node.name))
            else:
                findings.extend(archiver(facts, config.diagnose, repo if facts is primaries[0] else None,
                                         config.archive.application_name))
            findings.extend(databases(facts, config.diagnose))
        else:
            findings.extend(f for f in databases(facts, config.diagnose) if f.concern == "checksums")
        findings.append(log_signatures(facts))
    if not primaries and repo is not None:
        try:
            state = archiver_state_dict(repo)
            findings.append(Finding("pgdr_archiver", "info" if state.get("running") else "warning",
                                    f"pgdr's archiver {'runs' if state.get('running') else 'is not running'}",
                                    None, state))
        except OSError:
            pass
    return findings


def diagnose(config: Config, repo: Repository | None = None, *, read_log: bool = True) -> DiagnoseReport:
    t0 = time.monotonic()
    facts = g.gather_all(config, read_log=read_log)
    findings = analyze(config, facts, repo)
    if repo is not None and config.redis:
        from pgdr.rdb.health import findings as redis_findings

        findings += redis_findings(config, repo)
    nodes = {f.node.name: {"role": f.role, "configured_role": f.node.role, "reachable": f.reachable,
                           "cause": f.cause, "error": f.error} for f in facts}
    return DiagnoseReport(config.cluster.name, datetime.now(UTC).isoformat(), time.monotonic() - t0,
                          findings, nodes)
