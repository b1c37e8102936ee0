"""Undo end to end on real servers, with the names people actually use: tables created
after the newest backup, quoted schema and table names (spaces, upper case, a double
quote, non-ASCII letters), generated columns. Each disaster is found by name with
`find-disaster`, the name it prints is pasted into `salvage`, and every outcome is
counted with SQL on the servers, never with pgdr's own report."""

from __future__ import annotations

import json
import shlex
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pgdr.backup.relmap import RelmapRecorder, record_snapshot, snapshots_dir
from pgdr.errors import UsageError
from pgdr.pg.connect import session
from pgdr.pg.ident import parse_table, quote
from pgdr.pg.lsn import format_lsn, parse_lsn
from pgdr.pg.programs import Programs
from pgdr.pg.waldump import read_chunk
from pgdr.repo.layout import Repository
from pgdr.repo.wal import WalArchive
from pgdr.restore.pitr import stop_restored
from pgdr.restore.salvage import salvage
from pgdr.restore.walscan import archive_wal, relation_names
from pgdr.sandbox import sandbox as sb
from tests.conftest import run_cli, xid_of

ITEMS = '"Sales Dept"."Order Items"'
UMLAUT = 'public."Ärger""Fälle"'


@dataclass
class Story:
    sandbox: sb.Sandbox
    primary: str
    xid_drop: int
    xid_delete: int
    xid_truncate: int
    restored: str          # the app database of an instance restored to just before xid_drop
    big_record_from: str   # insert position just before a 10 MB WAL record crossing a segment boundary
    huge_record_from: str  # ... just before a 20 MB record, longer than a segment


def _value(conninfo: str, sql: str) -> Any:
    with session(conninfo) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return next(iter(row.values()))


