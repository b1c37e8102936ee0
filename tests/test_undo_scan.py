"""find-disaster's parser and scratch space, without a server: the record forms PostgreSQL
15's pg_waldump prints that the fast patterns must not miss, and where segments are unpacked."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pgdr.pg import waldump
from pgdr.pg.waldump import ChunkResult, parse_output

HEAD = "rmgr: Heap        len (rec/tot):    171/   171, tx:      37265, lsn: 0/230000B8, prev 0/23000080, desc: "


def _parse(*lines: str) -> ChunkResult:
    result = ChunkResult("000000010000000000000023")
    parse_output(("\n".join(lines) + "\n").encode(), result)
    return result


def test_an_update_onto_a_fresh_page_counts_as_an_update() -> None:
    """UPDATE+INIT (the new version starts a new page) is ~2% of a batch update's records."""
    result = _parse(
        HEAD + "UPDATE off 47 xmax 37265 flags 0x00 ; new off 60 xmax 0, blkref #0: rel 1663/16384/16473 blk 27310, "
               "blkref #1: rel 1663/16384/16473 blk 11074",
        HEAD + "UPDATE+INIT off 49 xmax 37265 flags 0x00 ; new off 1 xmax 0, blkref #0: rel 1663/16384/16999 blk 2, "
               "blkref #1: rel 1663/16384/16473 blk 11074",
        HEAD + "HOT_UPDATE off 27 xmax 37265 flags 0x60 ; new off 101 xmax 0, blkref #0: rel 1663/16384/16473 blk 5",
        HEAD + "LOCK off 47: xid 37265: flags 0x00 LOCK_ONLY EXCL_LOCK , blkref #0: rel 1663/16384/16473 blk 1",
        HEAD + "DELETE off 3 flags 0x00 KEYS_UPDATED , blkref #0: rel 1663/16384/16473 blk 0 FPW",
        HEAD + "INSERT+INIT off 1 flags 0x00, blkref #0: rel 1663/16384/16473 blk 9",
    )
    assert result.updates == {37265: {"1663/16384/16473": 2, "1663/16384/16999": 1}}
    assert result.deletes == {37265: {"1663/16384/16473": 1}}


def test_rare_records_are_found_wherever_they_sit() -> None:
    """Commits, creates and restore points among thousands of row lines, first and last line too."""
    rows = [HEAD + f"DELETE off {i} flags 0x00 , blkref #0: rel 1663/5/16390 blk 0" for i in range(2000)]
    result = _parse(
        "rmgr: Storage     len (rec/tot):     42/    42, tx:        900, lsn: 0/23000010, prev 0/23000000, "
        "desc: CREATE base/5/16500",
        *rows,
        "rmgr: XLOG        len (rec/tot):     98/    98, tx:          0, lsn: 0/23100000, prev 0/230FFF00, "
        "desc: RESTORE_POINT before-batch",
        *rows,
        "rmgr: Transaction len (rec/tot):     34/    34, tx:      37265, lsn: 0/23200000, prev 0/231FFF00, "
        "desc: COMMIT 2026-11-24 10:00:00.25 UTC; rels: base/5/16400; dropped stats: 2/5/16400",
    )
    assert result.deletes == {37265: {"1663/5/16390": 4000}}
    assert result.creates == {900: ["1663/5/16500"]}
    assert result.restore_points == [("before-batch", "0/23100000")]
    assert result.commits[37265].rels == ["1663/5/16400"] and result.commits[37265].dropped_stats
    assert result.last_lsn == "0/23200000"


