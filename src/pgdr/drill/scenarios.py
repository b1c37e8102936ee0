"""The drill scenarios. Each builds its own throwaway sandbox, injects a real fault,
recovers with pgdr's own commands and returns measured numbers.

A scenario passes only when the recovery really worked (data checked) AND the
measured RTO/RPO are within the target; the reason says which part failed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg

from pgdr.backup.physical import take_physical_backup
from pgdr.config import Config, load_config
from pgdr.diagnose import terminate as term
from pgdr.diagnose.analyze import diagnose
from pgdr.drill.model import ScenarioResult, Target
from pgdr.drill.probe import any_primary_conninfo, missing_rows, wait_writable
from pgdr.errors import PgdrError
from pgdr.failover.failover import run_failover
from pgdr.failover.rejoin import run_rejoin
from pgdr.failover.switchover import run_switchover
from pgdr.pg.conninfo import with_params
from pgdr.pg.programs import Programs
from pgdr.repo.layout import Repository
from pgdr.repo.manifest import list_backups
from pgdr.restore.verify import verify_backup
from pgdr.runbook.timeline import Timeline
from pgdr.sandbox import sandbox as sb
from pgdr.sandbox.workload import Writer
from pgdr.server.health import check_node


@dataclass
class DrillTargets:
    failover: Target
    pitr: Target
    full_restore: Target


@dataclass
class DrillEnv:
    base: Path
    programs: Programs
    targets: DrillTargets
    synchronous: bool = True
    # Test hook: break the recovery on purpose, to prove a drill fails when recovery fails.
    sabotage: frozenset[str] = frozenset()
    # A configured cluster: backup-validation proves ITS newest backup on a restored copy,
    # and the scenarios that inject faults run on copies of its data (drill/copy.py) —
    # on throwaway sample sandboxes only with sample_data.
    cluster: tuple[Config, Repository] | None = None
    sample_data: bool = False
    # set by sandbox(): what the current scenario runs on, and its size
    data_bytes: int | None = None
    data_on: str | None = None

    @contextmanager
    def sandbox(self, name: str, standbys: int = 1, sync: bool = False) -> Iterator[tuple[sb.Sandbox, Config, Repository]]:
        from pgdr.drill import copy

        root = self.base / name
        if sb.load_sandbox(root) is not None:
            # left by a drill that failed while building it: sb.up would start it again
            # as it is; a scenario always starts from a new one
            sb.down(root, self.programs, purge=True)
        on_copy = self.cluster is not None and not self.sample_data
        try:
            if on_copy:
                assert self.cluster is not None
                cluster_config, cluster_repo = self.cluster
                backup = copy.newest_verified(cluster_repo)
                self.data_on = copy.copy_note(backup, cluster_config.cluster.name)
                sandbox = sb.up(root, self.programs, standbys=standbys, sync=sync,
                                primary_from=copy.primary_from_backup(cluster_config, cluster_repo, backup))
            else:
                self.data_on = "a throwaway sandbox with sample data"
                sandbox = sb.up(root, self.programs, standbys=standbys, sync=sync)
        except BaseException:
            if sb.load_sandbox(root) is not None:
                sb.down(root, self.programs, purge=True)
            raise
        try:
            self.data_bytes = copy.data_bytes(sandbox.conninfo(sandbox.primary, "postgres"), copy=on_copy)
            config = load_config(sandbox.config_path)
            yield sandbox, config, Repository(config.repository.path)
        finally:
            sb.down(root, self.programs, purge=True)


Scenario = Callable[[DrillEnv, ScenarioResult], None]


def backup_validation(env: DrillEnv, result: ScenarioResult) -> None:
    """Backup, verify, and the runbooks' checklist: size, restorable, schema present, counts."""
    result.target = env.targets.full_restore
    result.rpo_unit = "seconds"
    if env.cluster is not None:
        config, repo = env.cluster
        result.evidence["on"] = f"cluster {config.cluster.name}: its newest backup, restored into a scratch copy"
        result.data_bytes = next((b.bytes_logical for b in reversed(list_backups(repo)) if b.kind == "physical"),
                                 None)
        _validate(env, result, config, repo, take=False)
        return
    with env.sandbox("backup-validation", standbys=0) as (sandbox, config, repo):
        Writer(sandbox.conninfo(sandbox.primary, "postgres")).run_for(1.0)
        result.evidence["on"] = "a throwaway sandbox"
        _validate(env, result, config, repo, take=True)