def _wait_named(sandbox: sb.Sandbox, names: set[str], timeout: float = 90) -> None:
    """Until the archiver's relation-map snapshots name every table in `names`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        known = {f"{r.schema_name}.{r.name}" for r in relation_names(sandbox.repo).values()}
        if names <= known:
            return
        time.sleep(0.5)
    raise AssertionError(f"no relation-map snapshot named {names} within {timeout:.0f}s")


def _wait_archived(sandbox: sb.Sandbox, conninfo: str, timeout: float = 120) -> None:
    with session(conninfo) as conn:
        row = conn.execute("select pg_walfile_name(pg_current_wal_lsn()) as f").fetchone()
        conn.execute("select pg_switch_wal()")
    assert row is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(f.name >= row["f"] for f in WalArchive(sandbox.repo).files()):
            return
        time.sleep(0.2)
    raise AssertionError(f"{row['f']} not archived within {timeout:.0f}s")


@pytest.fixture(scope="module")
def story(base_dir: Path, programs: Programs) -> Iterator[Story]:
    root = base_dir / "undo"
    sandbox = sb.up(root, programs, standbys=0)
    primary = sandbox.conninfo(sandbox.primary)
    target = root / "restored"
    try:
        res = run_cli("backup", config=sandbox.config_path)
        assert res.returncode == 0, res.stderr
        # everything below exists only after the newest backup
        with session(primary) as conn:
            conn.execute('create schema "Sales Dept"')
            conn.execute(f"create table {ITEMS} (id int primary key, qty int not null, "
                         "price numeric default 1.5, total numeric generated always as (qty * price) stored, "
                         "note text)")
            conn.execute(f"insert into {ITEMS} (id, qty, price, note) "
                         "select g, g % 7 + 1, g / 10.0, 'n' || g from generate_series(1, 300) g")
            conn.execute(f'create table {UMLAUT} ("Schlüssel" int primary key, "Wert" text)')
            conn.execute(f"insert into {UMLAUT} select g, 'w' || g from generate_series(1, 150) g")
            conn.execute("create table fresh_log (id serial primary key, msg text default 'none')")
            conn.execute("insert into fresh_log select g, 'm' || g from generate_series(1, 250) g")
        _wait_named(sandbox, {"Sales Dept.Order Items", 'public.Ärger"Fälle', "public.fresh_log"})
        with session(primary) as conn:  # the second record starts ~10 MB into a segment, ends ~4 MB into the next
            conn.execute("select pg_switch_wal()")
            conn.execute("select pg_logical_emit_message(false, 'pgdr-test', repeat('x', 10000000))")
            row = conn.execute("select pg_current_wal_insert_lsn()::text as l").fetchone()
            assert row is not None
            big_from = row["l"]
            conn.execute("select pg_logical_emit_message(false, 'pgdr-test', repeat('x', 10000000))")
            # and one record longer than a whole segment: 20 MB starting ~15 MB into a
            # 16 MB segment spans three (a filler message moves the insert position there)
            row = conn.execute("select pg_current_wal_insert_lsn()::text as l").fetchone()
            assert row is not None
            size = sandbox.repo.wal_segment_size
            filler = (15 << 20) - parse_lsn(row["l"]) % size
            if filler > 0:
                conn.execute("select pg_logical_emit_message(false, 'pgdr-test', repeat('f', %s))", (filler,))
            row = conn.execute("select pg_current_wal_insert_lsn()::text as l").fetchone()
            assert row is not None
            huge_from = row["l"]
            conn.execute("select pg_logical_emit_message(false, 'pgdr-test', repeat('y', 20000000))")
        xid_drop = xid_of(primary, "drop table fresh_log")
        xid_delete = xid_of(primary, f"delete from {ITEMS} where id <= 200")
        xid_truncate = xid_of(primary, f"truncate {UMLAUT}")
        with session(primary) as conn:  # newer writes that undo must keep
            conn.execute(f"update {ITEMS} set qty = 99 where id = 250")
            conn.execute(f"insert into {UMLAUT} values (1000, 'neu')")
        _wait_archived(sandbox, primary)
        res = run_cli("restore", "--before-xid", str(xid_drop), "--target-dir", str(target), "--json",
                      config=sandbox.config_path)
        assert res.returncode == 0, res.stderr
        restored = str(json.loads(res.stdout)["conninfo"]).replace("dbname=postgres", "dbname=app")
        yield Story(sandbox, primary, xid_drop, xid_delete, xid_truncate, restored, big_from, huge_from)
    finally:
        stop_restored(target, Programs())
        shutil.rmtree(target, ignore_errors=True)
        sb.down(sandbox.root, programs, purge=True)


def _find(story: Story, *args: str) -> list[dict[str, Any]]:
    res = run_cli("find-disaster", "--json", *args, config=story.sandbox.config_path)
    assert res.returncode == 0, res.stderr
    return list(json.loads(res.stdout)["disasters"])


def test_every_disaster_is_named_though_its_table_is_newer_than_the_backup(story: Story) -> None:
    found = {(d["xid"], d["kind"]): d["table"] for d in _find(story)}
    assert found[(story.xid_drop, "drop")] == "public.fresh_log"
    assert found[(story.xid_delete, "delete")] == ITEMS
    assert found[(story.xid_truncate, "truncate")] == UMLAUT
    assert not any(t.startswith("(relation") for t in found.values())


def test_table_filter_reads_names_as_postgresql_does(story: Story) -> None:
    for spelling in ("fresh_log", "FRESH_LOG", "public.fresh_log", '"public"."fresh_log"'):
        assert [(d["xid"], d["kind"]) for d in _find(story, "--table", spelling)] == [(story.xid_drop, "drop")]
    for spelling in (ITEMS, '"Order Items"', ' "Sales Dept" . "Order Items" '):
        hits = _find(story, "--table", spelling)
        assert [(d["xid"], d["kind"], d["rows"]) for d in hits] == [(story.xid_delete, "delete", 200)]
    assert [d["xid"] for d in _find(story, "--table", UMLAUT)] == [story.xid_truncate]
    assert _find(story, "--table", '"order items"') == []      # quoted: case matters
    res = run_cli("find-disaster", "--table", "No_Such_Table", config=story.sandbox.config_path)
    assert res.returncode == 0 and "no table no_such_table in any relation map" in res.stderr
    assert _find(story, "--table", '"Fresh_Log"') == []
    res = run_cli("find-disaster", "--table", "Sales Dept.Order Items", config=story.sandbox.config_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr and '"Order Items"' in res.stderr


def test_a_record_reaching_far_into_the_next_segment_is_read_whole(story: Story, programs: Programs) -> None:
    """pg_waldump never reads past -e: a record crossing into the next segment must still
    be read by the chunk it starts in (here one whose remainder fills 4 MB of the next)."""
    size = story.sandbox.repo.wal_segment_size
    start = parse_lsn(story.big_record_from)
    chunk = next(c for c in archive_wal(story.sandbox.repo).chunks if c.segment.segno == start // size)
    assert (start + 10_000_000) // size == chunk.segment.segno + 1
    assert (start + 10_000_000) % size > 2 * 1024 * 1024
    result = read_chunk(programs, chunk, ("LogicalMessage",), None)
    assert result.error is None
    assert result.last_lsn is not None and parse_lsn(result.last_lsn) >= start
    # and the next chunk does not print it a second time, nor lose what follows it
    after = read_chunk(programs, next(c for c in archive_wal(story.sandbox.repo).chunks
                                      if c.segment.segno == chunk.segment.segno + 1), ("LogicalMessage",), None)
    assert after.last_lsn is None or parse_lsn(after.last_lsn) >= (chunk.segment.segno + 1) * size


def test_narrowed_reads_find_the_same_as_the_full_scan(story: Story) -> None:
    """--table reads only the named table's Heap records (pg_waldump -R per file) plus the
    commits: the findings must be exactly the full scan's for that table."""
    everything = _find(story)
    for name in (ITEMS, UMLAUT, "public.fresh_log"):
        assert _find(story, "--table", name) == [d for d in everything if d["table"] == name]
    # and --kinds drop,truncate reads no Heap record at all (the commits name the files)
    assert _find(story, "--kinds", "drop,truncate") == [d for d in everything if d["kind"] in ("drop", "truncate")]


