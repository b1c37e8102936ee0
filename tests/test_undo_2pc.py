"""Undo of a two-phase transaction, end to end on a real server.

COMMIT PREPARED and ROLLBACK PREPARED run in a session of their own: the record that
finishes the transaction does not carry the prepared transaction's xid in its header (it
is in the record's body), so a search by xid that looks only at record headers (as
`pg_waldump -x` does) never finds it. Here a DELETE is prepared, other sessions write
before and after its COMMIT PREPARED, another DELETE is prepared and rolled back; then
find-disaster must name the first and not the second, and `restore --before-xid` must
restore exactly to just before the commit - counted with SQL on the restored server.

A TRUNCATE prepared before that commit and committed after it is still prepared on the
restored server, holding ACCESS EXCLUSIVE on its table: restore must report both
prepared transactions (gid, xid, owner, database, the statements that end them) and
never end them itself; salvage of the locked table must refuse at once, naming the
transaction, instead of waiting behind it; after the ROLLBACK PREPARED restore printed,
salvage copies every row."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pgdr.pg.connect import session
from pgdr.pg.programs import Programs
from pgdr.pg.waldump import read_chunk
from pgdr.restore.pitr import stop_restored
from pgdr.restore.walscan import archive_wal
from pgdr.sandbox import sandbox as sb
from tests.conftest import run_cli
from tests.test_undo import _wait_archived


@dataclass
class Story:
    sandbox: sb.Sandbox
    primary: str
    xid_commit: int        # DELETE ... id <= 300, prepared then COMMIT PREPARED
    xid_rollback: int      # DELETE ... id > 700, prepared then ROLLBACK PREPARED
    xid_truncate: int      # TRUNCATE undo_items, prepared before xid_commit's commit, committed after
    target: Path


def _value(conninfo: str, sql: str) -> Any:
    with session(conninfo) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return next(iter(row.values()))


def _prepare(conninfo: str, gid: str, statement: str) -> int:
    """Run statement in a transaction prepared as gid; its xid."""
    with session(conninfo) as conn:
        conn.execute("begin")
        conn.execute(statement)
        row = conn.execute("select txid_current()::bigint as x").fetchone()
        assert row is not None
        xid = int(row["x"])
        conn.execute(f"prepare transaction '{gid}'")
    return xid


@pytest.fixture(scope="module")
def story(base_dir: Path, programs: Programs) -> Iterator[Story]:
    root = base_dir / "undo2pc"
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sb.SERVER_SETTINGS, "max_prepared_transactions", 5)
        sandbox = sb.up(root, programs, standbys=0)
    primary = sandbox.conninfo(sandbox.primary)
    try:
        with session(primary) as conn:
            conn.execute("create table undo_orders (id int primary key, v text)")
            conn.execute("insert into undo_orders select g, 'o' || g from generate_series(1, 1000) g")
            conn.execute("create table undo_items (id int primary key, n int)")
            conn.execute("insert into undo_items select g, g from generate_series(1, 250) g")
        res = run_cli("backup", config=sandbox.config_path)
        assert res.returncode == 0, res.stderr
        xid_commit = _prepare(primary, "undo-c", "delete from undo_orders where id <= 300")
        xid_truncate = _prepare(primary, "undo-t", "truncate undo_items")
        with session(primary) as conn:       # between PREPARE and COMMIT PREPARED: must be kept
            conn.execute("insert into undo_orders values (5001, 'kept')")
            conn.execute("select pg_switch_wal()")    # the rows in one segment, the commit in the next
        with session(primary) as conn:       # another session finishes it
            conn.execute("commit prepared 'undo-c'")
        with session(primary) as conn:       # after the commit: must not be restored
            conn.execute("insert into undo_orders values (5002, 'after')")
            conn.execute("commit prepared 'undo-t'")
        xid_rollback = _prepare(primary, "undo-r", "delete from undo_orders where id > 700")
        with session(primary) as conn:
            conn.execute("rollback prepared 'undo-r'")
        _wait_archived(sandbox, primary)
        yield Story(sandbox, primary, xid_commit, xid_rollback, xid_truncate, root / "restored")
    finally:
        stop_restored(root / "restored", Programs())
        shutil.rmtree(root / "restored", ignore_errors=True)
        sb.down(sandbox.root, programs, purge=True)


@pytest.mark.parametrize("reader", ["native", "pg_waldump"])
def test_commit_prepared_is_found_and_rollback_prepared_is_not(story: Story, reader: str) -> None:
    env = {**os.environ, "PGDR_WAL_READER": reader}
    for extra in ((), ("--table", "undo_orders")):
        res = run_cli("find-disaster", "--json", *extra, config=story.sandbox.config_path, env=env)
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["reader"] == reader
        found = [(d["xid"], d["kind"], d["rows"], d["table"]) for d in json.loads(res.stdout)["disasters"]]
        assert (story.xid_commit, "delete", 300, "public.undo_orders") in found, found
        assert not any(xid == story.xid_rollback for xid, *_ in found), found


def test_both_readers_find_a_prepared_transactions_end_by_its_xid(story: Story, programs: Programs) -> None:
    """find_transaction's per-xid read: the COMMIT/ROLLBACK PREPARED record is found under
    the prepared transaction's xid, and both readers return the same for every segment."""
    chunks = archive_wal(story.sandbox.repo).chunks
    for xid, aborted in ((story.xid_commit, False), (story.xid_rollback, True)):
        hits = {}
        for reader in ("native", "pg_waldump"):
            results = [read_chunk(programs, chunk, ("Transaction",), xid, reader=reader) for chunk in chunks]
            assert {r.reader for r in results} == {reader}
            hits[reader] = [dataclasses.replace(r, reader="", error="error" if r.error else None) for r in results]
            found = [r.commits[xid] for r in results if xid in r.commits]
            assert len(found) == 1 and found[0].aborted is aborted, (reader, xid, found)
        assert hits["native"] == hits["pg_waldump"]


