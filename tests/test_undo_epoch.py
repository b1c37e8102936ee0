"""xids with their epoch, end to end on a real server whose epoch is 1.

WAL records carry 32-bit xids; txid_current() / pg_current_xact_id() return them with
their epoch (4294967296 * epoch + xid), and that is what applications log. The server
here starts at epoch 1 (pg_resetwal -e 1 on a fresh initdb, before any data), so every
xid an application sees is above 2^32. find-disaster must print the full xid, restore
--before-xid must accept both forms and reach the same point, an xid of another epoch
must not match, and bad input is one line and exit 2. Rows are counted with SQL on the
restored server."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pgdr.pg.connect import session
from pgdr.pg.instance import Instance
from pgdr.pg.programs import Programs
from pgdr.restore.pitr import stop_restored
from pgdr.sandbox import sandbox as sb
from tests.conftest import run_cli, xid_of
from tests.test_undo import _wait_archived

EPOCH = 1
TWO32 = 1 << 32


@dataclass
class Story:
    sandbox: sb.Sandbox
    primary: str
    full: int           # the DELETE's xid as txid_current() returned it


def _value(conninfo: str, sql: str) -> Any:
    with session(conninfo) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return next(iter(row.values()))


def _primary_at_epoch(primary: Instance) -> None:
    primary.initdb(checksums=True)
    primary.programs.run("pg_resetwal", ["-e", str(EPOCH), "-D", str(primary.data_dir)], timeout=60)
    primary.configure({**sb.SERVER_SETTINGS, **primary.local_settings()})


@pytest.fixture(scope="module")
def story(base_dir: Path, programs: Programs) -> Iterator[Story]:
    root = base_dir / "undo-epoch"
    sandbox = sb.up(root, programs, standbys=0, primary_from=_primary_at_epoch)
    primary = sandbox.conninfo(sandbox.primary)
    try:
        with session(primary) as conn:
            conn.execute("create table epoch_t (id int primary key, v text)")
            conn.execute("insert into epoch_t select g, 'r' || g from generate_series(1, 1000) g")
        res = run_cli("backup", config=sandbox.config_path)
        assert res.returncode == 0, res.stderr
        full = xid_of(primary, "delete from epoch_t where id <= 200")
        assert full >> 32 == EPOCH, full           # the server really is at epoch 1
        with session(primary) as conn:             # after the DELETE: must not be restored
            conn.execute("insert into epoch_t values (9001, 'after')")
        _wait_archived(sandbox, primary)
        yield Story(sandbox, primary, full)
    finally:
        sb.down(sandbox.root, programs, purge=True)


def test_find_disaster_gives_the_xid_with_its_epoch(story: Story) -> None:
    res = run_cli("find-disaster", "--json", "--table", "epoch_t", config=story.sandbox.config_path)
    assert res.returncode == 0, res.stderr
    found = [(d["xid"], d["full_xid"], d["kind"], d["rows"]) for d in json.loads(res.stdout)["disasters"]]
    assert (story.full % TWO32, story.full, "delete", 200) in found, found
    res = run_cli("find-disaster", "--table", "epoch_t", config=story.sandbox.config_path)
    assert res.returncode == 0, res.stderr
    assert f"--before-xid {story.full} " in res.stdout, res.stdout


@pytest.mark.parametrize("form", ["with epoch", "32-bit"])
def test_restore_before_xid_takes_both_forms(story: Story, form: str) -> None:
    xid = story.full if form == "with epoch" else story.full % TWO32
    target = story.sandbox.root / f"restored-{form.replace(' ', '-')}"
    try:
        res = run_cli("restore", "--before-xid", str(xid), "--target-dir", str(target), "--json",
                      config=story.sandbox.config_path)
        assert res.returncode == 0, res.stderr
        app = str(json.loads(res.stdout)["conninfo"]).replace("dbname=postgres", "dbname=app")
        assert _value(app, "select count(*) from epoch_t where id <= 200") == 200    # the DELETE undone
        assert _value(app, "select count(*) from epoch_t where id = 9001") == 0      # written after it
        assert _value(app, "select count(*) from epoch_t") == 1000
        assert _value(app, "select (pg_current_xact_id()::text::bigint >> 32)::int") == EPOCH
    finally:
        stop_restored(target, Programs())
        shutil.rmtree(target, ignore_errors=True)


def test_an_xid_of_another_epoch_does_not_match(story: Story) -> None:
    target = story.sandbox.root / "never"
    for epoch in (2, 7):
        res = run_cli("restore", "--before-xid", str(epoch * TWO32 + story.full % TWO32), "--target-dir",
                      str(target), config=story.sandbox.config_path)
        assert res.returncode == 1, (res.stdout, res.stderr)
        assert "no COMMIT" in res.stderr and f"{story.full} (epoch {EPOCH})" in res.stderr, res.stderr
        assert "Traceback" not in res.stderr
        assert not target.exists() or not any(target.iterdir())


@pytest.mark.parametrize("bad", ["abc", "12x", str(1 << 64), "2", "-5", "4294967296", "٣٤٥"])
def test_a_bad_xid_is_one_line_and_exit_2(story: Story, bad: str) -> None:
    target = story.sandbox.root / "never-bad"
    for option in ("--before-xid", "--to-xid"):
        res = run_cli("restore", f"{option}={bad}", "--target-dir", str(target), config=story.sandbox.config_path)
        assert res.returncode == 2, (bad, res.stdout, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr, res.stderr
        assert not target.exists()


def test_the_nearest_checkpoint_gives_the_epoch_without_a_backup_to_anchor_it(story: Story,
                                                                               programs: Programs) -> None:
    """Epochs' outward search (no backup's first segment to start from) on the real archive."""
    from pgdr.pg.lsn import parse_lsn
    from pgdr.restore.walscan import Epochs, archive_wal, find_transaction

    wal = archive_wal(story.sandbox.repo)
    ends = find_transaction(programs, wal, story.full % TWO32)
    assert len(ends) == 1
    assert Epochs(programs, wal).full(story.full % TWO32, parse_lsn(ends[0].commit.lsn)) == story.full


def test_an_xid_takes_the_epoch_nearest_its_reference_across_a_wraparound() -> None:
    from pgdr.restore.xid import full_xid

    assert full_xid(5, 2 * TWO32 + 4294967000) == 3 * TWO32 + 5               # just after a wraparound
    assert full_xid(4294967290, 3 * TWO32 + 10) == 2 * TWO32 + 4294967290     # just before one
    assert full_xid(1000, TWO32 + 900) == TWO32 + 1000
    assert full_xid(900, TWO32 + 1000) == TWO32 + 900
    assert full_xid(4294967290, 10) == 4294967290                             # never below epoch 0
