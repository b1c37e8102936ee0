"""Timelines in the WAL archive: which timeline each segment must come from.

After a failover the archive holds segments of several timelines with the same
numbers. Recovery toward timeline T reads, for each segment number, the segment of
the timeline T's history says was current there (the switch segment belongs to the
newer timeline); a segment present only on another timeline is missing for T, not
"present". The history is read from the archived <tli>.history files:
"<parent tli>\t<switch LSN>\t<reason>" per ancestor, oldest first.
"""

from __future__ import annotations

from dataclasses import dataclass

from pgdr.pg.lsn import HISTORY_NAME_RE, parse_lsn
from pgdr.repo.wal import WalArchive


@dataclass(frozen=True)
class TimelineHistory:
    """Timeline `tli` and its ancestors: (ancestor tli, LSN where it ended), oldest first."""

    tli: int
    ancestors: tuple[tuple[int, int], ...] = ()

    def chain(self) -> list[int]:
        return [t for t, _end in self.ancestors] + [self.tli]

    def timeline_at(self, segno: int, segment_size: int) -> int:
        """The timeline whose segment `segno` recovery toward this timeline reads."""
        for tli, end in self.ancestors:
            if segno < end // segment_size:
                return tli
        return self.tli

    def switch_lsn(self, tli: int) -> int | None:
        """Where ancestor tli ended (None: it is this timeline, or not an ancestor)."""
        return next((end for t, end in self.ancestors if t == tli), None)


def parse_history(tli: int, text: str) -> TimelineHistory:
    ancestors = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            try:
                ancestors.append((int(parts[0]), parse_lsn(parts[1])))
            except ValueError:
                continue
    return TimelineHistory(tli, tuple(ancestors))


def histories(archive: WalArchive) -> dict[int, TimelineHistory]:
    """Every timeline the archive knows (from history files and segment names)."""
    out: dict[int, TimelineHistory] = {}
    for f in archive.files():
        match = HISTORY_NAME_RE.match(f.name)
        if match:
            tli = int(match.group(1), 16)
            try:
                out[tli] = parse_history(tli, archive.read(f.name).decode(errors="replace"))
            except Exception:  # noqa: BLE001 - a damaged history file: treat as unknown ancestry
                out[tli] = TimelineHistory(tli)
    for seg in [*archive.segments(), *archive.waiting()]:
        out.setdefault(seg.timeline, TimelineHistory(seg.timeline))
    partial = archive.partial()
    if partial is not None:
        out.setdefault(partial[0].timeline, TimelineHistory(partial[0].timeline))
    return out


def latest_descendant(known: dict[int, TimelineHistory], tli: int) -> TimelineHistory:
    """The newest timeline whose history passes through tli (PostgreSQL's 'latest')."""
    best = known.get(tli, TimelineHistory(tli))
    for other in known.values():
        if other.tli > best.tli and tli in other.chain():
            best = other
    return best


def newest(known: dict[int, TimelineHistory]) -> TimelineHistory:
    return known[max(known)] if known else TimelineHistory(1)
