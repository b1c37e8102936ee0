"""`pgdr migrate` end to end: a real Alembic project (written here, SQLAlchemy + psycopg)
against a real sandbox primary with its WAL archive.

The story, in order (one sandbox for the module):
1. an additive revision: the freeze point is in the server's own log before the DDL;
2. a revision blocked by a lock another session holds: lock_timeout ends it;
3. `alembic upgrade head` where r2 (additive) succeeds and r3 fails halfway: reported
   with the schema diff, rolled back by the tool's downgrade;
4. r3 fixed into a destructive one (drops a column with data): rolled back by PITR to
   the freeze point, the column's data back, the rows written since counted and salvaged;
5. a rehearsal of a rewriting revision on a restored copy: the primary's schema is
   unchanged (pg_dump hashed by the test), locks and rewritten rows reported.
Outcomes are counted with SQL and pg_dump on the servers, never with pgdr's own record.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from pgdr.pg.connect import session
from pgdr.pg.instance import free_port
from pgdr.pg.programs import Programs
from pgdr.restore.pitr import stop_restored
from pgdr.sandbox import sandbox as sb
from tests.conftest import CliResult, run_cli

ENV_PY = '''
import os

import psycopg
from alembic import context
from sqlalchemy import create_engine, pool

engine = create_engine("postgresql+psycopg://", poolclass=pool.NullPool,
                       creator=lambda: psycopg.connect(os.environ["DATABASE_URL"]))
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=None, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()
'''

REVISION = '''
import sqlalchemy as sa
from alembic import op

revision = {rev!r}
down_revision = {down!r}
branch_labels = None
depends_on = None


def upgrade():
{upgrade}


def downgrade():
{downgrade}
'''

R1 = ("r1", None, """    op.create_table("members", sa.Column("id", sa.Integer, primary_key=True),
                    sa.Column("name", sa.Text, nullable=False), sa.Column("email", sa.Text))""",
      '    op.drop_table("members")')
R2 = ("r2", "r1", '    op.add_column("members", sa.Column("phone", sa.Text))',
      '    op.drop_column("members", "phone")')
R3_FAILING = ("r3", "r2", """    op.add_column("members", sa.Column("tier", sa.Integer))
    op.add_column("no_such_table", sa.Column("x", sa.Integer))""",
              '    op.drop_column("members", "tier")')
R3_DESTRUCTIVE = ("r3", "r2", '    op.drop_column("members", "email")',
                  '    op.add_column("members", sa.Column("email", sa.Text))')
# additive, but its downgrade silently does nothing (a tool that says it succeeded)
R5_LYING_DOWNGRADE = ("r5", "r3", '    op.add_column("members", sa.Column("note", sa.Text))', "    pass")
# holds its ACCESS EXCLUSIVE lock a while after the rewrite (slow work in the same transaction)
# destructive again, after r4: drops a column with data (rolled back with --cutover)
R6_DROP_NAME = ("r6", "r4", '    op.drop_column("members", "name")',
                '    op.add_column("members", sa.Column("name", sa.Text))')
R4_REWRITE = ("r4", "r3", """    op.alter_column("members", "id", type_=sa.BigInteger)
    op.execute("select pg_sleep(0.6)")""",
              '    op.alter_column("members", "id", type_=sa.Integer)')


@dataclass
class Project:
    sandbox: sb.Sandbox
    root: Path
    ini: Path
    env: dict[str, str]
    primary: str                                   # the app database on the primary (conninfo)
    records: dict[str, Any] = field(default_factory=dict)

    def write_revision(self, spec: tuple[str, str | None, str, str]) -> None:
        rev, down, up, back = spec
        (self.root / "migrations" / "versions" / f"{rev}.py").write_text(
            REVISION.format(rev=rev, down=down, upgrade=up, downgrade=back))

    def alembic(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "alembic", "-c", str(self.ini), *args]

    def pgdr(self, *args: str, timeout: float = 300) -> CliResult:
        return run_cli(*args, config=self.sandbox.config_path, env=self.env, timeout=timeout)


def _url(sandbox: sb.Sandbox) -> str:
    node = sandbox.primary
    return f"postgresql://postgres@/app?host={quote(str(sandbox.socket_dir), safe='')}&port={node.port}"


def _value(conninfo: str, query: str) -> Any:
    with session(conninfo) as conn:
        row = conn.execute(query).fetchone()
    return None if row is None else next(iter(row.values()))


def _columns(conninfo: str, table: str = "members") -> list[str]:
    with session(conninfo) as conn:
        return [r["column_name"] for r in conn.execute(
            "select column_name from information_schema.columns where table_schema = 'public' "
            "and table_name = %s order by ordinal_position", (table,))]


def _schema_hash(programs: Programs, conninfo: str) -> str:
    """The test's own fingerprint: pg_dump --schema-only, hashed."""
    done = subprocess.run(["runuser", "-u", "postgres", "--", str(Path(programs.path("pg_dump"))),
                           "--schema-only", "--restrict-key=pgdrtest", "-d", conninfo], capture_output=True, text=True, check=True)
    return hashlib.sha256(done.stdout.encode()).hexdigest()


