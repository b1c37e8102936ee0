"""RTO forecast: how long a full restore and a PITR to now would take today, from rates this
cluster's own recoveries measured — before the incident, not during it.

The rates are read from records pgdr already keeps (nothing is estimated from elsewhere):
- restore throughput: each passed verification of a physical backup (verify.json, written
  by `pgdr verify`, scheduled verifications and the drill's backup-validation): the
  backup's restored size (bytes_logical) over the phases a real restore has too —
  "extract" and "restore" (start-up and recovery to consistency); the checks that only
  a verification runs are left out. The newest verification is used.
- WAL replay throughput: each successful `pgdr restore` record, the WAL it replayed (the
  LSN it reached minus its backup's stop LSN) over its prefetch + recovery phases
  (start-up included). The newest restore that replayed at least MIN_REPLAY_BYTES is
  used, else the newest (a small replay is mostly start-up: that errs on the slow side).

Forecasts, for the database's current size and the WAL written since the newest backup:
full restore = size / restore rate; PITR to now = full restore + WAL / replay rate. Each
is compared with its [drill] target (full_restore_rto, pitr_rto); `status` fails when a
forecast exceeds its target. A forecast with no measured rate is reported unknown.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg

from pgdr.checks import Check, Status
from pgdr.config import Config
from pgdr.errors import PgdrError
from pgdr.pg.connect import session
from pgdr.pg.lsn import parse_lsn
from pgdr.repo.layout import Repository
from pgdr.repo.manifest import BackupManifest, list_backups
from pgdr.repo.records import list_records, read_verification

MIN_REPLAY_BYTES = 16 * 1024 * 1024

SIZE_SQL = """
select (select sum(pg_database_size(oid)) from pg_database where datallowconn)::bigint as db_bytes,
       case when pg_is_in_recovery() then pg_last_wal_replay_lsn() else pg_current_wal_lsn() end::text as lsn
"""


@dataclass
class Rate:
    bytes_per_s: float
    bytes: int
    seconds: float
    source: str


@dataclass
class Forecast:
    db_bytes: int | None = None
    db_bytes_source: str = ""
    wal_bytes: int | None = None
    restore_rate: Rate | None = None
    replay_rate: Rate | None = None
    full_restore_s: float | None = None
    pitr_s: float | None = None
    full_restore_target_s: float = 0.0
    pitr_target_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("full_restore_s", "pitr_s"):
            out[key] = None if out[key] is None else round(out[key], 1)
        return out


def restore_rate(repo: Repository, backups: list[BackupManifest]) -> Rate | None:
    for backup in reversed([b for b in backups if b.kind == "physical"]):
        record = read_verification(repo, backup.id)
        if not record or not record.get("passed"):
            continue
        phases = record.get("phases") or {}
        seconds = float(phases.get("extract") or 0.0) + float(phases.get("restore") or 0.0)
        if seconds > 0 and backup.bytes_logical > 0:
            return Rate(backup.bytes_logical / seconds, backup.bytes_logical, seconds,
                        f"verification of {backup.id} ({record.get('finished_at')})")
    return None


def replay_rate(repo: Repository, backups: list[BackupManifest]) -> Rate | None:
    stops = {b.id: parse_lsn(b.stop_lsn) for b in backups}
    found: list[Rate] = []
    for record in list_records(repo, "restore"):
        reached = (record.get("reached") or {}).get("lsn")
        stop = stops.get(str(record.get("backup_id")))
        phases = record.get("phases") or {}
        seconds = float(phases.get("recovery") or 0.0) + float(phases.get("prefetch") or 0.0)
        if not record.get("passed") or not reached or stop is None or seconds <= 0:
            continue
        replayed = parse_lsn(str(reached)) - stop
        if replayed > 0:
            found.append(Rate(replayed / seconds, replayed, seconds, f"restore {record.get('id')}"))
    big = [r for r in found if r.bytes >= MIN_REPLAY_BYTES]
    chosen = big or found
    return chosen[-1] if chosen else None


def forecast(config: Config, repo: Repository, primary_conninfo: str | None) -> Forecast:
    out = Forecast(full_restore_target_s=config.drill.full_restore_rto, pitr_target_s=config.drill.pitr_rto)
    try:
        backups = list_backups(repo)
    except PgdrError as exc:
        out.notes.append(f"repository unreadable: {exc.message}")
        return out
    physical = [b for b in backups if b.kind == "physical"]
    out.restore_rate, out.replay_rate = restore_rate(repo, backups), replay_rate(repo, backups)
    lsn = None
    if primary_conninfo is not None:
        try:
            with session(primary_conninfo, timeout=3) as conn:
                row = conn.execute(SIZE_SQL).fetchone()
            if row is not None:
                out.db_bytes, out.db_bytes_source, lsn = int(row["db_bytes"]), "the primary", str(row["lsn"])
        except (PgdrError, psycopg.Error) as exc:
            out.notes.append(f"primary not asked: {getattr(exc, 'message', exc)}")
    if out.db_bytes is None and physical:
        out.db_bytes, out.db_bytes_source = physical[-1].bytes_logical, f"backup {physical[-1].id}"
    if lsn is not None and physical:
        out.wal_bytes = max(0, parse_lsn(lsn) - parse_lsn(physical[-1].stop_lsn))
    if out.db_bytes is not None and out.restore_rate is not None:
        out.full_restore_s = out.db_bytes / out.restore_rate.bytes_per_s
        if out.wal_bytes is not None and out.replay_rate is not None:
            out.pitr_s = out.full_restore_s + out.wal_bytes / out.replay_rate.bytes_per_s
    if out.restore_rate is None:
        out.notes.append("no restore measured yet: run `pgdr verify latest`")
    if out.replay_rate is None:
        out.notes.append("no WAL replay measured yet: run a `pgdr restore` (or a drill)")
    return out


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def check(fc: Forecast) -> Check | None:
    """status: fail when a forecast exceeds its [drill] target; nothing when nothing is measured."""
    if fc.full_restore_s is None:
        return None
    over = []
    if fc.full_restore_s > fc.full_restore_target_s:
        over.append(f"full restore {fc.full_restore_s:.0f}s > target {fc.full_restore_target_s:.0f}s")
    if fc.pitr_s is not None and fc.pitr_s > fc.pitr_target_s:
        over.append(f"PITR to now {fc.pitr_s:.0f}s > target {fc.pitr_target_s:.0f}s")
    pitr = f"PITR to now {fc.pitr_s:.0f}s" if fc.pitr_s is not None else "PITR unknown (no replay measured)"
    rate = fc.restore_rate
    summary = (f"full restore {fc.full_restore_s:.0f}s, {pitr} for {_mb(fc.db_bytes or 0)}"
               + (f" + {_mb(fc.wal_bytes)} of WAL" if fc.wal_bytes is not None else "")
               + (f" at {_mb(rate.bytes_per_s)}/s restore" if rate else ""))
    status: Status = "fail" if over else "ok"
    return Check("rto forecast", status, ("OVER TARGET: " + "; ".join(over) + " — " if over else "") + summary,
                 fc.as_dict(), hint="faster storage, parallel restore, or more frequent backups (less WAL "
                 "to replay)" if over else None)
