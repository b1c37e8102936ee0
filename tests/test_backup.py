"""Physical and logical backups against real servers under write load."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from pgdr.pg.connect import session
from pgdr.pg.lsn import parse_lsn
from pgdr.repo.manifest import list_backups, read_manifest
from pgdr.sandbox import sandbox as sb
from pgdr.sandbox.workload import Writer
from tests.conftest import run_cli


def test_physical_backup_under_concurrent_writes(shared_sandbox: sb.Sandbox) -> None:
    writer = Writer(shared_sandbox.conninfo(shared_sandbox.primary)).start()
    try:
        time.sleep(0.5)
        result = run_cli("backup", "--json", config=shared_sandbox.config_path)
    finally:
        stats = writer.stop()
    assert result.returncode == 0, result.stderr
    assert stats.errors == 0 and len(stats.acknowledged) > 50
    summary = json.loads(result.stdout)
    manifest = read_manifest(shared_sandbox.repo.backups_dir / summary["id"])
    assert manifest.kind == "physical" and manifest.timeline == 1
    assert parse_lsn(manifest.stop_lsn) > parse_lsn(manifest.start_lsn)
    assert manifest.data_checksums and manifest.pg_version_num >= 150000
    assert manifest.bytes_logical > manifest.bytes_on_disk > 0  # zstd compressed
    # server-zstd by default; a PostgreSQL built without zstd (the PostgreSQL 18 wheel the
    # suite's second pass uses) gets gzip on the client instead, and says so in pgdr.json
    suffix = ".zst" if manifest.compression == "server-zstd:1" else ".gz"
    assert manifest.compression in ("server-zstd:1", "client-gzip:1")
    assert {f"base.tar{suffix}", "backup_manifest"} <= set(manifest.files)
    assert "pg_wal.tar" in manifest.files or f"pg_wal.tar{suffix}" in manifest.files
    tables = {r.qualified for r in manifest.relations.values() if r.database == "app" and r.kind == "r"}
    assert {"public.orders", "public.customers", "public.order_items"} <= tables
    with session(shared_sandbox.conninfo(shared_sandbox.primary)) as conn:
        row = conn.execute("select pg_relation_filenode('orders') as f, "
                           "(select oid from pg_database where datname = 'app') as db").fetchone()
    assert row is not None
    assert manifest.relations[f"1663/{row['db']}/{row['f']}"].qualified == "public.orders"
    listed = json.loads(run_cli("list", "--json", config=shared_sandbox.config_path).stdout)
    assert summary["id"] in [b["id"] for b in listed]


def test_logical_backup_counts_match_the_dump_snapshot(shared_sandbox: sb.Sandbox, programs) -> None:  # type: ignore[no-untyped-def]
    writer = Writer(shared_sandbox.conninfo(shared_sandbox.primary)).start()
    try:
        time.sleep(0.3)
        result = run_cli("backup", "--logical", "--json", config=shared_sandbox.config_path)
    finally:
        writer.stop()
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    manifest = read_manifest(shared_sandbox.repo.backups_dir / summary["id"])
    counted = manifest.databases["app"].tables
    assert counted["public.customers"] == 20000

    # Restore the dump and count: the writer kept inserting orders during the dump,
    # so only counts from the dump's own snapshot can match exactly.
    admin = shared_sandbox.conninfo(shared_sandbox.primary, "postgres")
    with session(admin) as conn:
        conn.execute("drop database if exists restored_check")
        conn.execute("create database restored_check")
    target = shared_sandbox.conninfo(shared_sandbox.primary, "restored_check")
    programs.run("pg_restore", ["-d", target, "-j", "2",
                                str(shared_sandbox.repo.backups_dir / summary["id"] / "db-app")])
    with session(target) as conn:
        for table, expected in counted.items():
            got = conn.execute(f"select count(*) as n from {table}").fetchone()
            assert got is not None and got["n"] == expected, table
    with session(admin) as conn:
        conn.execute("drop database restored_check")


def test_killed_backup_leaves_nothing_complete(shared_sandbox: sb.Sandbox) -> None:
    before = {b.id for b in list_backups(shared_sandbox.repo)}
    env = {**os.environ, "PGDR_CONFIG": str(shared_sandbox.config_path)}
    proc = subprocess.Popen([sys.executable, "-m", "pgdr", "backup"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    partials: list[str] = []
    while time.monotonic() < deadline and not partials:
        partials = [p.name for p in shared_sandbox.repo.backups_dir.iterdir()
                    if p.name.endswith(".partial") and any(p.iterdir())]
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert partials, "the backup finished before it could be killed"
    time.sleep(0.5)  # pg_basebackup dies with its parent (PR_SET_PDEATHSIG)
    assert {b.id for b in list_backups(shared_sandbox.repo)} == before
    listed = json.loads(run_cli("list", "--json", config=shared_sandbox.config_path).stdout)
    assert {b["id"] for b in listed} == before

    # The next backup cleans the debris and completes.
    result = run_cli("backup", "--json", config=shared_sandbox.config_path)
    assert result.returncode == 0, result.stderr
    assert partials[0] in json.loads(result.stdout)["removed_partials"]
    assert not [p for p in shared_sandbox.repo.backups_dir.iterdir() if p.name.endswith(".partial")]


def test_second_concurrent_backup_is_refused(shared_sandbox: sb.Sandbox) -> None:
    from pgdr.fsutil import exclusive_lock

    with exclusive_lock(shared_sandbox.repo.lock_path("backup"), "backup"):
        result = run_cli("backup", config=shared_sandbox.config_path)
    assert result.returncode == 1 and "another pgdr backup is running" in result.stderr