def _record(result: CliResult) -> dict[str, Any]:
    return dict(json.loads(result.stdout))


@pytest.fixture(scope="module")
def project(base_dir: Path, programs: Programs) -> Iterator[Project]:
    sandbox = sb.up(base_dir / "migrate", programs, standbys=0)
    primary = sandbox.conninfo(sandbox.primary)
    with session(sandbox.conninfo(sandbox.primary, "postgres")) as conn:
        conn.execute("alter system set log_statement = 'ddl'")
        conn.execute("select pg_reload_conf()")
    root = base_dir / "alembic-project"
    (root / "migrations" / "versions").mkdir(parents=True)
    (root / "migrations" / "env.py").write_text(ENV_PY)
    ini = root / "alembic.ini"
    ini.write_text(f"[alembic]\nscript_location = {root / 'migrations'}\n")
    down = json.dumps([sys.executable, "-m", "alembic", "-c", str(ini), "downgrade", "{revision}"])
    with open(sandbox.config_path, "a") as fh:
        fh.write(f'\n[migrate]\ndatabase = "app"\nlock_timeout = "2s"\ndowngrade_command = {down}\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["DATABASE_URL"] = _url(sandbox)
    proj = Project(sandbox, root, ini, env, primary)
    for spec in (R1, R2, R3_FAILING):
        proj.write_revision(spec)
    backup = proj.pgdr("backup")
    assert backup.returncode == 0, backup.stderr
    yield proj
    sb.down(sandbox.root, programs, purge=True)


@pytest.mark.parametrize("args, says", [
    ((), "give the migration command after --"),
    (("--freeze", "nope", "--", "true"), "--freeze 'nope'"),
    (("--rehearse", "--freeze", "backup", "--", "true"), "--freeze is for the production run"),
    (("--rollback", "latest", "--", "true"), "--rollback takes no command"),
    (("--yes", "--", "true"), "belong to --rollback"),
])
def test_usage_errors_are_one_line(args: tuple[str, ...], says: str) -> None:
    result = run_cli("migrate", *args)
    assert result.returncode == 2 and says in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_additive_migration_takes_the_freeze_point_first(project: Project) -> None:
    result = project.pgdr("migrate", "--json", "--", *project.alembic("upgrade", "r1"))
    assert result.returncode == 0, result.stderr + result.stdout
    record = _record(result)
    project.records["r1"] = record
    point = record["freeze"]["restore_point"]
    # The server's own log: the restore point was created before the migration's DDL ran.
    log = (project.sandbox.root / "nodes" / "primary.log").read_text()
    created = log.find(f'restore point "{point}" created')
    ddl = log.find("CREATE TABLE members")
    assert 0 <= created < ddl, (created, ddl)
    assert _columns(project.primary) == ["id", "name", "email"]
    assert _value(project.primary, "select version_num from alembic_version") == "r1"
    assert record["revision_before"] is None and record["revision_after"] == "r1"
    assert record["diff"]["tables_added"] == ["public.members"]
    assert record["diff"]["destructive"] is False
    assert record["duration_s"] > 0
    with session(project.primary) as conn:
        conn.execute("insert into members (name, email) select 'c' || i, 'c' || i || '@example.com' "
                     "from generate_series(1, 200) i")


def test_lock_timeout_ends_a_blocked_migration(project: Project) -> None:
    """Another session holds a lock on the table: the migration gives up after lock_timeout
    (2 s here) instead of queueing every query behind its ACCESS EXCLUSIVE request."""
    with session(project.primary, autocommit=False) as holder:
        holder.execute("lock table members in access share mode")
        result = project.pgdr("migrate", "--json", "--", *project.alembic("upgrade", "r2"))
        holder.rollback()
    assert result.returncode == 1, result.stderr
    record = _record(result)
    assert record["outcome"] == "failed"
    assert any("lock timeout" in line for line in record["output_tail"]), record["output_tail"]
    assert "phone" not in _columns(project.primary)
    assert _value(project.primary, "select version_num from alembic_version") == "r1"


def test_refuses_without_a_wal_archive_space_or_verified_backup(project: Project, tmp_path: Path) -> None:
    """Nothing runs when the freeze point (or the rehearsal's copy) cannot be had."""
    marker = tmp_path / "ran"
    touch = [sys.executable, "-c", f"open({str(marker)!r}, 'w')"]
    with session(project.primary) as other:   # another pgdr migrate, on another machine
        other.execute("select pg_advisory_lock(hashtext('pgdr migrate')::bigint)")
        busy = project.pgdr("migrate", "--", *touch)
    assert busy.returncode == 1 and "another pgdr migrate or rollback is running" in busy.stderr, busy.stderr
    no_copy = project.pgdr("migrate", "--rehearse", "--", *touch)
    assert no_copy.returncode == 1 and "no verified physical backup" in no_copy.stderr, no_copy.stderr
    free = shutil.disk_usage(project.sandbox.repo.root).free
    no_space = run_cli("migrate", "--", *touch, config=_variant(project, "tight", min_free_bytes=str(free * 2)),
                       env=project.env)
    assert no_space.returncode == 1 and "MiB needed" in no_space.stderr, no_space.stderr
    logical = _variant(project, "logical")
    logical.write_text(logical.read_text().replace('[cluster]\n', '[cluster]\nmode = "logical"\n', 1))
    no_wal = run_cli("migrate", "--", *touch, config=logical, env=project.env)
    assert no_wal.returncode == 1 and "no WAL archive (logical-only mode)" in no_wal.stderr, no_wal.stderr
    assert not marker.exists()
    stopped = project.pgdr("archiver", "stop")
    assert stopped.returncode == 0, stopped.stderr
    try:
        result = project.pgdr("migrate", "--", *touch)
    finally:
        started = project.pgdr("archiver", "start")
    assert started.returncode == 0, started.stderr
    assert result.returncode == 1
    assert "archiver is not running" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2
    assert not marker.exists()


def _variant(project: Project, name: str, **settings: str) -> Path:
    """A copy of the sandbox's pgdr.toml (same folder: same repository) with [migrate] changes."""
    extra = "".join(f"{k} = {v}\n" for k, v in settings.items())
    path = project.sandbox.root / f"pgdr-{name}.toml"
    path.write_text(project.sandbox.config_path.read_text().replace("[migrate]\n", f"[migrate]\n{extra}"))
    return path


def _receivewal_pids(sandbox: sb.Sandbox) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if proc.name.isdigit() and cmdline and cmdline[0].endswith(b"pg_receivewal") \
                and any(str(sandbox.repo.root).encode() in a for a in cmdline):
            found.append(int(proc.name))
    return found


def test_a_stopped_archive_or_an_endless_command_is_bounded(project: Project, tmp_path: Path) -> None:
    """pg_receivewal SIGSTOPped: the restore point never reaches the archive, so the migration
    is refused after archive_wait. A command that hangs is ended after [migrate] timeout."""
    marker = tmp_path / "ran"
    touch = [sys.executable, "-c", f"open({str(marker)!r}, 'w')"]
    pids = _receivewal_pids(project.sandbox)
    assert pids, "no pg_receivewal of this sandbox's archiver"
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        stuck = run_cli("migrate", "--", *touch, config=_variant(project, "stuck", archive_wait='"2s"'),
                        env=project.env)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    assert stuck.returncode == 1 and "did not reach the WAL archive within 2s" in stuck.stderr, stuck.stderr
    assert not marker.exists()

    hang = run_cli("migrate", "--json", "--", sys.executable, "-c", "import time; time.sleep(600)",
                   config=_variant(project, "hang", timeout='"2s"'), env=project.env)
    assert hang.returncode == 1, hang.stderr
    record = _record(hang)
    assert record["outcome"] == "failed" and "did not finish within 2s" in record["error"]
    assert not [p for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline(p).endswith("time.sleep(600)")]


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def test_failed_migration_is_reported_and_rolled_back_by_downgrade(project: Project) -> None:
    result = project.pgdr("migrate", "--json", "--", *project.alembic("upgrade", "head"))
    assert result.returncode == 1, result.stderr
    record = _record(result)
    assert record["outcome"] == "failed"
    assert any("no_such_table" in line for line in record["output_tail"])
    # r2 committed (one transaction per revision), r3 rolled back by PostgreSQL
    assert record["revision_after"] == "r2"
    assert record["diff"]["columns_added"] == ["public.members.phone"]
    assert _columns(project.primary) == ["id", "name", "email", "phone"]

    plan = project.pgdr("migrate", "--rollback", "latest", "--dry-run")
    assert plan.returncode == 0 and "downgrade" in plan.stdout, plan
    cutover = project.pgdr("migrate", "--rollback", "latest", "--dry-run", "--cutover")
    assert cutover.returncode == 2 and "no restored instance to cut over to" in cutover.stderr
    assert len(cutover.stderr.strip().splitlines()) == 1
    assert "phone" in _columns(project.primary)   # a dry run changes nothing
    unconfirmed = project.pgdr("migrate", "--rollback", "latest")
    assert unconfirmed.returncode == 2 and "--yes" in unconfirmed.stderr
    done = project.pgdr("migrate", "--rollback", "latest", "--yes", "--json")
    assert done.returncode == 0, done.stderr
    assert _columns(project.primary) == ["id", "name", "email"]
    assert _value(project.primary, "select version_num from alembic_version") == "r1"
    assert _value(project.primary, "select count(*) from members where email is not null") == 200
    assert [s["name"] for s in _record(done)["timeline"]] == ["downgrade", "schema is the freeze point's"]
    status = json.loads(project.pgdr("status", "--json").stdout)
    check = next(c for c in status["checks"] if c["name"] == "last migration")
    assert check["evidence"]["outcome"] == "failed" and check["evidence"]["rolled_back"] == _record(done)["id"]
    assert check["status"] == "ok" and "rolled back (downgrade)" in check["summary"]


def test_destructive_migration_is_rolled_back_by_pitr(project: Project, programs: Programs) -> None:
    project.write_revision(R3_DESTRUCTIVE)
    result = project.pgdr("migrate", "--json", "--", *project.alembic("upgrade", "head"))
    assert result.returncode == 0, result.stderr + result.stdout
    record = _record(result)
    project.records["destructive"] = record
    log = (project.sandbox.root / "nodes" / "primary.log").read_text()
    created = log.find(f'restore point "{record["freeze"]["restore_point"]}" created')
    assert 0 <= created < log.find("ALTER TABLE members DROP COLUMN email")
    assert log.count("ALTER TABLE members DROP COLUMN email") == 1
    assert record["diff"]["columns_dropped"] == ["public.members.email"]
    assert record["diff"]["destructive"] is True
    assert "email" not in _columns(project.primary)
    with session(project.primary) as conn:   # the application keeps writing after the migration
        conn.execute("insert into members (id, name) values (1001, 'late1'), (1002, 'late2'), (1003, 'late3')")

    missing_dir = project.pgdr("migrate", "--rollback", "latest", "--yes")
    assert missing_dir.returncode == 2 and "--target-dir" in missing_dir.stderr
    target = project.sandbox.root / "rolled-back"

    port = free_port()
    done = project.pgdr("migrate", "--rollback", record["id"], "--yes", "--json", "--target-dir", str(target),
                        "--port", str(port))
    assert done.returncode == 0, done.stderr
    rollback = _record(done)
    assert rollback["restored"]["port"] == port
    restored = rollback["restored"]["conninfo"]
    try:
        # the dropped column's data is back, as it was at the freeze point
        assert _columns(restored) == ["id", "name", "email"]
        assert _value(restored, "select count(*) from members where email = name || '@example.com'") == 200
        assert _value(restored, "select count(*) from members where id > 1000") == 0
        assert _value(restored, "select version_num from alembic_version") == "r1"
        # the rows written since the freeze point are listed, and salvageable into the copy
        assert rollback["written_since"][0]["table"] == "public.members"
        assert rollback["written_since"][0]["rows"] == 3
        assert rollback["written_since"][0]["during_migration"] == 0   # DROP COLUMN rewrites nothing
        line = shlex.split(rollback["written_since"][0]["salvage"])
        assert line[:2] == ["pgdr", "salvage"] and line[line.index("--into") + 1] == restored
        copied = json.loads(project.pgdr(*line[1:], "--json").stdout)["target_table"]
        assert _value(restored, "select count(*) from members where id > 1000") == 0
        assert _value(restored, f"select string_agg(name, ',' order by id) from {copied}") == "late1,late2,late3"
        # the primary itself was not touched by the rollback
        assert "email" not in _columns(project.primary)
    finally:
        stop_restored(target, programs)
    steps = [s["name"] for s in rollback["timeline"]]
    assert steps[0] == "restore to the freeze point" and steps[-1] == "cutover"
    report = project.pgdr("report", "latest")
    assert f"# Incident record {rollback['id']}" in report.stdout
    assert "public.members: 3 rows written since the freeze point" in report.stdout


def test_a_downgrade_that_leaves_the_schema_changed_fails_the_rollback(project: Project) -> None:
    """The tool's downgrade exits 0 but leaves a column behind: the fingerprint says so,
    the rollback fails (exit 1) and names the PITR to the freeze point instead."""
    project.write_revision(R5_LYING_DOWNGRADE)
    try:
        result = project.pgdr("migrate", "--json", "--", *project.alembic("upgrade", "r5"))
        assert result.returncode == 0, result.stderr
        point = _record(result)["freeze"]["restore_point"]
        done = project.pgdr("migrate", "--rollback", "latest", "--yes")
        assert done.returncode == 1, done.stdout + done.stderr
        assert "not the freeze point's: columns added: public.members.note" in done.stderr
        assert f"pgdr restore --to-name {point}" in done.stderr and "Traceback" not in done.stderr
        assert _value(project.primary, "select version_num from alembic_version") == "r3"
        assert "note" in _columns(project.primary)
    finally:
        (project.root / "migrations" / "versions" / "r5.py").unlink()
        with session(project.primary) as conn:
            conn.execute("alter table members drop column if exists note")


def test_logical_freeze_adds_a_dump(project: Project) -> None:
    result = project.pgdr("migrate", "--freeze", "logical", "--json", "--", "true")
    assert result.returncode == 0, result.stderr
    project.records["logical"] = _record(result)
    backup_id = _record(result)["freeze"]["backup_id"]
    manifest = json.loads((project.sandbox.repo.backups_dir / backup_id / "pgdr.json").read_text())
    assert manifest["kind"] == "logical"


def test_rehearsal_never_touches_the_primary(project: Project, programs: Programs) -> None:
    from pgdr.repo.manifest import list_backups

    verified = project.pgdr("verify", list_backups(project.sandbox.repo, "physical")[-1].id)
    assert verified.returncode == 0, verified.stderr
    project.write_revision(R4_REWRITE)
    before = _schema_hash(programs, project.primary)
    result = project.pgdr("migrate", "--rehearse", "--json", "--", *project.alembic("upgrade", "head"))
    assert result.returncode == 0, result.stderr + result.stdout
    record = _record(result)
    assert _schema_hash(programs, project.primary) == before
    assert _value(project.primary, "select version_num from alembic_version") == "r3"
    assert _value(project.primary, "select format_type(atttypid, atttypmod) from pg_attribute "
                  "where attrelid = 'members'::regclass and attname = 'id'") == "integer"
    assert record["revision_before"] == "r3" and record["revision_after"] == "r4"
    assert record["duration_s"] > 0
    assert record["diff"]["columns_altered"][0].startswith("public.members.id: type integer -> bigint")
    assert record["rewritten"] == [{"table": "public.members", "rows": 203}]
    assert any(lock["relation"] == "public.members" and lock["mode"] == "AccessExclusiveLock"
               for lock in record["locks"])
    # the copy's URL went to the command through the environment only
    assert "postgresql://" not in result.stdout
    assert not any(p.name.startswith("rehearse-") for p in (project.sandbox.root / "scratch").glob("*"))


def test_status_metrics_and_report_show_the_last_migration(project: Project) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from pgdr.config import load_config
    from pgdr.server.metrics import PgdrCollector

    last, destructive = project.records["logical"], project.records["destructive"]
    status = project.pgdr("status", "--json")
    check = next(c for c in json.loads(status.stdout)["checks"] if c["name"] == "last migration")
    assert check["status"] == "ok" and check["evidence"]["id"] == last["id"]
    assert check["evidence"]["restore_point"] == last["freeze"]["restore_point"]
    assert check["evidence"]["revision"] == "r3" and check["evidence"]["outcome"] == "ok"

    registry = CollectorRegistry()
    registry.register(PgdrCollector(load_config(project.sandbox.config_path), project.sandbox.repo))
    text = generate_latest(registry).decode()
    assert 'pgdr_migration_last_outcome{outcome="ok"} 1.0' in text
    assert 'pgdr_migration_last_outcome{outcome="failed"} 0.0' in text

    report = project.pgdr("report", destructive["id"])
    assert report.returncode == 0, report.stderr
    assert "schema migration" in report.stdout and destructive["freeze"]["restore_point"] in report.stdout
    assert "columns dropped: public.members.email" in report.stdout


def test_secrets_stay_out_of_output_and_records_with_a_backup_freeze(project: Project) -> None:
    """The command prints and takes a password (a SQLAlchemy URL, a conninfo): neither reaches
    pgdr's output nor the record; --freeze backup adds a new backup to the repository."""
    before = {p.name for p in project.sandbox.repo.backups_dir.iterdir()}
    secret = "s3cretPw"
    script = "import sys; print(sys.argv[1]); print(sys.argv[2], file=sys.stderr)"
    result = project.pgdr("migrate", "--freeze", "backup", "--", sys.executable, "-c", script,
                          f"postgresql+psycopg://app:{secret}@db.example/app", f"host=db password={secret}")
    assert result.returncode == 0, result.stderr + result.stdout
    assert "postgresql+psycopg://app:********@db.example/app" in result.stdout
    assert secret not in result.stdout + result.stderr
    records = sorted((project.sandbox.repo.root / "records").glob("*-migrate.json"))
    record_text = records[-1].read_text()
    assert secret not in record_text
    new = {p.name for p in project.sandbox.repo.backups_dir.iterdir()} - before
    assert json.loads(record_text)["freeze"]["backup_id"] in new
    assert (project.sandbox.repo.backups_dir / json.loads(record_text)["freeze"]["backup_id"] / "pgdr.json").exists()


def test_sigkill_mid_migration_ends_the_command_and_keeps_the_freeze_point(project: Project, tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    script = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(300)"
    env = {**project.env, "PGDR_CONFIG": str(project.sandbox.config_path)}
    pgdr = subprocess.Popen([sys.executable, "-m", "pgdr", "migrate", "--", sys.executable, "-c", script],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline and pgdr.poll() is None, "the command never started"
            time.sleep(0.05)
        child = int(pid_file.read_text())
        busy = project.pgdr("migrate", "--rollback", "latest", "--dry-run")
        assert busy.returncode == 2 and "is still running" in busy.stderr, busy.stderr
        pgdr.send_signal(signal.SIGKILL)
        pgdr.wait(10)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{child}").exists() and "Z" not in _proc_state(child):
            assert time.monotonic() < deadline, f"the command {child} outlived the SIGKILLed pgdr"
            time.sleep(0.05)
    finally:
        if pgdr.poll() is None:
            pgdr.kill()
    status = json.loads(project.pgdr("status", "--json").stdout)
    check = next(c for c in status["checks"] if c["name"] == "last migration")
    assert check["status"] == "warn" and check["evidence"]["outcome"] == "interrupted"
    assert check["evidence"]["restore_point"]
    plan = project.pgdr("migrate", "--rollback", "latest", "--dry-run")
    assert plan.returncode == 0 and "nothing to roll back" in plan.stdout, plan


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"


def test_a_rehearsal_that_reaches_production_is_caught(project: Project) -> None:
    """A command that ignores DATABASE_URL and alters the primary by a hard-coded conninfo:
    the primary's fingerprint changes, and the rehearsal fails saying so."""
    script = ("import psycopg, sys; c = psycopg.connect(sys.argv[1], autocommit=True); "
              "c.execute('alter table members add column oops int')")
    try:
        result = project.pgdr("migrate", "--rehearse", "--json", "--", sys.executable, "-c", script, project.primary)
        assert result.returncode == 1, result.stderr
        record = _record(result)
        assert record["outcome"] == "ok" and record["primary_untouched"] is False
        step = next(s for s in record["timeline"] if s["name"] == "primary untouched")
        assert step["result"] == "failed" and "CHANGED" in step["detail"]
    finally:
        with session(project.primary) as conn:
            conn.execute("alter table members drop column if exists oops")


def test_rollback_with_cutover_puts_the_freeze_point_into_service(project: Project, programs: Programs) -> None:
    """Last (it fences the sandbox's primary): r6 drops a column with data, the app writes
    two rows, then --rollback --cutover restores to the freeze point, copies the two rows
    into a new table there, and makes the restored instance the primary."""
    project.write_revision(R6_DROP_NAME)
    result = project.pgdr("migrate", "--json", "--", *project.alembic("upgrade", "head"))
    assert result.returncode == 0, result.stderr + result.stdout
    assert "public.members.name" in _record(result)["diff"]["columns_dropped"]
    with session(project.primary) as conn:
        conn.execute("insert into members (id) values (2001), (2002)")
    old_data_dir = project.sandbox.primary.data_dir
    target = project.sandbox.root / "cut-over"
    done = project.pgdr("migrate", "--rollback", "latest", "--cutover", "--yes", "--json", "--target-dir", str(target))
    try:
        assert done.returncode == 0, done.stderr + done.stdout
        rollback = _record(done)
        restored = rollback["restored"]["conninfo"]
        # the restored instance is the primary now, with the dropped column's data back
        assert _value(restored, "select pg_is_in_recovery()") is False
        assert _value(restored, "select count(*) from members where name like 'c%'") == 200
        assert _value(restored, "select count(*) from members where id > 2000") == 0
        # the rows written after the freeze point were copied over before the old primary was fenced
        # r4 rewrote the table (new xmin on every row): written during the migration, not after
        assert rollback["written_since"] == [{**rollback["written_since"][0], "table": "public.members", "rows": 2,
                                              "during_migration": 203}]
        copied = rollback["salvaged"][0]["target_table"]
        assert _value(restored, f"select string_agg(id::text, ',' order by id) from {copied}") == "2001,2002"
        # the old primary is fenced: stopped, and marked to come back only as a standby
        assert (old_data_dir / "standby.signal").exists()
        assert not _running(programs, old_data_dir)
        steps = [s["name"] for s in rollback["timeline"]]
        assert steps[-2:] == ["salvage rows written since into the restored instance", "cutover"]
    finally:
        stop_restored(target, programs)


def _running(programs: Programs, data_dir: Path) -> bool:
    done = subprocess.run(["runuser", "-u", "postgres", "--", programs.path("pg_ctl"), "-D", str(data_dir), "status"],
                          capture_output=True, text=True)
    return done.returncode == 0