def _validate(env: DrillEnv, result: ScenarioResult, config: Config, repo: Repository, take: bool) -> None:
    from pgdr.repo.manifest import find_backup

    timeline = Timeline()
    if take:
        with timeline.step("backup") as step:
            backup = take_physical_backup(config, env.programs, repo).manifest
            step.evidence.update(id=backup.id, bytes=backup.bytes_on_disk)
    else:
        backup = next((b for b in reversed(list_backups(repo)) if b.kind == "physical"), None) or \
            find_backup(repo, "latest")
    with timeline.step("verify (restore into scratch and check)") as step:
        verified = verify_backup(config, env.programs, repo, backup.id)
        step.evidence.update(passed=verified.passed, failed=[c.name for c in verified.failed])
    checks = {
        "size": backup.bytes_on_disk > 0,
        "restorable": verified.passed,
        "schema present": bool(backup.relations) if backup.kind == "physical" else bool(backup.databases),
        "counts": all(c.check.status == "ok" for c in verified.checks if "count" in c.check.name),
    }
    result.evidence.update(checklist=checks, backup=backup.id)
    result.rto_s = round(verified.restore_s or timeline.elapsed, 3)
    result.rpo = round(backup.age_seconds, 1)
    result.timeline = timeline.as_list()
    failed = [k for k, ok in checks.items() if not ok]
    result.passed = not failed and result.within_target()
    result.reason = ("checklist passed" if not failed else f"checklist failed: {', '.join(failed)}") + \
        f" for backup {backup.id}" + ("" if result.within_target() else "; the backup is older than the RPO target")


def primary_crash(env: DrillEnv, result: ScenarioResult) -> None:
    """SIGKILL the primary under a writer, fail over, count lost commits, rejoin."""
    result.target = env.targets.failover
    timeline = Timeline()
    with env.sandbox("primary-crash", standbys=1, sync=env.synchronous) as (sandbox, config, repo):
        client = any_primary_conninfo(sandbox)
        writer = Writer(client).start()
        time.sleep(1.0)
        if "stop-standby" in env.sabotage:
            sandbox.instance(next(n for n in sandbox.nodes if n.role == "standby"), env.programs).stop()
        with timeline.step("inject: kill -9 the primary"):
            killed_at = time.monotonic()
            sandbox.instance(sandbox.primary, env.programs).kill9()
        with timeline.step("pgdr failover") as step:
            record = run_failover(config, env.programs, repo, trigger="drill")
            step.evidence.update(new_primary=record["new_primary"], rto_s=record["rto_seconds"],
                                 rpo=record["rpo"])
        with timeline.step("clients write again") as step:
            writable_at = wait_writable(client)
            time.sleep(0.5)
        stats = writer.stop()
        new_primary = config.node(record["new_primary"])
        lost = missing_rows(with_params(new_primary.conninfo, dbname="app"), stats.rows)
        with timeline.step("pgdr rejoin (restore redundancy)") as step:
            rejoin = run_rejoin(config, env.programs, repo, sandbox.primary.name)
            step.detail = rejoin["method"]
        result.rto_s = round(writable_at - killed_at, 3)
        result.rpo = float(len(lost))
        result.evidence.update(acknowledged=len(stats.acknowledged), lost_ids=sorted(lost)[:20],
                               wal_commits_after_promotion=record["rpo"].get("commits"),
                               synchronous=env.synchronous, record=record.get("record_path"))
        result.timeline = timeline.as_list()
        consistent = record["rpo"].get("commits") is None or len(lost) <= record["rpo"]["commits"]
        result.passed = result.within_target() and consistent
        result.reason = (f"{len(lost)} acknowledged commit(s) lost, outage {result.rto_s:.2f}s as the writer saw it"
                         + ("" if consistent else "; the WAL-based RPO undercounts the loss"))


def switchover(env: DrillEnv, result: ScenarioResult) -> None:
    """Planned switchover under a writer: zero acknowledged commits lost."""
    result.target = Target(env.targets.failover.rto_s, 0, "commits")
    timeline = Timeline()
    with env.sandbox("switchover", standbys=1) as (sandbox, config, repo):
        client = any_primary_conninfo(sandbox)
        writer = Writer(client).start()
        time.sleep(1.0)
        with timeline.step("pgdr switchover") as step:
            started = time.monotonic()
            record = run_switchover(config, env.programs, repo)
            step.evidence["new_primary"] = record["new_primary"]
        with timeline.step("clients write again"):
            writable_at = wait_writable(client)
            time.sleep(0.5)
        stats = writer.stop()
        lost = missing_rows(with_params(config.node(record["new_primary"]).conninfo, dbname="app"),
                            stats.rows)
        result.rto_s = round(writable_at - started, 3)
        result.rpo = float(len(lost))
        result.evidence.update(acknowledged=len(stats.acknowledged), writer_errors=stats.errors)
        result.timeline = timeline.as_list()
        result.passed = result.within_target()
        result.reason = f"{len(lost)} acknowledged commit(s) lost; write outage {result.rto_s:.2f}s"