def test_segments_are_unpacked_in_memory_only_when_every_worker_fits(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    size = 16 << 20
    monkeypatch.setattr(waldump, "SHM", str(tmp_path))
    st = os.statvfs(tmp_path)
    free = st.f_bavail * st.f_frsize
    assert waldump.scratch_root(size, 1) == (str(tmp_path) if free >= 4 * size + (64 << 20) else None)
    too_many = free // (4 * size) + 1      # more workers than the folder has room for
    assert waldump.scratch_root(size, too_many) is None
    monkeypatch.setattr(waldump, "SHM", str(tmp_path / "absent"))
    assert waldump.scratch_root(size, 1) is None


def test_a_table_filter_splits_the_read_into_cheap_runs() -> None:
    rmgrs = ("Heap", "Transaction", "Storage")
    assert waldump.passes(rmgrs, ()) == [(rmgrs, None)]
    assert waldump.passes(rmgrs, ("1663/5/16390", "1663/5/16401")) == [
        (("Transaction", "Storage"), None), (("Heap",), "1663/5/16390"), (("Heap",), "1663/5/16401")]
    assert waldump.passes(("Transaction",), ("1663/5/16390",)) == [(("Transaction",), None)]


def test_a_reused_segment_file_never_keeps_the_previous_segments_bytes(tmp_path: Path) -> None:
    """Workers overwrite their segment file in place; what a shorter source does not cover
    (a truncated .zst, the part of a next segment not needed) must read as zeros."""
    import zstandard

    size = 1 << 20
    full, short = tmp_path / "full.zst", tmp_path / "short.zst"
    full.write_bytes(zstandard.ZstdCompressor().compress(b"\xaa" * size))
    short.write_bytes(zstandard.ZstdCompressor().compress(b"\x55" * 1000))
    dest = tmp_path / "000000010000000000000001"
    waldump._materialize(full, dest, size)
    assert dest.read_bytes() == b"\xaa" * size
    waldump._materialize(short, dest, size)
    assert dest.read_bytes() == b"\x55" * 1000 + bytes(size - 1000)
    waldump._materialize(full, dest, size)
    waldump._materialize(full, dest, size, limit=8192)
    assert dest.read_bytes() == b"\xaa" * 8192 + bytes(size - 8192)


def test_a_killed_scans_unpacked_segments_are_reaped_by_the_next_one(tmp_path: Path) -> None:
    """A SIGKILLed find-disaster leaves its scan folder (in /dev/shm: memory until reboot);
    the next scan removes the folders of dead pgdr processes, never a live one's."""
    import subprocess

    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = tmp_path / f"{waldump.SCAN_PREFIX}{gone.pid}-abc"
    live = tmp_path / f"{waldump.SCAN_PREFIX}{os.getpid()}-def"
    other = tmp_path / "pgdr-something-else"
    for folder in (dead, live, other):
        (folder / "w1").mkdir(parents=True)
        (folder / "w1" / "seg").write_bytes(b"x" * 100)
    assert waldump.reap_stale(tmp_path) == [dead]
    assert not dead.exists() and live.exists() and other.exists()


def test_packed_commits_are_found_as_whole_ones_are() -> None:
    """find-disaster's workers pack plain commits (PlainCommits); a lookup, the merged
    dict and the last-chunk-wins rule must see them exactly as whole Commit objects."""
    from array import array
    from datetime import UTC, datetime

    from pgdr.pg.waldump import Commit, PlainCommits, ScanResult

    first, second = ChunkResult("a"), ChunkResult("b")
    first.plain = PlainCommits(array("I", [10, 11]), array("q", [0, 1_500_000]), array("Q", [0x1_0000_0028, 48]),
                               bytes([0, 1]))
    first.commits[12] = Commit(12, datetime(2000, 1, 1, tzinfo=UTC), "0/40", rels=["1663/5/16400"])
    second.plain = PlainCommits(array("I", [12]), array("q", [2_000_000]), array("Q", [96]), bytes([0]))
    result = ScanResult([first, second])
    assert result.commit(10) == Commit(10, datetime(2000, 1, 1, tzinfo=UTC), "1/00000028")
    assert result.commit(11) == Commit(11, datetime(2000, 1, 1, 0, 0, 1, 500000, tzinfo=UTC), "0/00000030",
                                       aborted=True)
    assert result.commit(12) == Commit(12, datetime(2000, 1, 1, 0, 0, 2, tzinfo=UTC), "0/00000060")  # later chunk
    assert result.commit(13) is None
    assert result.commits == {x: result.commit(x) for x in (10, 11, 12)}
    assert list(result.full_commits) == [12] and result.full_commits[12].rels == ["1663/5/16400"]
