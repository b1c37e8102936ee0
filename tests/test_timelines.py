"""The archive indexed by (timeline, segment): which file recovery toward a timeline reads,
and that a segment missing on the new timeline is not masked by the old timeline's."""

from __future__ import annotations

from pathlib import Path

import zstandard

from pgdr.pg.lsn import Segment
from pgdr.repo.layout import Repository
from pgdr.repo.timelines import TimelineHistory, parse_history
from pgdr.restore.walscan import archive_wal

SIZE = 16 * 1024 * 1024


def _archive(root: Path, segments: list[tuple[int, int]], history2: str | None) -> Repository:
    repo = Repository(root)
    repo.wal_dir.mkdir(parents=True)
    repo.incoming_dir.mkdir()
    for tli, segno in segments:
        (repo.wal_dir / f"{Segment(tli, segno).name(SIZE)}.zst").write_bytes(b"not read by the index")
    if history2 is not None:
        (repo.wal_dir / "00000002.history.zst").write_bytes(zstandard.ZstdCompressor().compress(history2.encode()))
    return repo


def test_history_names_the_timeline_of_each_segment() -> None:
    hist = parse_history(2, "1\t0/5000A28\tno recovery target specified\n")
    assert hist.chain() == [1, 2]
    assert [hist.timeline_at(s, SIZE) for s in (3, 4, 5, 6)] == [1, 1, 2, 2]  # switch segment: new tli
    assert TimelineHistory(1).timeline_at(9, SIZE) == 1


def test_missing_segment_on_new_timeline_is_not_masked_by_the_old_one(tmp_path: Path) -> None:
    # timeline 1 ran on (old primary kept writing) up to 8; timeline 2 forked in segment 5
    # and lacks its segment 6.
    segs = [(1, n) for n in range(2, 9)] + [(2, 5), (2, 7), (2, 8)]
    repo = _archive(tmp_path / "repo", segs, "1\t0/5000A28\tfailover\n")
    wal = archive_wal(repo, 2)
    assert wal.timeline == 2
    assert [(c.segment.timeline, c.segment.segno) for c in wal.chunks] == \
        [(1, 2), (1, 3), (1, 4), (2, 5), (2, 7), (2, 8)]
    assert wal.gaps == [(6, 6)]
    assert wal.missing_name(6) == Segment(2, 6).name(SIZE)
    # recovery that stays on timeline 1 sees no gap there
    assert archive_wal(repo, 2, timeline=1).timeline == 2  # latest descendant of 1 is 2
    old = archive_wal(_archive(tmp_path / "repo1", [(1, n) for n in range(2, 9)], None), 2, timeline=1)
    assert old.gaps == [] and old.timeline == 1
