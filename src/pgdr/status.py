"""`pgdr status`: the runbooks' daily health check as data.

Primary reachable and its role; each standby's replay lag; the newest backup and
its age; how far the WAL archive trails the primary (bytes and seconds); gaps in
the archive; the archiver's last failure. Any 'fail' makes the command exit 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pgdr import forecast, proof
from pgdr.backup.archiver import archiver_state_dict
from pgdr.checks import Check, Status, worst
from pgdr.config import Config
from pgdr.errors import PgdrError
from pgdr.mode import is_logical_only
from pgdr.pg.connect import session
from pgdr.pg.lsn import parse_lsn, parse_segment_name
from pgdr.pg.probe import NodeState, probe_all
from pgdr.pg.standbys import match_standbys
from pgdr.repo import unfinished
from pgdr.repo.layout import Repository
from pgdr.repo.manifest import BackupManifest, scan_backups
from pgdr.repo.records import list_records, read_verification
from pgdr.repo.wal import WalArchive
from pgdr.restore.walcheck import check_archive

REPLICATION_SQL = """
select pid, application_name, host(client_addr) as client_addr, state, sync_state,
       pg_wal_lsn_diff(pg_current_wal_lsn(), flush_lsn)::bigint as flush_lag_bytes,
       pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint as replay_lag_bytes,
       extract(epoch from flush_lag)::float8 as flush_lag_s,
       extract(epoch from replay_lag)::float8 as replay_lag_s,
       flush_lsn::text as flush_lsn
from pg_stat_replication
"""

SLOT_SQL = """
select slot_name, active, active_pid, restart_lsn::text as restart_lsn, wal_status,
       pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint as retained_bytes
