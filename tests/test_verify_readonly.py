"""`pgdr verify` runs its checks on a hot standby of the scratch copy: reading a restored
table whose tuples carry no hint bits yet must not write the table again as WAL.

Independent checker: PostgreSQL's own WAL positions (the source's after the backup, the
kept copy's after verify), never pgdr's report. A writable scratch server setting the hint
bits of the table below WAL-logs a full image of each of its pages (>= its 16 MB); read
only, the copy adds a few records (promotion at --keep) and nothing per page.
"""

from __future__ import annotations

import json

from pgdr.pg.connect import session
from pgdr.pg.programs import Programs
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
    with session(sandbox.conninfo(sandbox.primary), statement_timeout=0) as conn:
        # never read after the load, never vacuumed: no hint bits, no all-visible pages
        conn.execute("create table bulk (id int primary key, t text) with (autovacuum_enabled = off)")
        conn.execute("insert into bulk select g, repeat(md5(g::text), 12) from generate_series(1, 40000) g")
        size = int(conn.execute("select pg_relation_size('bulk') as n").fetchone()["n"])
        conn.execute("checkpoint")
    assert size >= 16 * MB
    result = run_cli("backup", "--json", config=sandbox.config_path)
    assert result.returncode == 0, result.stderr
    backup_id = json.loads(result.stdout)["id"]
    after_backup = _lsn(sandbox.conninfo(sandbox.primary))

    result = run_cli("verify", backup_id, "--keep", "--json", config=sandbox.config_path)
    assert "Traceback" not in result.stderr
    record = json.loads(result.stdout)
    assert result.returncode == 0, (result.stderr, [c for c in record["checks"] if c["status"] != "ok"])
    kept = record["kept"]
    assert kept is not None
    try:
        _check_kept(record, kept, size, after_backup)
    finally:
        programs.run("pg_ctl", ["-D", kept["data_dir"], "-m", "immediate", "-w", "stop"], ok_codes=(0, 1))


def _check_kept(record: dict, kept: dict, size: int, after_backup: int) -> None:  # type: ignore[type-arg]
    assert record["row_counts"]["app"]["public.bulk"] == 40000
    written = _lsn(kept["conninfo"]) - after_backup
    assert written < size // 4, f"the checks wrote {written} bytes of WAL for a {size}-byte table"

    with session(kept["conninfo"]) as conn:
        row = conn.execute("select pg_is_in_recovery() as r, (select datallowconn from pg_database "
                           "where datname = 'template0') as t0").fetchone()
        assert row is not None
        # a kept copy is a writable server, template0 closed again as restored
        assert row["r"] is False and row["t0"] is False
    with session(kept["conninfo"].replace("dbname=postgres", "dbname=app")) as conn:
        conn.execute("insert into bulk values (0, 'written after verify')")