@pytest.fixture(scope="module")
def restored(story: Story) -> dict[str, Any]:
    """`restore --before-xid` of the COMMIT PREPARED, once; its JSON."""
    res = run_cli("restore", "--before-xid", str(story.xid_commit), "--target-dir", str(story.target), "--json",
                  config=story.sandbox.config_path)
    assert res.returncode == 0, res.stderr
    out: dict[str, Any] = json.loads(res.stdout)
    return out


def _app(restored: dict[str, Any]) -> str:
    return str(restored["conninfo"]).replace("dbname=postgres", "dbname=app")


def test_restore_before_a_commit_prepared_stops_just_before_it(restored: dict[str, Any]) -> None:
    app = _app(restored)
    assert _value(app, "select count(*) from undo_orders where id <= 300") == 300     # the DELETE undone
    assert _value(app, "select count(*) from undo_orders where id = 5001") == 1       # written before it: kept
    assert _value(app, "select count(*) from undo_orders where id = 5002") == 0       # written after it
    assert _value(app, "select count(*) from undo_orders") == 1001
    # the prepared transaction is still prepared there (its DELETE uncommitted), as it
    # was on the primary just before the commit
    assert _value(app, "select count(*) from pg_prepared_xacts where gid = 'undo-c'") == 1


def test_restore_reports_the_prepared_transactions_it_left(story: Story, restored: dict[str, Any]) -> None:
    """Both prepared transactions are reported with what ends them, and pgdr ended neither."""
    got = {p["gid"]: p for p in restored["prepared_transactions"]}
    assert set(got) == {"undo-c", "undo-t"}, got
    with session(_app(restored)) as conn:   # independently: still prepared, same xids
        rows = conn.execute("select gid, transaction::text::bigint as x, owner, database "
                            "from pg_prepared_xacts").fetchall()
    assert {r["gid"]: (r["x"], r["owner"], r["database"]) for r in rows} == {
        "undo-c": (story.xid_commit, "postgres", "app"), "undo-t": (story.xid_truncate, "postgres", "app")}
    for gid, xid in (("undo-c", story.xid_commit), ("undo-t", story.xid_truncate)):
        assert (got[gid]["xid"], got[gid]["owner"], got[gid]["database"]) == (xid, "postgres", "app")
        assert got[gid]["rollback"] == f"ROLLBACK PREPARED '{gid}'"
        assert got[gid]["commit"] == f"COMMIT PREPARED '{gid}'"
    assert "undo_items AccessExclusiveLock" in got["undo-t"]["locks"], got["undo-t"]
    assert "undo_orders RowExclusiveLock" in got["undo-c"]["locks"], got["undo-c"]


