"""Several PostgreSQL majors: `sandbox up --bindir`, version-matched programs, and features
only where the server has them. Runs in the normal pass (PostgreSQL 15 by default) and
brings its own PostgreSQL 18 (tests/pg18.py); the suite's core runs again on 18 in
scripts/test.sh."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from pgdr.pg.connect import session
from pgdr.pg.programs import bindir_major
from pgdr.sandbox import sandbox as sb
from tests.conftest import run_cli, test_major
from tests.pg18 import pg18_bindir


def test_sandbox_up_bindir_runs_that_major_and_every_command_follows_it(base_dir: Path) -> None:
    bindir = pg18_bindir()
    root = base_dir / "bindir18"
    res = run_cli("sandbox", "up", "--dir", str(root), "--standbys", "0", "--bindir", str(bindir), "--json")
    try:
        assert res.returncode == 0, res.stderr
        config = Path(json.loads(res.stdout)["config"])
        assert tomllib.loads(config.read_text())["pg"]["bindir"] == str(bindir.resolve())
        sandbox = sb.load_sandbox(root)
        assert sandbox is not None
        with session(sandbox.conninfo(sandbox.primary)) as conn:
            row = conn.execute("select current_setting('server_version_num')::int as v, "
                               "current_setting('summarize_wal') as s").fetchone()
        assert row is not None and row["v"] // 10000 == bindir_major(bindir) == 18
        assert row["s"] == "on"  # what `pgdr backup --incremental` needs
        # up again (a restart) keeps using the sandbox's own programs, not the default ones
        assert run_cli("sandbox", "down", "--dir", str(root)).returncode == 0
        again = run_cli("sandbox", "up", "--dir", str(root), "--json")
        assert again.returncode == 0, again.stderr
        assert {r["name"]: r["state"] for r in json.loads(again.stdout)["nodes"]}["primary"] == "up"
        # a backup with the build's missing zstd falls back to client gzip, and says so
        backup = run_cli("backup", "--json", config=config)
        assert backup.returncode == 0, backup.stderr
        listed = json.loads(run_cli("list", "--json", config=config).stdout)
        assert [r["kind"] for r in listed] == ["physical"]
        manifest = json.loads((sandbox.repo.backups_dir / listed[0]["id"] / "pgdr.json").read_text())
        assert manifest["compression"] == "client-gzip:1" and "base.tar.gz" in manifest["files"]
    finally:
        run_cli("sandbox", "down", "--dir", str(root), "--purge")


def test_sandbox_up_with_a_folder_that_is_not_a_bindir_is_one_line(base_dir: Path) -> None:
    res = run_cli("sandbox", "up", "--dir", str(base_dir / "nobindir"), "--bindir", str(base_dir))
    assert res.returncode == 2
    assert res.stderr.startswith("pgdr: --bindir") and len(res.stderr.strip().splitlines()) == 1
    assert not (base_dir / "nobindir").exists()


def test_incremental_on_a_server_before_17_refuses_with_one_line(shared_sandbox: sb.Sandbox) -> None:
    assert test_major() < 17, "this test needs the default (PostgreSQL 15) sandbox"
    before = sorted(p.name for p in shared_sandbox.repo.backups_dir.iterdir()) \
        if shared_sandbox.repo.backups_dir.is_dir() else []
    res = run_cli("backup", "--incremental", config=shared_sandbox.config_path)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "--incremental needs PostgreSQL 17 or later" in lines[0]
    after = sorted(p.name for p in shared_sandbox.repo.backups_dir.iterdir()) \
        if shared_sandbox.repo.backups_dir.is_dir() else []
    assert after == before


# pg_waldump lines as PostgreSQL 15 and 18 print them (18's copied from a real run).
_WALDUMP_15 = (
    "rmgr: Heap        len (rec/tot):     54/    54, tx:        762, lsn: 0/03000060, prev 0/03000028, "
    "desc: DELETE off 1 flags 0x00 KEYS_UPDATED , blkref #0: rel 1663/16384/16490 blk 0\n"
    "rmgr: Heap        len (rec/tot):     72/    72, tx:        762, lsn: 0/03000098, prev 0/03000060, "
    "desc: HOT_UPDATE off 75 xmax 762 flags 0x60 ; new off 2 xmax 0, blkref #0: rel 1663/16384/16490 blk 1\n"
    "rmgr: Transaction len (rec/tot):     34/    34, tx:        762, lsn: 0/030000E0, prev 0/03000098, "
    "desc: COMMIT 2026-11-24 10:18:43.167832 UTC\n")
_WALDUMP_18 = (
    "rmgr: Heap        len (rec/tot):     54/    54, tx:        776, lsn: 0/091D3818, prev 0/091D37E0, "
    "desc: DELETE xmax: 776, off: 1, infobits: [KEYS_UPDATED], flags: 0x00, blkref #0: rel 1663/16384/16490 blk 0\n"
    "rmgr: Heap        len (rec/tot):    120/   120, tx:        776, lsn: 0/0A00B9C0, prev 0/0A00B988, "
    "desc: HOT_UPDATE old_xmax: 778, old_off: 65, old_infobits: [], flags: 0x21, new_xmax: 0, new_off: 1, "
    "blkref #0: rel 1663/16384/16490 blk 1, blkref #3: rel 1663/16384/16490 fork vm blk 0\n"
    "rmgr: Transaction len (rec/tot):     34/    34, tx:        776, lsn: 0/0A00BA38, prev 0/0A00B9C0, "
    "desc: COMMIT 2026-11-24 10:19:17.652785 UTC\n")


def test_heap_rows_are_counted_in_each_majors_pg_waldump_format() -> None:
    from pgdr.pg.waldump import ChunkResult, parse_output

    for xid, text in ((762, _WALDUMP_15), (776, _WALDUMP_18)):
        result = ChunkResult("000000010000000000000003")
        parse_output(text.encode(), result)
        assert result.deletes == {xid: {"1663/16384/16490": 1}}
        assert result.updates == {xid: {"1663/16384/16490": 1}}
        assert xid in result.commits