def test_a_record_longer_than_a_segment_is_read_whole(story: Story, programs: Programs) -> None:
    """A 20 MB record starts in one segment, fills the next and ends in the third: the
    chunk it starts in reads it whole, the one it fills reports nothing (and no error),
    and the one it ends in goes on with the records after it."""
    size = story.sandbox.repo.wal_segment_size
    start = parse_lsn(story.huge_record_from)
    chunks = {c.segment.segno: c for c in archive_wal(story.sandbox.repo).chunks}
    first = start // size
    assert (start + 20_000_000) // size == first + 2
    head = read_chunk(programs, chunks[first], ("LogicalMessage",), None)
    assert head.error is None, head.error
    assert head.last_lsn is not None and parse_lsn(head.last_lsn) >= start
    middle = read_chunk(programs, chunks[first + 1], ("LogicalMessage",), None)
    assert middle.last_lsn is None
    tail = read_chunk(programs, chunks[first + 2], ("Transaction",), None)
    assert tail.error is None, tail.error
    after = dict(tail.commits)
    # the DROP follows in the same segment or a later one: whichever the archive holds
    for segno in sorted(n for n in chunks if n > first + 2):
        after.update(read_chunk(programs, chunks[segno], ("Transaction",), None).commits)
    assert story.xid_drop in after        # the DROP right after the huge record
    assert _scan(story)["errors"] == []


def test_printed_salvage_line_pastes_into_a_shell(story: Story) -> None:
    res = run_cli("find-disaster", "--table", ITEMS, config=story.sandbox.config_path)
    assert res.returncode == 0, res.stderr
    assert ITEMS in res.stdout   # the table column, quoted as SQL reads it
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("then: pgdr salvage"))
    words = shlex.split(line.removeprefix("then: "))
    assert words[words.index("--table") + 1] == ITEMS


