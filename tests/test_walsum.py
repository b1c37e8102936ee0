"""The native WAL reader (pgdr._walsum) against pg_waldump, on WAL from real servers.

A DIFFERENTIAL test: one archive per PostgreSQL major (15, and 18 from tests/pg18.py)
holding deletes, updates, HOT updates, UPDATE+INIT, TRUNCATE (with wal_level=logical's
Heap TRUNCATE), DROP, CREATE, subtransactions, aborts, two-phase COMMIT/ROLLBACK
PREPARED, a restore point, a record longer than a segment, pg_switch_wal and a timeline
switch; every segment is summarized by both readers, with each record filter pgdr uses,
and the ChunkResults must be identical. The independent checker is pg_waldump itself
(PostgreSQL's own decoder); the workload's own xids say the summary is not empty.

Fault injection: copies of real segments with flipped bytes, a zeroed page, or cut
short, at offsets spread over the segment: the native reader must stop where pg_waldump
stops, and report nothing pg_waldump does not.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard

from pgdr.pg import walsum
from pgdr.pg.connect import session
from pgdr.pg.lsn import parse_lsn
from pgdr.pg.programs import Programs
from pgdr.pg.waldump import Chunk, ChunkResult, read_chunk
from pgdr.repo.wal import WalArchive
from pgdr.restore.walscan import archive_wal
from pgdr.sandbox import sandbox as sb
from tests.conftest import run_cli, xid_of
from tests.pg18 import pg18_programs

FILTERS: list[tuple[tuple[str, ...], bool]] = [
    (("Heap", "Transaction", "Storage"), False),   # find-disaster
    (("Transaction",), False),                     # reachable_end, find_transaction, --since/--until
    (("XLOG",), False),                            # find_restore_point
    (("Heap", "Transaction", "Storage"), True),    # find-disaster --table (relation passes)
]


def test_the_native_reader_is_built_here() -> None:
    """CI must exercise the native reader, not silently the fallback."""
    assert walsum.module() is not None, "pgdr._walsum is not built: run `pip install -e .` (scripts/bootstrap.sh)"


def test_crc32c_paths_agree_with_each_other_and_the_standard() -> None:
    """The CRC every record is checked with: the CRC-32C check value, and the
    instruction path (three interleaved streams on long inputs) equal to the table path
    at every length around the stream and block boundaries."""
    native = walsum.module()
    assert native is not None
    assert native.crc32c(b"123456789") == native.crc32c(b"123456789", True) == 0xE3069283
    rng = random.Random(32)
    data = rng.randbytes(3 * 8192 * 2 + 1000)
    for n in (0, 1, 7, 8, 9, 767, 768, 769, 3 * 256 * 5 + 3, 8191, 24575, 24576, 24577, 40000, len(data)):
        for start in (0, 1, 5):
            chunk = data[start:start + n]
            assert native.crc32c(chunk) == native.crc32c(chunk, True), (n, start)


@dataclass
class Story:
    programs: Programs
    chunks: list[Chunk]
    xids: dict[str, int]
    relations: tuple[str, ...]
    restore_point: str
    config: Path


def _lsn(conninfo: str, sql: str = "select pg_current_wal_insert_lsn()::text as l") -> int:
    with session(conninfo) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return parse_lsn(str(row["l"]))


def _wait(what: str, check, timeout: float = 120) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout:.0f}s")
        time.sleep(0.2)


def _workload(old: str, xids: dict[str, int]) -> None:
    with session(old) as conn:
        conn.execute("create table rows_a (id int primary key, v int, pad text)")
        conn.execute("insert into rows_a select g, 0, repeat('a', 100) from generate_series(1, 3000) g")
        conn.execute("create table hot_b (id int primary key, v int) with (fillfactor = 50)")
        conn.execute("insert into hot_b select g, 0 from generate_series(1, 2000) g")
        conn.execute("create table doomed (id int)")
        conn.execute("insert into doomed select generate_series(1, 100)")
        conn.execute("create table trunc_c (id int)")
        conn.execute("insert into trunc_c select generate_series(1, 100)")
        conn.execute('create table "Odd Name" (id int)')
    xids["delete"] = xid_of(old, "delete from rows_a where id <= 500")
    xids["update"] = xid_of(old, "update rows_a set v = v + 1, pad = repeat('u', 100) where id > 500")  # +INIT
    xids["hot"] = xid_of(old, "update hot_b set v = v + 1")
    xids["truncate"] = xid_of(old, "truncate trunc_c")
    xids["drop"] = xid_of(old, "drop table doomed")
    with session(old, autocommit=False) as conn:          # subtransactions, one rolled back
        conn.execute("insert into \"Odd Name\" values (1)")
        conn.execute("savepoint s1")
        conn.execute("create table sub_made (id int)")
        conn.execute("delete from rows_a where id between 501 and 700")
        conn.execute("savepoint s2")
        conn.execute("delete from hot_b where id <= 100")
        conn.execute("rollback to savepoint s2")
        row = conn.execute("select txid_current()::bigint as x").fetchone()
        conn.commit()
    assert row is not None
    xids["subxacts"] = int(row["x"])
    with session(old, autocommit=False) as conn:          # an abort that dropped files
        conn.execute("create table never (id int)")
        conn.execute("delete from rows_a where id > 2900")
        row = conn.execute("select txid_current()::bigint as x").fetchone()
        conn.rollback()
    assert row is not None
    xids["abort"] = int(row["x"])
    for gid, finish in (("walsum-c", "commit"), ("walsum-r", "rollback")):   # two-phase
        with session(old) as conn:
            conn.execute("begin")
            conn.execute("delete from hot_b where id between 1001 and 1100" if finish == "commit"
                          else "delete from hot_b where id between 1101 and 1200")
            row = conn.execute("select txid_current()::bigint as x").fetchone()
            conn.execute(f"prepare transaction '{gid}'")
            conn.execute(f"{finish} prepared '{gid}'")
        assert row is not None
        xids[f"2pc-{finish}"] = int(row["x"])
    with session(old) as conn:
        conn.execute("select pg_create_restore_point('walsum-rp')")
        # a record longer than a segment, then a segment switch
        conn.execute("select pg_logical_emit_message(false, 'walsum', repeat('L', 20000000))")
        conn.execute("select pg_switch_wal()")


@pytest.fixture(scope="module", params=["15", "18"])
def story(request: pytest.FixtureRequest, base_dir: Path, programs: Programs) -> Iterator[Story]:
    progs = programs if request.param == "15" else pg18_programs()
    root = base_dir / f"walsum{request.param}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sb.SERVER_SETTINGS, "wal_level", "logical")          # Heap TRUNCATE records
        mp.setitem(sb.SERVER_SETTINGS, "max_prepared_transactions", 5)
        sandbox = sb.up(root, progs, standbys=1)
    try:
        old = sandbox.conninfo(sandbox.primary)
        standby = next(n for n in sandbox.nodes if n.name != sandbox.primary.name)
        new = sandbox.conninfo(standby)
        xids: dict[str, int] = {}
        _workload(old, xids)
        end_tl1 = _lsn(old)
        _wait("the standby replays timeline 1",
              lambda: _lsn(new, "select pg_last_wal_replay_lsn()::text as l") >= end_tl1)
        # the timeline switch: the archiver follows the promoted standby
        assert run_cli("archiver", "stop", config=sandbox.config_path).returncode == 0
        sandbox.instance(sandbox.primary, progs).kill9()
        sandbox.instance(standby, progs).promote()
        started = run_cli("archiver", "start", config=sandbox.config_path)
        assert started.returncode == 0, started.stderr
        xids["tl2-delete"] = xid_of(new, "delete from rows_a where id between 2001 and 2400")
        xids["tl2-drop"] = xid_of(new, "drop table hot_b")
        with session(new) as conn:
            row = conn.execute("select pg_walfile_name(pg_current_wal_lsn()) as f, "
                               "pg_relation_filenode('rows_a') as n, "
                               "(select oid from pg_database where datname = current_database()) as d").fetchone()
            conn.execute("select pg_switch_wal()")
        assert row is not None
        last = row["f"]
        _wait(f"{last} archived", lambda: any(f.name >= last and f.name.startswith("00000002")
                                              for f in WalArchive(sandbox.repo).files()))
        wal = archive_wal(sandbox.repo)
        assert wal.timeline == 2
        yield Story(progs, wal.chunks, xids, (f"1663/{row['d']}/{row['n']}",), "walsum-rp", sandbox.config_path)
    finally:
        sb.down(sandbox.root, progs, purge=True)


def _same(result: ChunkResult) -> ChunkResult:
    """What both readers must agree on: all but which reader it was and the wording of
    the error (pg_waldump prefixes its program name; end_lsn is compared)."""
    return dataclasses.replace(result, reader="", note=None, error="error" if result.error else None)


def _both(programs: Programs, chunk: Chunk, rmgrs: tuple[str, ...], xid: int | None,
          relations: tuple[str, ...] = (), native: bool = True) -> tuple[ChunkResult, ChunkResult]:
    ref = read_chunk(programs, chunk, rmgrs, xid, relations=relations, reader="pg_waldump")
    nat = read_chunk(programs, chunk, rmgrs, xid, relations=relations)
    assert ref.reader == "pg_waldump" and (nat.reader == "native" or not native), nat.note
    return ref, nat


def test_both_readers_summarize_every_segment_alike(story: Story) -> None:
    merged = ChunkResult("all")
    for chunk in story.chunks:
        for rmgrs, by_relation in FILTERS:
            ref, nat = _both(story.programs, chunk, rmgrs, None, story.relations if by_relation else ())
            assert _same(nat) == _same(ref), (chunk.segment, rmgrs, by_relation)
            if rmgrs[0] == "Heap" and not by_relation:
                for attr in ("deletes", "updates", "creates", "commits", "heap_truncates", "restore_points"):
                    got = getattr(nat, attr)
                    if isinstance(got, list):
                        getattr(merged, attr).extend(got)
                    else:
                        getattr(merged, attr).update(got)
            if rmgrs == ("XLOG",):
                merged.restore_points.extend(nat.restore_points)
    # the workload is in the summary (so the comparison above compared something)
    x = story.xids
    assert sum(merged.deletes[x["delete"]].values()) == 500
    assert sum(merged.updates[x["update"]].values()) == 2500
    assert sum(merged.updates[x["hot"]].values()) == 2000
    assert merged.heap_truncates.get(x["truncate"]) == 1
    assert merged.commits[x["drop"]].rels and merged.commits[x["drop"]].dropped_stats
    assert merged.commits[x["truncate"]].rels and x["truncate"] in merged.creates
    assert merged.commits[x["subxacts"]].subxacts
    assert merged.commits[x["abort"]].aborted and merged.commits[x["abort"]].rels
    assert not merged.commits[x["2pc-commit"]].aborted and merged.commits[x["2pc-rollback"]].aborted
    assert sum(merged.deletes[x["2pc-commit"]].values()) == 100
    assert sum(merged.deletes[x["tl2-delete"]].values()) == 400
    assert merged.commits[x["tl2-drop"]].rels
    assert ("walsum-rp" in [name for name, _ in merged.restore_points])


def test_both_readers_agree_on_one_transaction(story: Story) -> None:
    """find_transaction's filter (-x): only that transaction's records."""
    xid = story.xids["subxacts"]
    for chunk in story.chunks:
        ref, nat = _both(story.programs, chunk, ("Transaction",), xid)
        assert _same(nat) == _same(ref)


def test_find_disaster_reports_the_same_with_either_reader(story: Story) -> None:
    """The real command, end to end: natively by default, through pg_waldump when asked
    (PGDR_WAL_READER=pg_waldump, the fallback), the same findings; it says which read."""
    import json
    import os

    outs = {}
    for reader in ("native", "pg_waldump"):
        env = {k: v for k, v in os.environ.items() if k != walsum.ENV}
        if reader == "pg_waldump":
            env[walsum.ENV] = "pg_waldump"
        res = run_cli("find-disaster", "--json", config=story.config, env=env)
        assert res.returncode == 0, res.stderr
        outs[reader] = json.loads(res.stdout)
        assert outs[reader]["reader"] == reader
    assert outs["native"]["disasters"] == outs["pg_waldump"]["disasters"]
    found = {(d["xid"], d["kind"]) for d in outs["native"]["disasters"]}
    x = story.xids
    assert {(x["delete"], "delete"), (x["update"], "update"), (x["drop"], "drop"), (x["truncate"], "truncate"),
            (x["2pc-commit"], "delete"), (x["tl2-delete"], "delete")} <= found
    assert (x["abort"], "delete") not in found and (x["2pc-rollback"], "delete") not in found


def _damaged(chunk: Chunk, folder: Path, name: str, damage) -> Chunk:  # type: ignore[no-untyped-def]
    """A copy of chunk's segment, damaged by damage(bytearray) -> bytearray, as the
    archive stores it (zstd)."""
    data = bytearray(walsum.load(chunk)[:chunk.segment_size])
    data = damage(data)
    path = folder / f"{name}.zst"
    path.write_bytes(zstandard.ZstdCompressor(level=1).compress(bytes(data)))
    return dataclasses.replace(chunk, source=path)


def test_damaged_wal_stops_both_readers_at_the_same_record(story: Story, tmp_path: Path) -> None:
    """Byte flips, a zeroed page and a cut at offsets spread over a busy segment: the
    native reader stops where pg_waldump stops (same last record, same end-of-WAL LSN)
    and never reports a record pg_waldump did not."""
    # the busiest segment of timeline 1 with a following segment (so a crossing record is read)
    busy = max((c for c in story.chunks if c.next_source is not None and c.segment.timeline == 1),
               key=lambda c: c.source.stat().st_size)
    size = busy.segment_size
    rng = random.Random(16)
    cases = []
    for i in range(12):
        at = rng.randrange(64, size)

        def flip(d: bytearray, at: int = at) -> bytearray:
            d[at] ^= 0x5A
            return d
        cases.append((f"flip{i}-{at}", flip))
    # aimed at the page-header checks random flips rarely reach (a page header is 24 of
    # 8192 bytes): magic, info bits, page address, timeline, segment size, the remaining
    # length of a continued record
    def poke(offset: int, value: int) -> object:
        def damage(d: bytearray) -> bytearray:
            d[offset] = value
            return d
        return damage

    def cont_rem_len(d: bytearray) -> bytearray:
        page = next(p for p in range(1, size // 8192) if d[p * 8192 + 2] & 1)   # XLP_FIRST_IS_CONTRECORD
        d[page * 8192 + 16] ^= 0x08
        return d
    cases += [("magic-page5", poke(5 * 8192, 0x00)), ("info-page9", poke(9 * 8192 + 2, 0x10)),
              ("pageaddr-page13", poke(13 * 8192 + 9, 0x7F)), ("tli-page17", poke(17 * 8192 + 4, 0)),
              ("segsize", poke(34, 0x5A)), ("rem-len", cont_rem_len)]
    for page in (0, 1, 7, 800, 1500):
        def zero(d: bytearray, page: int = page) -> bytearray:
            d[page * 8192:(page + 1) * 8192] = bytes(8192)
            return d
        cases.append((f"zero-page{page}", zero))
    for cut in (8192 * 3 + 100, size // 2, size - 8192):
        def short(d: bytearray, cut: int = cut) -> bytearray:
            return d[:cut]
        cases.append((f"cut{cut}", short))
    stopped_early = 0
    for name, damage in cases:
        chunk = _damaged(busy, tmp_path, f"{busy.segment.name(size)}-{name}", damage)
        # (a zeroed first page has no WAL version to read: pg_waldump reads that one)
        ref, nat = _both(story.programs, chunk, ("Heap", "Transaction", "Storage"), None, native=name not in ("zero-page0", "magic-page0"))
        assert nat.last_lsn == ref.last_lsn and nat.end_lsn == ref.end_lsn, (name, ref.error, nat.error)
        assert _same(nat) == _same(ref), (name, ref.error, nat.error)
        full = read_chunk(story.programs, busy, ("Heap", "Transaction", "Storage"), None)
        if ref.last_lsn != full.last_lsn:
            stopped_early += 1
    assert stopped_early >= len(cases) // 2      # the damage did cut the reading short


def test_an_unknown_wal_version_is_read_by_pg_waldump(story: Story, tmp_path: Path) -> None:
    """A page magic the decoder does not know (a newer major): pg_waldump reads the chunk,
    and the result says why."""
    chunk = _damaged(story.chunks[0], tmp_path, "magic", lambda d: bytearray(b"\x99\xd1") + d[2:])
    got = read_chunk(story.programs, chunk, ("Transaction",), None)
    assert got.reader == "pg_waldump" and got.note is not None and "0xD199" in got.note


def test_the_wal_version_is_read_little_endian() -> None:
    """walsum.why_not reads the page magic as PostgreSQL writes it; other rmgrs go to pg_waldump."""
    assert walsum.why_not(b"\x10\xd1" + bytes(38), ("Heap",), ()) is None
    assert walsum.why_not(b"\x18\xd1", ("Heap",), ()) is None
    assert walsum.why_not(b"\x10\xd1", ("Btree",), ()) is not None
