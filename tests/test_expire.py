"""Retention: by count and age, keeping every WAL segment a kept backup needs."""

from __future__ import annotations

import json

from pgdr.pg.connect import session
from pgdr.pg.lsn import parse_lsn
from pgdr.repo.manifest import list_backups
from pgdr.repo.wal import WalArchive, find_gaps
from tests.conftest import run_cli
from tests.test_archive import _switch_wal, _wait_archived


def test_expire_keeps_newest_and_its_wal(make_sandbox) -> None:  # type: ignore[no-untyped-def]
    sandbox = make_sandbox("expire", standbys=0)
    with open(sandbox.config_path, "a") as conf:
        conf.write('\n[retention]\nkeep_last = 1\nkeep_within = "0s"\n')
    ids = []
    for _ in range(3):
        _switch_wal(sandbox, 2)
        result = run_cli("backup", "--json", config=sandbox.config_path)
        assert result.returncode == 0, result.stderr
        ids.append(json.loads(result.stdout)["id"])
    _switch_wal(sandbox, 2)
    _wait_archived(sandbox)
    before = [s.name() for s in WalArchive(sandbox.repo).segments()]

    dry = run_cli("expire", "--dry-run", "--json", config=sandbox.config_path)
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert plan["keep"] == [ids[-1]] and sorted(plan["remove"]) == sorted(ids[:-1])
    assert [b.id for b in list_backups(sandbox.repo)] == ids  # dry run removed nothing

    refused = run_cli("expire", config=sandbox.config_path, input_text="")
    assert refused.returncode == 2 and "--yes" in refused.stderr

    done = run_cli("expire", "--yes", config=sandbox.config_path)
    assert done.returncode == 0, done.stderr
    kept = list_backups(sandbox.repo)
    assert [b.id for b in kept] == [ids[-1]]
    after = WalArchive(sandbox.repo).segments()
    assert len(after) < len(before)
    start_segno = parse_lsn(kept[0].start_lsn) // (16 * 1024 * 1024)
    assert min(s.segno for s in after) == start_segno  # nothing the kept backup needs is gone
    assert find_gaps(after) == []
    with session(sandbox.conninfo(sandbox.primary)) as conn:
        conn.execute("select 1")
    assert run_cli("status", config=sandbox.config_path).returncode == 0
