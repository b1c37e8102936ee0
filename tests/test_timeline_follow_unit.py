"""The archiver's choice of what to set aside after a timeline switch (no server needed:
the end-to-end case is tests/test_timeline_pitr.py)."""

from __future__ import annotations

from pathlib import Path

from pgdr.backup.timeline_follow import ServerTimeline, follow_new_timeline, parse_history

SEG = 16 * 1024 * 1024


def _touch(folder: Path, name: str) -> None:
    (folder / name).write_bytes(b"\0" * 16)


def test_history_lines_give_where_each_timeline_ended() -> None:
    text = "1\t0/5000128\tno recovery target specified\n\n2\t0/9A000000\tat restore point \"x\"\n"
    assert parse_history(text) == {1: 0x5000128, 2: 0x9A000000}


def test_a_partial_past_the_fork_is_set_aside_and_a_placeholder_resumes_at_the_fork(tmp_path: Path) -> None:
    incoming, diverged = tmp_path / "incoming", tmp_path / "diverged"
    incoming.mkdir()
    _touch(incoming, "000000010000000000000007.partial")  # tli 1 ended at 0/5000128: this is past it
    done = follow_new_timeline(incoming, diverged, SEG, ServerTimeline(2, {1: 0x5000128}), lambda p: None)
    assert (diverged / "000000010000000000000007.partial").exists()
    # segment 5 holds the fork point; its start (0/5000000) lies on timeline 1, and the
    # new primary serves it from its timeline-2 file (a switch inside the segment)
    placeholder = incoming / "000000010000000000000005.partial"
    assert sorted(p.name for p in incoming.iterdir()) == [placeholder.name]
    assert placeholder.stat().st_size == SEG and len(done) == 2


def test_a_partial_that_holds_the_fork_point_is_kept(tmp_path: Path) -> None:
    incoming, diverged = tmp_path / "incoming", tmp_path / "diverged"
    incoming.mkdir()
    _touch(incoming, "000000010000000000000005.partial")  # pg_receivewal resumes from its start: allowed
    assert follow_new_timeline(incoming, diverged, SEG, ServerTimeline(2, {1: 0x5000128}), lambda p: None) == []
    assert not diverged.exists()


def test_a_timeline_that_is_no_ancestor_is_set_aside_without_overwriting(tmp_path: Path) -> None:
    incoming, diverged = tmp_path / "incoming", tmp_path / "diverged"
    incoming.mkdir()
    diverged.mkdir()
    _touch(diverged, "000000020000000000000009.partial")  # from an earlier failover
    _touch(incoming, "000000020000000000000009.partial")  # a sibling timeline: 3 branched from 1
    _touch(incoming, "000000030000000000000009.partial")  # already on the server's timeline
    follow_new_timeline(incoming, diverged, SEG, ServerTimeline(3, {1: 0x8000000}), lambda p: None)
    assert sorted(p.name for p in diverged.iterdir()) == ["000000020000000000000009.partial",
                                                          "000000020000000000000009.partial.1"]
    assert sorted(p.name for p in incoming.iterdir()) == ["000000030000000000000009.partial"]
