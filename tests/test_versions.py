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