def connection_exhaustion(env: DrillEnv, result: ScenarioResult) -> None:
    """Sessions fill max_connections idle in transaction; diagnose names them; terminate frees."""
    result.target = Target(env.targets.failover.rto_s, 0, "commits")
    timeline = Timeline()
    hogs: list[psycopg.Connection[tuple[int]]] = []
    with env.sandbox("connection-exhaustion", standbys=0) as (sandbox, config, repo):
        with psycopg.connect(sandbox.conninfo(sandbox.primary), autocommit=True) as conn:
            conn.execute("create role app_user login")
            conn.execute("grant all on all tables in schema public to app_user")
            limit = int(conn.execute("select current_setting('max_connections')::int - "
                                     "current_setting('superuser_reserved_connections')::int - "
                                     "(select count(*) from pg_stat_activity where backend_type = 'client backend')"
                                     ).fetchone()[0])  # type: ignore[index]
        primary = config.configured_primary
        app_node = primary.model_copy(update={"conninfo": with_params(primary.conninfo, user="app_user", dbname="app")})
        try:
            with timeline.step("inject: fill every connection slot, idle in transaction") as step:
                for _ in range(limit + 5):
                    try:
                        conn = psycopg.connect(with_params(sandbox.conninfo(sandbox.primary), user="app_user"))
                    except psycopg.Error:
                        break
                    conn.execute("select count(*) from customers")
                    hogs.append(conn)
                step.evidence["sessions"] = len(hogs)
            with timeline.step("health check fails") as step:
                health = check_node(app_node, 2.0)
                step.evidence.update(status=503 if not health.ok else 200, reason=health.reason)
                detected_at = time.monotonic()
            with timeline.step("pgdr diagnose") as step:
                # The runbook's threshold is 5 minutes; a drill cannot wait that long.
                time.sleep(0.6)
                quick = config.model_copy(update={"diagnose": config.diagnose.model_copy(
                    update={"idle_in_transaction": 0.5})})
                report = diagnose(quick, repo, read_log=False)
                idle = [f for f in report.findings if f.concern == "idle_in_transaction" and f.severity != "ok"]
                full = [f for f in report.findings if f.concern == "connections" and f.severity == "critical"]
                step.evidence["findings"] = [f.summary for f in idle + full]
            with timeline.step("pgdr terminate --idle-in-transaction 0s --user app_user") as step:
                plan = term.plan(config, term.Criteria(idle_in_transaction=0.0, user="app_user"))
                done = term.execute(config, plan)
                step.evidence["terminated"] = sum(o.result == "terminated" for o in done.outcomes)
            with timeline.step("health check passes") as step:
                healthy_at = None
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    after = check_node(app_node, 2.0)
                    if after.ok:
                        healthy_at = time.monotonic()
                        break
                    time.sleep(0.05)
                step.evidence["status"] = 200 if healthy_at else 503
        finally:
            for conn in hogs:
                try:
                    conn.close()
                except psycopg.Error:
                    pass
        result.rto_s = round((healthy_at or time.monotonic()) - detected_at, 3)
        result.rpo = 0.0
        result.timeline = timeline.as_list()
        named = bool(idle) and bool(full)
        result.evidence.update(health_before=health.reason, diagnosed=named,
                               terminated=sum(o.result == "terminated" for o in done.outcomes))
        result.passed = (not health.ok) and named and healthy_at is not None and result.within_target()
        result.reason = ("503 → diagnosed → terminated → 200" if result.passed else
                         f"health before: {health.reason}; diagnosed: {named}; healthy after: {healthy_at is not None}")


SCENARIOS: dict[str, Scenario] = {
    "backup-validation": backup_validation,
    "primary-crash": primary_crash,
    "switchover": switchover,
    "connection-exhaustion": connection_exhaustion,
}


def _recovery_scenarios() -> dict[str, Scenario]:
    from pgdr.drill import recovery_scenarios as rs

    return {"accidental-delete": rs.accidental_delete, "corruption": rs.corruption, "missing-wal": rs.missing_wal}


SCENARIOS.update(_recovery_scenarios())


def run_scenario(env: DrillEnv, name: str) -> ScenarioResult:
    result = ScenarioResult(name)
    started = time.monotonic()
    env.data_bytes = env.data_on = None
    try:
        SCENARIOS[name](env, result)
    except (PgdrError, psycopg.Error, TimeoutError) as exc:
        result.passed = False
        result.reason = f"recovery failed: {getattr(exc, 'message', None) or exc}"
    if env.data_on is not None:
        result.data_bytes = env.data_bytes
        result.evidence["on"] = env.data_on
    result.wall_s = round(time.monotonic() - started, 3)
    return result
