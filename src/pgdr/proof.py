"""Proof that recovery works, and how old that proof is: the runbooks' weekly restore test
and quarterly drill as facts read from the repository's records.

- the newest successful verification (any backup's verify.json that passed), by when it
  finished, and every verification's result;
- the newest drill whose scenarios all passed, by when it ran;
- the last failover, switchover and cutover: measured RTO and RPO.

`status` fails when a proof is older than status.max_verify_age / max_drill_age;
/metrics exports the same numbers; `serve --schedule` runs the jobs that renew them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pgdr.checks import Check
from pgdr.config import Config
from pgdr.errors import PgdrError
from pgdr.repo.layout import Repository
from pgdr.repo.manifest import list_backups
from pgdr.repo.records import list_records, read_verification

OPERATIONS = ("failover", "switchover", "cutover")


def _when(text: object) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def record_time(record: dict[str, Any]) -> datetime | None:
    """When a record was written: its id starts with the UTC time save_record stamped."""
    stamp = str(record.get("id", ""))[:22]
    try:
        return datetime.strptime(stamp, "%Y%m%dT%H%M%S%f").replace(tzinfo=UTC)
    except ValueError:
        return _when(record.get("started_at"))


@dataclass
class Verification:
    backup_id: str
    kind: str
    passed: bool
    finished_at: datetime


def verifications(repo: Repository) -> list[Verification]:
    """Every backup's latest verification result, oldest backup first."""
    out = []
    try:
        backups = list_backups(repo)
    except PgdrError:
        return []
    for backup in backups:
        record = read_verification(repo, backup.id)
        when = _when(record.get("finished_at")) if record else None
        if record is not None and when is not None:
            out.append(Verification(backup.id, backup.kind, bool(record.get("passed")), when))
    return out


def _age(when: datetime | None) -> float | None:
    return None if when is None else max(0.0, (datetime.now(UTC) - when).total_seconds())


def verify_age(repo: Repository) -> tuple[float | None, Verification | None]:
    """Seconds since the newest successful verification finished (None: never)."""
    passed = [v for v in verifications(repo) if v.passed]
    newest = max(passed, key=lambda v: v.finished_at, default=None)
    return _age(newest.finished_at if newest else None), newest


def drill_age(repo: Repository) -> tuple[float | None, dict[str, Any] | None]:
    """Seconds since the newest drill whose scenarios all passed (None: never)."""
    passed = [r for r in list_records(repo, "drill") if r.get("passed")]
    newest = passed[-1] if passed else None
    return _age(record_time(newest) if newest else None), newest


def last_operations(repo: Repository) -> dict[str, dict[str, Any]]:
    """The last completed failover / switchover / cutover: RTO seconds, RPO (bytes, commits)."""
    out: dict[str, dict[str, Any]] = {}
    for kind in OPERATIONS:
        done = [r for r in list_records(repo, kind) if r.get("rto_seconds") is not None]
        if done:
            last = done[-1]
            rpo = last.get("rpo") or {}
            out[kind] = {"id": last.get("id"), "rto_seconds": last.get("rto_seconds"),
                         "rpo_known": bool(rpo.get("known")), "rpo_bytes": rpo.get("bytes"),
                         "rpo_commits": rpo.get("commits")}
    return out


def _fmt_days(seconds: float) -> str:
    return f"{seconds / 86400:.1f} days" if seconds >= 86400 else f"{seconds / 3600:.1f} h"


def checks(config: Config, repo: Repository) -> list[Check]:
    """status: a proof older than its limit fails. No proof at all is left to the existing
    'verified backup' and 'last drill' checks (a new cluster is not failing)."""
    out = []
    age, newest = verify_age(repo)
    limit = config.status.max_verify_age
    if age is not None and newest is not None:
        evidence = {"age_s": round(age, 1), "backup_id": newest.backup_id, "limit_s": limit}
        if age > limit:
            out.append(Check("verification age", "fail", f"the newest successful verification ran "
                             f"{_fmt_days(age)} ago (limit {_fmt_days(limit)})", evidence,
                             hint="run `pgdr verify latest`, or schedule it: [[schedule]] job = \"verify\""))
        else:
            out.append(Check("verification age", "ok", f"newest successful verification {_fmt_days(age)} "
                             f"ago ({newest.backup_id})", evidence))
    age, drill = drill_age(repo)
    limit = config.status.max_drill_age
    if age is not None and drill is not None:
        evidence = {"age_s": round(age, 1), "id": drill.get("id"), "limit_s": limit}
        if age > limit:
            out.append(Check("drill age", "fail", f"the last passed drill ran {_fmt_days(age)} ago "
                             f"(limit {_fmt_days(limit)})", evidence,
                             hint="run `pgdr drill`, or schedule it: [[schedule]] job = \"drill\""))
        else:
            out.append(Check("drill age", "ok", f"last passed drill {_fmt_days(age)} ago", evidence))
    return out