def test_salvage_names_the_prepared_transaction_locking_its_table(story: Story, restored: dict[str, Any]) -> None:
    app = _app(restored)
    res = run_cli("salvage", "--from", app, "--into", story.primary, "--table", "undo_items", timeout=120)
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert "'undo-t'" in res.stderr and "ROLLBACK PREPARED 'undo-t'" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert _value(story.primary, "select count(*) from pg_class where relname like 'undo_items_recovered%'") == 0
    # a prepared DELETE (ROW EXCLUSIVE) does not block reading its table's rows
    res = run_cli("salvage", "--from", app, "--into", story.primary, "--table", "undo_orders", "--json")
    assert res.returncode == 0, res.stderr
    copied = json.loads(res.stdout)["target_table"]
    assert _value(story.primary, f"select count(*) from {copied}") == 1001
    # the statement restore printed, run where it said: then the rows come back
    ends = {p["gid"]: p for p in restored["prepared_transactions"]}["undo-t"]
    with session(str(restored["conninfo"]).replace("dbname=postgres", f"dbname={ends['run_in_database']}")) as conn:
        conn.execute(ends["rollback"])
    res = run_cli("salvage", "--from", app, "--into", story.primary, "--table", "undo_items", "--json")
    assert res.returncode == 0, res.stderr
    copied = json.loads(res.stdout)["target_table"]
    assert _value(story.primary, f"select count(*) from {copied}") == 250
    assert _value(app, "select count(*) from pg_prepared_xacts where gid = 'undo-c'") == 1   # untouched


def test_restore_before_a_rolled_back_prepared_transaction_refuses(story: Story) -> None:
    target = story.sandbox.root / "never"
    res = run_cli("restore", "--before-xid", str(story.xid_rollback), "--target-dir", str(target),
                  config=story.sandbox.config_path)
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert "rolled back" in res.stderr and "Traceback" not in res.stderr
    assert not target.exists() or not any(target.iterdir())


@pytest.mark.parametrize("pause", [False, True])
def test_restore_says_on_the_terminal_how_to_end_each_prepared_transaction(story: Story, pause: bool) -> None:
    """Paused in recovery (--pause), PostgreSQL lists no prepared transaction until the end of
    recovery: restore says so instead of reporting none."""
    target = story.sandbox.root / f"restored-text-{pause}"
    try:
        res = run_cli("restore", "--before-xid", str(story.xid_commit), *(["--pause"] if pause else []),
                      "--target-dir", str(target), config=story.sandbox.config_path)
        assert res.returncode == 0, res.stderr
        assert ("only after promotion" in res.stderr) is pause, res.stderr
        if not pause:
            lines = [ln for ln in res.stderr.splitlines() if "undo-t" in ln]
            assert any("prepared transaction 'undo-t'" in ln and f"xid {story.xid_truncate}" in ln
                       and "database app" in ln and "undo_items AccessExclusiveLock" in ln for ln in lines), res.stderr
            assert any("ROLLBACK PREPARED" in ln and "dbname=app" in ln for ln in lines), res.stderr
        else:  # what the note promises: promoted, the server lists it
            conninfo = re.search(r'connect: psql "([^"]+)"', res.stdout).group(1)  # type: ignore[union-attr]
            with session(conninfo) as conn:
                conn.execute("select pg_promote(wait => true, wait_seconds => 60)")
                gids = [r["gid"] for r in conn.execute("select gid from pg_prepared_xacts").fetchall()]
            assert "undo-t" in gids, gids
        assert "Traceback" not in res.stderr
    finally:
        stop_restored(target, Programs())
        shutil.rmtree(target, ignore_errors=True)


def test_salvage_gives_up_on_any_other_lock_after_its_bounded_wait(story: Story, restored: dict[str, Any],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A lock held by an ordinary session (not a prepared transaction) on the restored
    server: salvage waits lock_timeout, then fails naming the wait; nothing is created."""
    from pgdr.restore import salvage as salvage_mod

    monkeypatch.setattr(salvage_mod, "LOCK_WAIT_S", 1)
    app = _app(restored)
    with session(app) as conn:     # a table no prepared transaction holds (the restored server is writable)
        conn.execute("create table undo_free (id int primary key)")
        conn.execute("insert into undo_free values (1)")
    with session(app, autocommit=False, statement_timeout=30) as holder:
        holder.execute("lock table undo_free in access exclusive mode nowait")
        with pytest.raises(salvage_mod.SalvageFailed, match="waited 1s for a lock"):
            salvage_mod.salvage(app, story.primary, "undo_free")
        holder.rollback()
    assert _value(story.primary, "select count(*) from pg_class where relname like 'undo_free%'") == 0
