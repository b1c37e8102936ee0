"""Point-in-time restore and undo against real servers: one sandbox under writes suffers a
mass DELETE, a TRUNCATE and a DROP TABLE; each is found in the WAL, undone by restoring
to just before it, and its rows salvaged back while newer writes stay."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pgdr.pg.connect import session
from pgdr.pg.programs import Programs
from pgdr.repo.manifest import list_backups
from pgdr.repo.wal import WalArchive
from pgdr.restore.pitr import stop_restored
from pgdr.sandbox import sandbox as sb
from pgdr.sandbox.workload import Writer
from tests.conftest import run_cli, xid_of


@dataclass
class Story:
    sandbox: sb.Sandbox
    base: Path
    xid_delete: int
    xid_truncate: int
    xid_drop: int
    between: str                 # a server time between markers 'a' and 'b'
    acknowledged: list[int]
    new_items: list[tuple[int, int]]


@pytest.fixture(scope="module")
def story(base_dir: Path, programs: Programs) -> Iterator[Story]:
    root = base_dir / "pitr"
    sandbox = sb.up(root, programs, standbys=0)
    primary = sandbox.conninfo(sandbox.primary)
    try:
        with session(primary) as conn:
            conn.execute("create table audit_log (id int primary key, msg text not null)")
            conn.execute("insert into audit_log select g, 'entry ' || g from generate_series(1, 500) g")
            conn.execute("create table markers (name text primary key, at timestamptz default clock_timestamp())")
        res = run_cli("backup", config=sandbox.config_path)
        assert res.returncode == 0, res.stderr
        writer = Writer(primary).start()
        try:
            time.sleep(0.5)
            with session(primary) as conn:
                conn.execute("insert into markers (name) values ('a')")
                time.sleep(0.3)
                row = conn.execute("select clock_timestamp()::text as t").fetchone()
                assert row is not None
                between = row["t"]
                time.sleep(0.3)
                conn.execute("insert into markers (name) values ('b')")
            time.sleep(0.3)
            xid_delete = xid_of(primary, "delete from order_items")
            time.sleep(0.3)
            xid_truncate = xid_of(primary, "truncate documents")
            time.sleep(0.3)
            xid_drop = xid_of(primary, "drop table audit_log")
            time.sleep(0.3)
        finally:
            stats = writer.stop()
        # written after the disasters: new items for new orders, and one old key re-entered
        new_items = [(oid, 1) for oid in stats.acknowledged[-5:]]
        with session(primary) as conn:
            for oid, pid in new_items:
                conn.execute("insert into order_items values (%s, %s, 7)", (oid, pid))
            conn.execute("insert into order_items values (1, 9, 5)")  # was (1, 9, 3)
        time.sleep(1.5)  # the last commit is now clearly in the past
        yield Story(sandbox, root / "restores", xid_delete, xid_truncate, xid_drop, between,
                    list(stats.acknowledged), new_items)
    finally:
        sb.down(sandbox.root, programs, purge=True)


@contextmanager
def restored(story: Story, name: str, *args: str) -> Iterator[dict[str, Any]]:
    """Run `pgdr restore ... --json`; always stop and remove the restored server."""
    target = story.base / name
    story.base.mkdir(exist_ok=True)
    os.chmod(story.base, 0o755)
    try:
        res = run_cli("restore", *args, "--target-dir", str(target), "--json", config=story.sandbox.config_path)
        assert res.returncode == 0, res.stderr
        yield json.loads(res.stdout)
    finally:
        stop_restored(target, Programs())
        shutil.rmtree(target, ignore_errors=True)


def _app(info: dict[str, Any]) -> str:
    return str(info["conninfo"]).replace("dbname=postgres", "dbname=app")


def _count(conninfo: str, sql: str) -> int:
    with session(conninfo) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return int(next(iter(row.values())))


def test_find_disaster_names_each_disaster_and_its_xid(story: Story) -> None:
    res = run_cli("find-disaster", "--json", config=story.sandbox.config_path)
    assert res.returncode == 0, res.stderr
    found = {(d["xid"], d["kind"], d["table"]): d for d in json.loads(res.stdout)["disasters"]}
    assert (story.xid_delete, "delete", "public.order_items") in found
    assert found[(story.xid_delete, "delete", "public.order_items")]["rows"] == 60000
    assert (story.xid_truncate, "truncate", "public.documents") in found
    assert (story.xid_drop, "drop", "public.audit_log") in found  # named though dropped
    # the writer's one-row inserts are never reported
    assert all(d[1] in ("delete", "truncate", "drop") for d in found)
    res = run_cli("find-disaster", "--json", "--table", "documents", "--kinds", "truncate,drop",
                  config=story.sandbox.config_path)
    only = json.loads(res.stdout)["disasters"]
    assert [(d["xid"], d["kind"]) for d in only] == [(story.xid_truncate, "truncate")]


def test_undo_delete_then_merge_keeps_newer_rows(story: Story) -> None:
    primary = story.sandbox.conninfo(story.sandbox.primary)
    with restored(story, "undo-delete", "--before-xid", str(story.xid_delete)) as info:
        assert info["state"] == "promoted"
        assert f"before commit of transaction {story.xid_delete}" in info["reached"]["stopped"]
        source = _app(info)
        assert _count(source, "select count(*) from order_items") == 60000
        assert _count(source, "select count(*) from documents") == 200
        res = run_cli("salvage", "--from", source, "--into", primary + " password=s3cret-pw",
                      "--table", "order_items", "--merge", "--yes", "--json", config=story.sandbox.config_path)
        assert res.returncode == 0, res.stderr
        assert "s3cret-pw" not in res.stdout + res.stderr
        merged = json.loads(res.stdout)
    assert (merged["inserted"], merged["skipped"]) == (59999, 1)
    assert _count(primary, "select count(*) from order_items") == 60000 + len(story.new_items)
    assert _count(primary, "select quantity from order_items where order_id = 1 and product_id = 9") == 5
    for oid, pid in story.new_items:
        assert _count(primary, f"select count(*) from order_items where order_id = {oid} and product_id = {pid}") == 1


def test_undo_truncate_into_a_new_table(story: Story) -> None:
    primary = story.sandbox.conninfo(story.sandbox.primary)
    with restored(story, "undo-truncate", "--undo-xid", str(story.xid_truncate)) as info:
        source = _app(info)
        assert _count(source, "select count(*) from documents") == 200
        assert _count(source, "select count(*) from order_items") == 0  # the DELETE came before
        res = run_cli("salvage", "--from", source, "--into", primary, "--table", "documents",
                      "--as", "documents_back", "--json", config=story.sandbox.config_path)
        assert res.returncode == 0, res.stderr
    assert _count(primary, "select count(*) from documents_back") == 200
    assert _count(primary, "select count(*) from documents") == 0  # never touched


def test_undo_drop_table(story: Story) -> None:
    primary = story.sandbox.conninfo(story.sandbox.primary)
    with restored(story, "undo-drop", "--before-xid", str(story.xid_drop)) as info:
        source = _app(info)
        assert _count(source, "select count(*) from audit_log") == 500
        res = run_cli("salvage", "--from", source, "--into", primary, "--table", "audit_log",
                      "--as", "audit_log", config=story.sandbox.config_path)
        assert res.returncode == 0, res.stderr
    assert _count(primary, "select count(*) from audit_log") == 500


def test_to_time_lands_between_the_expected_commits(story: Story) -> None:
    with restored(story, "to-time", "--to-time", story.between, "--pause") as info:
        assert info["state"] == "paused"  # still in recovery, at the target, for a look first
        source = _app(info)
        with session(source) as conn:
            names = [r["name"] for r in conn.execute("select name from markers order by 1")]
            ids = {r["id"] for r in conn.execute("select id from orders where id > 30000")}
    assert names == ["a"]
    # the writer's acknowledged commits that survived are exactly a prefix of them
    kept = [i for i in story.acknowledged if i in ids]
    assert kept == story.acknowledged[:len(kept)] and 0 < len(kept) < len(story.acknowledged)
    assert info["record"] and Path(info["record"]).exists()
    record = json.loads(Path(info["record"]).read_text())
    assert record["backup_id"] == info["backup_id"] and record["reached"]["lsn"]


def test_target_past_the_archive_end_is_one_clear_line(story: Story) -> None:
    target = story.base / "past-end"
    from datetime import UTC, datetime, timedelta

    when = (datetime.now(UTC) - timedelta(seconds=0.5)).isoformat()
    res = run_cli("restore", "--to-time", when, "--target-dir", str(target), config=story.sandbox.config_path)
    assert res.returncode == 1
    assert "past the end of the archive" in res.stderr and "--latest" in res.stderr
    assert "Traceback" not in res.stderr and not target.exists()
    res = run_cli("restore", "--to-time", "2001-01-01 00:00+00", "--target-dir", str(target),
                  config=story.sandbox.config_path)
    assert res.returncode == 1 and "before the oldest backup" in res.stderr


def test_missing_segment_is_named_with_the_reachable_point(story: Story) -> None:
    repo = story.sandbox.repo
    segments = sorted(p for p in repo.wal_dir.glob("*.zst") if not p.name.endswith(".history.zst"))
    victim = segments[-1]  # after the backup's stop segment, before the open .partial
    assert victim.name[:24] > str(list_backups(repo)[-1].stop_wal)
    hidden = victim.with_name("." + victim.name + ".hidden")
    victim.rename(hidden)
    target = story.base / "gap"
    try:
        res = run_cli("restore", "--latest", "--target-dir", str(target), config=story.sandbox.config_path)
    finally:
        hidden.rename(victim)
    assert res.returncode == 1, res.stdout
    assert f"WAL segment {victim.name.removesuffix('.zst')} is missing" in res.stderr
    assert "reaches" in res.stderr and "Traceback" not in res.stderr
    assert not target.exists()


def test_wal_fetch_serves_the_open_partial_segment_padded(story: Story, tmp_path: Path) -> None:
    archive = WalArchive(story.sandbox.repo)
    partial = archive.partial()
    assert partial is not None
    name = partial[0].name()
    dest = tmp_path / name
    assert archive.fetch(name, dest)
    assert dest.stat().st_size == 16 * 1024 * 1024
    older = archive.segments()[0].name()
    assert archive.partial_path(older) is None