from pg_replication_slots where slot_type = 'physical'
"""


@dataclass
class StatusReport:
    cluster: str
    nodes: list[dict[str, Any]]
    backups: dict[str, Any]
    archive: dict[str, Any]
    checks: list[Check] = field(default_factory=list)
    forecast: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return worst(self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {"cluster": self.cluster, "status": self.status, "nodes": self.nodes,
                "backups": self.backups, "archive": self.archive,
                "checks": [c.as_dict() for c in self.checks], "forecast": self.forecast}


def _fmt_age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def gather_status(config: Config, repo: Repository) -> StatusReport:
    states = probe_all(config)
    primaries = [s for s in states if s.role == "primary"]
    checks: list[Check] = []
    replication: dict[str, dict[str, Any]] = {}   # configured standby -> its walsender
    archiver_sender: dict[str, Any] | None = None
    slots: dict[str, dict[str, Any]] = {}
    primary: NodeState | None = primaries[0] if len(primaries) == 1 else None

    if not primaries:
        configured = next(s for s in states if s.node.name == config.configured_primary.name)
        checks.append(Check("primary", "fail", f"no primary reachable ({configured.node.name}: "
                            f"{configured.error or configured.role})",
                            hint=configured.hint if configured.auth_failed
                            else "start the primary or fail over: `pgdr failover`"))
    elif len(primaries) > 1:
        checks.append(Check("primary", "fail", "more than one writable primary: "
                            + ", ".join(p.node.name for p in primaries),
                            hint="split brain: fence all but one now"))
    else:
        assert primary is not None and primary.facts is not None
        checks.append(Check("primary", "ok", f"{primary.node.name} is primary on timeline "
                            f"{primary.facts['checkpoint_timeline']}",
                            evidence={"node": primary.node.name,
                                      "current_lsn": primary.facts["current_lsn"]}))
        try:
            with session(primary.node.conninfo) as conn:
                senders = [dict(r) for r in conn.execute(REPLICATION_SQL)]
                slots = {r["slot_name"]: dict(r) for r in conn.execute(SLOT_SQL)}
            archiver_sender = next((r for r in senders
                                    if r["application_name"] == config.archive.application_name), None)
            replication = match_standbys(
                [r for r in senders if r is not archiver_sender], list(slots.values()),
                [(s.node, s.facts) for s in states if s is not primary])
        except PgdrError as exc:
            checks.append(Check("replication", "fail", exc.message))

    nodes = [_node_row(s, primary, replication) for s in states]
    for state, row in zip(states, nodes, strict=True):
        if primary is not None and state is not primary:
            checks.append(_standby_check(config, state, row))

    logical_only = is_logical_only(config)
    backups_info, backup_checks, backups = _backup_status(config, repo, "logical" if logical_only else "physical")
    checks.extend(backup_checks)
    if logical_only:
        archive_info: dict[str, Any] = {"applicable": False}
        checks.append(Check("archive", "ok", "not applicable (logical-only): no WAL archive, "
                            "recovery is to the newest logical backup"))
    else:
        archive_info, archive_checks = _archive_status(config, repo, primary, archiver_sender, slots, backups)
        checks.extend(archive_checks)
    drill = _drill_status(repo)
    if drill is not None:
        checks.append(drill)
    checks.extend(proof.checks(config, repo))
    fc = forecast.forecast(config, repo, primary.node.conninfo if primary is not None else None)
    fc_check = forecast.check(fc)
    if fc_check is not None:
        checks.append(fc_check)
    checks.extend(_interrupted_restores(repo))
    from pgdr.migrate.visibility import status_check

    migration = status_check(repo)
    if migration is not None:
        checks.append(migration)
    if config.redis:
        from pgdr.rdb.health import status_checks

        checks.extend(status_checks(config, repo))
    return StatusReport(config.cluster.name, nodes, backups_info, archive_info, checks, fc.as_dict())


def _node_row(state: NodeState, primary: NodeState | None,
              replication: dict[str, dict[str, Any]]) -> dict[str, Any]:
    row: dict[str, Any] = {"name": state.node.name, "configured_role": state.node.role,
                           "role": state.role, "error": state.error}
    facts = state.facts or {}
    if state.reachable:
        row["timeline"] = facts.get("checkpoint_timeline")
        row["lsn"] = facts.get("current_lsn") or facts.get("replay_lsn")
    if state.role == "standby" and primary is not None and primary.facts:
        current = parse_lsn(primary.facts["current_lsn"])
        replay = facts.get("replay_lsn")
        row["replay_lag_bytes"] = max(0, current - parse_lsn(replay)) if replay else None
        rep = replication.get(state.node.name, {})
        row["streaming"] = rep.get("state") == "streaming"
        row["sync_state"] = rep.get("sync_state")
        if row["replay_lag_bytes"] == 0:
            # caught up: on an idle primary the last replayed commit is old, not late
            row["replay_lag_s"] = 0.0
        elif rep.get("replay_lag_s") is not None:
            row["replay_lag_s"] = round(float(rep["replay_lag_s"]), 3)
        elif facts.get("last_replay_time") is not None:
            row["replay_lag_s"] = round((facts["now"] - facts["last_replay_time"]).total_seconds(), 3)
        else:
            row["replay_lag_s"] = 0.0 if row["replay_lag_bytes"] == 0 else None
    return row


def _standby_check(config: Config, state: NodeState, row: dict[str, Any]) -> Check:
    name = f"standby {state.node.name}"
    if not state.reachable:
        return Check(name, "fail", f"unreachable: {state.error}",
                     hint=state.hint if state.auth_failed else "start it, or rebuild it")
    if state.role == "primary":
        return Check(name, "fail", "is writable too (split brain)")
    if not row.get("streaming"):
        return Check(name, "fail", "not streaming from the primary", evidence=row,
                     hint="check its log and primary_conninfo")
    lag = row.get("replay_lag_s")
    if lag is not None and lag > config.status.max_standby_lag:
        return Check(name, "warn", f"replay lag {lag:.1f}s over {config.status.max_standby_lag:.0f}s",
                     evidence=row)
    return Check(name, "ok", f"streaming, replay lag {row.get('replay_lag_bytes', 0)} bytes"
                 f" / {lag if lag is not None else '?'}s", evidence=row)


def _backup_status(config: Config, repo: Repository, required: str = "physical"
                   ) -> tuple[dict[str, Any], list[Check], list[BackupManifest]]:
    """The newest backup of the required kind (logical in logical-only mode) and its age;
    returns the physical backups for the archive checks."""
    backups, damaged = scan_backups(repo)
    physical = [b for b in backups if b.kind == "physical"]
    logical = [b for b in backups if b.kind == "logical"]
    info: dict[str, Any] = {"count": len(backups), "damaged": [d.as_dict() for d in damaged]}
    checks = []
    if damaged:
        # A backup whose pgdr.json cannot be read never vanishes: it is named and fails status.
        checks.append(Check("damaged backups", "fail",
                            f"{len(damaged)} backup(s) with an unreadable or altered pgdr.json: "
                            + "; ".join(d.problem for d in damaged[:3]),
                            evidence={"damaged": info["damaged"]},
                            hint="restore pgdr.json from a copy, or remove the folder after review"))
    for kind, group in (("physical", physical), ("logical", logical)):
        if group:
            newest = group[-1]
            info[f"newest_{kind}"] = {"id": newest.id, "stop_time": newest.stop_time.isoformat(),
                                      "age_s": round(newest.age_seconds, 1),
                                      "bytes": newest.bytes_on_disk}
    wanted = physical if required == "physical" else logical
    if not wanted:
        checks.append(Check("backup", "fail", f"no {required} backup in the repository",
                            hint="run `pgdr backup`" if required == "physical" else "run `pgdr backup --logical`"))
    else:
        newest = wanted[-1]
        status: Status = "warn" if newest.age_seconds > config.status.max_backup_age else "ok"
        checks.append(Check("backup", status, f"newest {newest.id} ({required}), "
                            f"{_fmt_age(newest.age_seconds)} old", evidence=info[f"newest_{required}"]))
    if backups:
        checks.append(_verified_check(config, repo, wanted if required == "logical" and wanted else backups,
                                      info))
    return info, checks, physical


def _verified_check(config: Config, repo: Repository, backups: list[BackupManifest],
                    info: dict[str, Any]) -> Check:
    """The newest backup that `pgdr verify` proved restorable, and how old it is."""
    newest = backups[-1]
    newest_record = read_verification(repo, newest.id)
    for backup in reversed(backups):
        record = read_verification(repo, backup.id)
        if record and record.get("passed"):
            info["newest_verified"] = {"id": backup.id, "kind": backup.kind,
                                       "age_s": round(backup.age_seconds, 1),
                                       "verified_at": record.get("finished_at")}
            summary = (f"newest verified backup {backup.id} ({backup.display_kind}), "
                       f"{_fmt_age(backup.age_seconds)} old")
            if newest_record is not None and not newest_record.get("passed"):
                return Check("verified backup", "warn", f"newest backup {newest.id} FAILED verification; "
                             + summary, evidence=info["newest_verified"],
                             hint=f"see {repo.backups_dir / newest.id / 'verify.json'}")
            status: Status = "warn" if backup.age_seconds > config.status.max_backup_age else "ok"
            return Check("verified backup", status, summary, evidence=info["newest_verified"],
                         hint="run `pgdr verify` after each backup" if status != "ok" else None)
    failed = newest_record is not None
    return Check("verified backup", "warn",
                 f"newest backup {newest.id} FAILED verification, none verified" if failed
                 else "no backup has been verified", hint="run `pgdr verify latest`")


def _archive_status(config: Config, repo: Repository, primary: NodeState | None,
                    receiver: dict[str, Any] | None, slots: dict[str, dict[str, Any]],
                    physical: list[BackupManifest]) -> tuple[dict[str, Any], list[Check]]:
    archive = WalArchive(repo)
    seg_size = repo.wal_segment_size
    # Each backup carries the WAL of its own start..stop range (pg_wal.tar), so the
    # archive must hold everything from the oldest backup's stop segment onwards, on the
    # timeline path recovery follows (a segment on another timeline does not count).
    needed_from = min((parse_lsn(b.stop_lsn) // seg_size for b in physical), default=None)
    if repo.store is not None:  # the bucket's listing: nothing fetched, no segment read
        from pgdr.repo.remote import check_listing

        found, segments = check_listing(repo, needed_from if needed_from is not None else 0)
    else:
        # Finished segments waiting in incoming/ for the archiver count as archived.
        segments = sorted(set(archive.segments()) | set(archive.waiting()))
        found = check_archive(repo, needed_from if needed_from is not None else 0, cached=True)
    state = archiver_state_dict(repo)
    info: dict[str, Any] = {"segments": len(segments), "archiver": state}
    checks: list[Check] = []
    if segments:
        info["oldest"] = segments[0].name(seg_size)
        info["newest"] = segments[-1].name(seg_size)
    info["timeline"] = found.timeline
    info["gaps"] = found.gaps
    info["damaged"] = found.damaged
    if found.missing or found.damaged:
        # Damage or a gap after the newest backup means no recovery to now: fail. Only
        # before it, PITR into that older window is impossible but later points work: warn.
        newest_stop = max((parse_lsn(b.stop_lsn) // seg_size for b in physical), default=None)
        bad = [*found.missing, *found.damaged]
        names = [parse_segment_name(n, seg_size) for n in bad]
        blocking = newest_stop is None or any(n is None or n.segno >= newest_stop for n in names)
        checks.append(Check("archive gaps", "fail" if blocking else "warn",
                            found.summary()
                            + ("" if blocking else "; the newest backup is past it, so PITR to later points works"),
                            evidence=found.as_dict(),
                            hint="PITR cannot cross it: take a new base backup now (`pgdr backup`)"
                            if blocking else "PITR to times inside that window is impossible"))
    else:
        checks.append(Check("archive gaps", "ok", f"{len(segments)} segments; " + found.summary()))

    slot = slots.get(config.archive.slot)
    if primary is not None and primary.facts is not None:
        if receiver is not None and receiver.get("flush_lag_bytes") is None:
            # The row is there but its columns are NULL: this role may not see them.
            info.update(lag_bytes=None, lag_s=None, streaming=None)
            checks.append(Check("archive lag", "fail", "unknown: pg_stat_replication hides the archiver's "
                                "positions from this role", evidence={"application_name": receiver["application_name"]},
                                hint="GRANT pg_monitor TO the role in the primary's conninfo"))
        elif receiver is not None:
            lag_bytes = int(receiver["flush_lag_bytes"])
            lag_s = receiver["flush_lag_s"]
            # flush_lag is NULL once an idle archiver has caught up: then it is 0, else unknown
            lag_s = float(lag_s) if lag_s is not None else (0.0 if lag_bytes == 0 else None)
            info.update(lag_bytes=lag_bytes, lag_s=round(lag_s, 3) if lag_s is not None else None,
                        streaming=receiver.get("state") == "streaming")
            status: Status = "ok" if lag_s is None or lag_s <= config.archive.max_lag else "warn"
            checks.append(Check("archive lag", status, f"{lag_bytes} bytes, "
                                + (f"{lag_s:.2f}s" if lag_s is not None else "? s") + " behind the primary",
                                evidence={"lag_bytes": lag_bytes, "lag_s": lag_s}))
        else:
            retained = slot["retained_bytes"] if slot else None
            info.update(lag_bytes=retained, lag_s=None, streaming=False)
            checks.append(Check("archive lag", "fail", "the archiver is not streaming from the primary"
                                + (f" ({retained} bytes waiting in slot {config.archive.slot})" if slot else ""),
                                evidence={"slot": slot, "last_failure": state.get("last_failure")},
                                hint="start it: `pgdr archiver start`"))
    if state.get("problem"):
        checks.append(Check("archiver", "fail", f"archiving is blocked: {state['problem']}",
                            evidence={"problem": state["problem"], "since": state.get("last_failure_at")},
                            hint="free space in the repository; the archiver resumes by itself"
                            if "disk full" in state["problem"] else "see repo/archiver/archiver.log"))
    if state.get("last_failure"):
        checks.append(Check("archiver failures", "warn" if state.get("running") else "fail",
                            f"{state['failures']} failure(s), last at {state['last_failure_at']}: "
                            f"{state['last_failure']}", evidence={"failures": state["failures"]}))
    info["checked_at"] = datetime.now(UTC).isoformat()
    return info, checks


def _interrupted_restores(repo: Repository) -> list[Check]:
    """A restore whose pgdr was killed left an incomplete data directory behind."""
    return [Check("restore", "warn", f"interrupted restore: {r['data_dir']} is incomplete "
                  f"(pgdr pid {r['owner'].get('pid')} died at some point after {r['owner'].get('at')})",
                  evidence={"data_dir": r["data_dir"], "backup_id": r.get("backup_id")},
                  hint=f"remove {r['data_dir']} and restore again")
            for r in unfinished.interrupted_restores(repo)]


def _drill_status(repo: Repository) -> Check | None:
    drills = list_records(repo, "drill")
    if not drills:
        return None
    last = drills[-1]
    failed = [s["name"] for s in last.get("scenarios", []) if not s.get("passed")]
    summary = (f"last drill {last['id'][:15]}: " + ("all passed" if not failed else f"FAILED: {', '.join(failed)}")
               + "; " + ", ".join(f"{s['name']} RTO {s.get('rto_s')}s" for s in last.get("scenarios", [])))
    return Check("last drill", "ok" if not failed else "warn", summary,
                 evidence={"id": last["id"], "failed": failed}, hint="`pgdr report latest`" if failed else None)