def test_until_and_since_bound_the_findings(story: Story) -> None:
    everything = _find(story)
    drop_time = next(d["commit_time"] for d in everything if d["xid"] == story.xid_drop)
    after_drop = (datetime.fromisoformat(drop_time) + timedelta(microseconds=1)).isoformat()
    assert [d["xid"] for d in _find(story, "--until", drop_time) if d["xid"] >= story.xid_drop] == [story.xid_drop]
    assert story.xid_drop not in {d["xid"] for d in _find(story, "--since", after_drop)}
    res = run_cli("find-disaster", "--since", after_drop, "--until", drop_time, config=story.sandbox.config_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr


def _scan(story: Story, *args: str) -> dict[str, Any]:
    res = run_cli("find-disaster", "--json", *args, config=story.sandbox.config_path)
    assert res.returncode == 0, res.stderr
    return dict(json.loads(res.stdout))


def test_since_bounds_what_is_read_not_only_what_is_shown(story: Story) -> None:
    """The segments before the window are skipped (found by bisecting commit times or
    straight from an LSN), and every disaster inside it is still found in full."""
    everything = _scan(story)
    by_xid = {d["xid"]: d for d in everything["disasters"]}
    drop = by_xid[story.xid_drop]
    later = {(story.xid_delete, "delete", 200), (story.xid_truncate, "truncate", None)}
    for since in ((datetime.fromisoformat(drop["commit_time"]) + timedelta(microseconds=1)).isoformat(),
                  format_lsn(parse_lsn(drop["lsn"]) + 1)):
        bounded = _scan(story, "--since", since)
        assert bounded["segments"] < everything["segments"] - 1
        assert {(d["xid"], d["kind"], d["rows"]) for d in bounded["disasters"]} == later
        assert bounded["errors"] == []


def test_lsn_bounds_exclude_a_disaster_just_outside(story: Story) -> None:
    drop = next(d for d in _find(story) if d["xid"] == story.xid_drop)
    at = parse_lsn(drop["lsn"])
    assert story.xid_drop not in {d["xid"] for d in _find(story, "--until", format_lsn(at - 1))}
    assert story.xid_drop not in {d["xid"] for d in _find(story, "--since", format_lsn(at + 1))}
    assert [d["xid"] for d in _find(story, "--since", drop["lsn"], "--until", drop["lsn"])] == [story.xid_drop]
    for bad in (("--since", "0/ZZ"), ("--since", format_lsn(at + 1), "--until", format_lsn(at))):
        res = run_cli("find-disaster", *bad, config=story.sandbox.config_path)
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr


def test_dropped_new_table_is_restored_and_salvaged_by_its_printed_name(story: Story) -> None:
    assert _value(story.restored, "select count(*) from fresh_log") == 250
    printed = next(d["table"] for d in _find(story, "--kinds", "drop") if d["xid"] == story.xid_drop)
    res = run_cli("salvage", "--from", story.restored, "--into", story.primary, "--table", printed, "--json",
                  config=story.sandbox.config_path)
    assert res.returncode == 0, res.stderr
    target = json.loads(res.stdout)["target_table"]
    assert _value(story.primary, f"select count(*) from {target}") == 250
    assert _value(story.primary, f"select sum(id) from {target}") == sum(range(1, 251))
    # its serial's sequence was dropped with it: the copy keeps the values and the plain default
    with session(story.primary) as conn:
        conn.execute(f"insert into {target} (id) values (1000)")
    assert _value(story.primary, f"select msg from {target} where id = 1000") == "none"


def test_merge_into_quoted_table_keeps_newer_rows_and_recomputes_generated(story: Story) -> None:
    printed = next(d["table"] for d in _find(story, "--kinds", "delete") if d["xid"] == story.xid_delete)
    res = run_cli("salvage", "--from", story.restored, "--into", story.primary, "--table", printed,
                  "--merge", "--yes", "--json", config=story.sandbox.config_path)
    assert res.returncode == 0, res.stderr
    assert _value(story.primary, f"select count(*) from {ITEMS}") == 300
    assert _value(story.primary, f"select qty from {ITEMS} where id = 250") == 99   # the newer value stays
    assert _value(story.primary, f"select count(*) from {ITEMS} where total is distinct from qty * price") == 0
    assert _value(story.primary, f"select sum(id) from {ITEMS}") == sum(range(1, 301))
    # non-ASCII, quoted, with a double quote inside: merged the same way
    printed = next(d["table"] for d in _find(story, "--kinds", "truncate") if d["xid"] == story.xid_truncate)
    res = run_cli("salvage", "--from", story.restored, "--into", story.primary, "--table", printed,
                  "--merge", "--yes", config=story.sandbox.config_path)
    assert res.returncode == 0, res.stderr
    assert _value(story.primary, f'select count(*) from {UMLAUT}') == 151
    assert _value(story.primary, f"select \"Wert\" from {UMLAUT} where \"Schlüssel\" = 1000") == "neu"


def test_new_table_reproduces_generated_columns_and_defaults(story: Story) -> None:
    res = run_cli("salvage", "--from", story.restored, "--into", story.primary, "--table", ITEMS, "--as",
                  '"Sales Dept"."Copy ""A"""', config=story.sandbox.config_path)
    assert res.returncode == 0, res.stderr
    copy = '"Sales Dept"."Copy ""A"""'
    assert _value(story.primary, f"select count(*) from {copy}") == 300
    assert _value(story.primary, f"select count(*) from {copy} where total is distinct from qty * price") == 0
    generated = _value(story.primary, f"select attgenerated from pg_attribute where attrelid = '{copy}'::regclass "
                                      "and attname = 'total'")
    assert generated == "s"
    with session(story.primary) as conn:   # the default came along: price 1.5, total recomputed
        conn.execute(f"insert into {copy} (id, qty) values (1000, 4)")
    assert float(_value(story.primary, f"select total from {copy} where id = 1000")) == 6.0
    res = run_cli("salvage", "--from", story.restored, "--into", story.primary, "--table", ITEMS, "--as",
                  '"Sales Dept"."Copy ""A"""', config=story.sandbox.config_path)
    assert res.returncode == 2 and "already exists" in res.stderr


def test_salvages_in_the_same_second_never_collide(story: Story) -> None:
    # occupy the default names of the next seconds, so every salvage below collides at least once
    now = datetime.now(UTC)
    taken = [f"fresh_log_recovered_{(now + timedelta(seconds=s)).strftime('%Y%m%d%H%M%S')}" for s in range(30)]
    with session(story.primary) as conn:
        for name in taken:
            conn.execute(f"create table if not exists {quote(name)} (x int)")
    results: list[str] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            results.append(salvage(story.restored, story.primary, "fresh_log").target_table)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert len(set(results)) == 3 and not set(results) & {f"public.{n}" for n in taken}
    for name in results:
        assert _value(story.primary, f"select count(*) from {name}") == 250
    for name in taken:
        assert _value(story.primary, f"select count(*) from {quote(name)}") == 0


def test_merge_without_primary_key_is_refused_and_changes_nothing(story: Story) -> None:
    for conninfo in (story.restored, story.primary):
        with session(conninfo) as conn:
            conn.execute('create table "No Key" (v int)')
    with session(story.restored) as conn:
        conn.execute('insert into "No Key" select generate_series(1, 10)')
    res = run_cli("salvage", "--from", story.restored, "--into", story.primary, "--table", '"No Key"',
                  "--merge", "--yes", config=story.sandbox.config_path)
    assert res.returncode == 2 and "no primary key" in res.stderr and "Traceback" not in res.stderr
    assert _value(story.primary, 'select count(*) from "No Key"') == 0


def test_identifier_parsing_matches_postgresql(story: Story) -> None:
    """What PostgreSQL itself makes of each spelling (parse_ident), beside ours."""
    spellings = ["Orders", "public.Orders", '"Sales Dept"."Order Items"', '"a""b"', "Ärger",
                 'x."Ä b"', "_t$1", ' s . t ']
    with session(story.primary) as conn:
        for text in spellings:
            row = conn.execute("select parse_ident(%s) as p", (text,)).fetchone()
            assert row is not None
            ours = parse_table(text)
            assert ([ours.schema] if ours.schema else []) + [ours.name] == row["p"], text
            back = conn.execute("select parse_ident(%s) as p", (str(ours),)).fetchone()
            assert back is not None and back["p"] == row["p"], str(ours)
    for bad in ("a.b.c", '"x', "", "a b", "1abc", '""', "a.", "a-b", "t;drop"):
        with pytest.raises(UsageError):
            parse_table(bad)


def test_relation_map_snapshots_are_stored_only_on_change_and_survive_a_dead_server(story: Story,
                                                                                   tmp_path: Path) -> None:
    # A repository of the test's own: the sandbox's archiver records snapshots into its
    # repository too (within ~1 s of a new table file), and its copy of snap_probe's
    # map raced this test's (two files 7 ms apart in one CI run).
    repo = Repository(tmp_path / "own-repo")
    repo.root.mkdir()
    assert record_snapshot(repo, story.primary) is not None  # the first map is always stored
    assert record_snapshot(repo, story.primary) is None      # unchanged: nothing new
    with session(story.primary) as conn:
        conn.execute("create table snap_probe (x int)")
    path = record_snapshot(repo, story.primary)
    assert path is not None and "snap_probe" in path.read_text()
    assert path.stat().st_mode & 0o777 == 0o644
    # a server that refuses connections: the recorder reports once and never raises
    recorder = RelmapRecorder(repo, interval=0.01)
    recorder.tick("host=127.0.0.1 port=1 dbname=app user=postgres connect_timeout=2")
    assert recorder.thread is not None
    recorder.thread.join(30)
    assert recorder.last_error and not recorder.thread.is_alive()
    assert sorted(snapshots_dir(repo).glob("*.json"))[-1] == path
