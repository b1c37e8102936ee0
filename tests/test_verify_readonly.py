"""`pgdr verify` runs its checks on a hot standby of the scratch copy: reading a restored
table whose tuples carry no hint bits yet must not write the table again as WAL.

Independent checker: PostgreSQL's own WAL positions (the source's after the backup, the
kept copy's after verify), never pgdr's report. A writable scratch server setting the hint
bits of the table below WAL-logs a full image of each of its pages (>= its 16 MB); read
only, the copy adds a few records (promotion at --keep) and nothing per page. With an
unlogged table beside it, or once the table is vacuumed (all-visible, hinted) verify skips the restart, and --keep still hands
over a writable copy with template0 closed. The copy
must also never run the source's archive_cleanup_command or recovery_end_command (marker
files those commands would create, checked after the copy's promotion and shutdown), and
neither may a `pgdr restore` of the same backup (promoted at the end of the archive, then
stopped).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from pgdr.pg.connect import session
from pgdr.pg.programs import Programs
from pgdr.restore.pitr import stop_restored
from pgdr.sandbox import sandbox as sb
from tests.conftest import SandboxFactory, run_cli

MB = 1024 * 1024


def _lsn(conninfo: str) -> int:
    with session(conninfo) as conn:
        row = conn.execute("select pg_current_wal_lsn() - '0/0'::pg_lsn as n").fetchone()
    assert row is not None
    return int(row["n"])


def test_checks_write_no_wal_for_an_unhinted_table_and_kept_copy_is_writable(
        make_sandbox: SandboxFactory, programs: Programs) -> None:
    sandbox: sb.Sandbox = make_sandbox("readonly", standbys=0)
    markers = {s: Path(tempfile.gettempdir()) / f"pgdr-test-{s}-{os.getpid()}"
               for s in ("archive_cleanup_command", "recovery_end_command")}
    with session(sandbox.conninfo(sandbox.primary), statement_timeout=0) as conn:
        # never read after the load, never vacuumed: no hint bits, no all-visible pages
        conn.execute("create table bulk (id int primary key, t text) with (autovacuum_enabled = off)")
        conn.execute("insert into bulk select g, repeat(md5(g::text), 12) from generate_series(1, 40000) g")
        size = int(conn.execute("select pg_relation_size('bulk') as n").fetchone()["n"])
        conn.execute("checkpoint")
        # the source's own commands for when it is a standby: a scratch copy must never run
        # them (archive_cleanup_command could remove segments from the live archive)
        for setting, marker in markers.items():
            conn.execute(f"alter system set {setting} = 'touch {marker}'")
    assert size >= 16 * MB
    try:
        # never read since the load: the checks run on a read-only restart of the copy
        record = _verify_kept(sandbox, programs, size, restarted=True)
        assert record["row_counts"]["app"]["public.bulk"] == 40000
        _restore_and_stop(sandbox, programs)
        # an unlogged table: recovery would empty it and a standby refuses to count it, so
        # no restart (a physical copy holds it empty, as PostgreSQL's restore does)
        with session(sandbox.conninfo(sandbox.primary), statement_timeout=0) as conn:
            conn.execute("create unlogged table scratchpad (id int primary key)")
            conn.execute("insert into scratchpad select generate_series(1, 100)")
        record = _verify_kept(sandbox, programs, size, restarted=False, writes_wal=True)
        assert record["row_counts"]["app"]["public.scratchpad"] == 0
        # vacuumed (hint bits set, pages all-visible): no restart, nothing to save
        with session(sandbox.conninfo(sandbox.primary), statement_timeout=0) as conn:
            conn.execute("alter table scratchpad set logged")  # dropped, it would count as vanished
        for db in ("app", "postgres"):
            with session(sandbox.conninfo(sandbox.primary, db), statement_timeout=0) as conn:
                conn.execute("vacuum")
        record = _verify_kept(sandbox, programs, size, restarted=False)
        assert record["row_counts"]["app"]["public.bulk"] == 40000
    finally:
        ran = [s for s, marker in markers.items() if marker.exists()]
        for marker in markers.values():
            marker.unlink(missing_ok=True)
    assert ran == [], f"the scratch copy ran the source's {ran}"


def _restore_and_stop(sandbox: sb.Sandbox, programs: Programs) -> None:
    """A real restore to the end of the archive (promotion runs recovery_end_command) and
    its shutdown (a restartpoint-style checkpoint), under the same source settings."""
    target = sandbox.root / "restored-readonly"
    try:
        result = run_cli("restore", "--latest", "--target-dir", str(target), "--json", config=sandbox.config_path)
        assert result.returncode == 0, result.stderr
        with session(json.loads(result.stdout)["conninfo"]) as conn:
            row = conn.execute("select current_setting('recovery_end_command') as e, "
                               "current_setting('archive_cleanup_command') as c").fetchone()
        assert row == {"e": "", "c": ""}, row
    finally:
        stop_restored(target, programs)  # a standby's cleanup command would run here
        shutil.rmtree(target, ignore_errors=True)


def _verify_kept(sandbox: sb.Sandbox, programs: Programs, size: int, *, restarted: bool,
                 writes_wal: bool = False) -> dict:  # type: ignore[type-arg]
    result = run_cli("backup", "--json", config=sandbox.config_path)
    assert result.returncode == 0, result.stderr
    backup_id = json.loads(result.stdout)["id"]
    after_backup = _lsn(sandbox.conninfo(sandbox.primary))

    result = run_cli("verify", backup_id, "--keep", "--json", config=sandbox.config_path)
    assert "Traceback" not in result.stderr
    record: dict = json.loads(result.stdout)  # type: ignore[type-arg]
    assert result.returncode == 0, (result.stderr, [c for c in record["checks"] if c["status"] != "ok"])
    assert ("read-only restart" in record["phases"]) is restarted, record["phases"]
    kept = record["kept"]
    assert kept is not None
    try:
        _check_kept(kept, size, after_backup, writes_wal)
    finally:
        programs.run("pg_ctl", ["-D", kept["data_dir"], "-m", "fast", "-w", "stop"], ok_codes=(0, 1))
    return record


def _check_kept(kept: dict, size: int, after_backup: int, writes_wal: bool) -> None:  # type: ignore[type-arg]
    written = _lsn(kept["conninfo"]) - after_backup
    # writable and unhinted (the unlogged case), the checks write the table again: the
    # measurement itself is sound
    assert (written >= size // 4) is writes_wal, f"the checks wrote {written} bytes of WAL for a {size}-byte table"

    with session(kept["conninfo"]) as conn:
        row = conn.execute("select pg_is_in_recovery() as r, (select datallowconn from pg_database "
                           "where datname = 'template0') as t0").fetchone()
        assert row is not None
        # a kept copy is a writable server, template0 closed again as restored
        assert row["r"] is False and row["t0"] is False
    with session(kept["conninfo"].replace("dbname=postgres", "dbname=app")) as conn:
        conn.execute("insert into bulk values (-1, 'written after verify')")
