"""The archiver follows a new primary's timeline without a gap and without losing the old one's tail.

pg_receivewal resumes from the newest file in its folder. After a failover that file
is usually the old primary's open segment (`<old tli><segment>.partial`), and it may
hold WAL written after the fork point: commits the old primary acknowledged and the
new primary never received. Asked for that position on the old timeline, the new
primary refuses ("requested starting point ... is not in this server's history") and
pg_receivewal fails on every restart. An operator would set the file aside by hand.

Here the archiver asks the new primary, over the replication protocol, for its
timeline and history (IDENTIFY_SYSTEM, TIMELINE_HISTORY: PostgreSQL's own record of
where each timeline ended) and, before starting pg_receivewal:
- keeps every file the new primary can continue from (on its lineage, starting at or
  before the fork point): pg_receivewal re-reads such a segment from the new primary
  and crosses to the new timeline itself;
- moves every file that starts past the fork point, or lies on a timeline that is not
  an ancestor, into archiver/diverged/ (never deleted: that WAL is the evidence of what
  the failover lost, and `pg_waldump` reads it there);
- when it moved the file pg_receivewal would have resumed from, leaves an empty,
  pre-allocated `<new tli><fork segment>.partial` in its place, so streaming resumes at
  the start of the segment that holds the fork point on the new timeline (the new
  primary keeps that file: it wrote it at promotion) instead of at the slot's
  restart_lsn, which on a slot created after the failover would leave a gap.
A file that pg_receivewal pre-allocated but never wrote into is indistinguishable from
that placeholder, which is why it is the file pg_receivewal itself would accept.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pgdr.errors import PgdrError
from pgdr.pg.connect import session
from pgdr.pg.conninfo import with_params
from pgdr.pg.lsn import parse_lsn

log = logging.getLogger(__name__)

SEGMENT_RE = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})(\.partial)?$")


@dataclass(frozen=True)
class ServerTimeline:
    """The primary's current timeline, and where each ancestor timeline ended."""

    timeline: int
    ends: dict[int, int]  # ancestor timeline -> LSN where it ended (switchpoint)


def parse_history(content: str) -> dict[int, int]:
    """A .history file's lines `tli<TAB>switchpoint<TAB>reason` -> {tli: switchpoint}."""
    ends: dict[int, int] = {}
    for line in content.splitlines():
        fields = line.strip().split()
        if len(fields) >= 2 and fields[0].isdigit():
            ends[int(fields[0])] = parse_lsn(fields[1])
    return ends


def server_timeline(conninfo: str) -> ServerTimeline:
    """IDENTIFY_SYSTEM and TIMELINE_HISTORY over a physical replication connection: the
    same privilege pg_receivewal already needs, and PostgreSQL's own answer."""
    with session(with_params(conninfo, replication="true"), what="the primary's timeline history") as conn:
        ident = conn.pgconn.exec_(b"IDENTIFY_SYSTEM")
        if ident.ntuples != 1:
            raise PgdrError(f"IDENTIFY_SYSTEM failed: {(ident.error_message or b'').decode(errors='replace').strip()}")
        timeline = int((ident.get_value(0, 1) or b"0").decode())
        if timeline <= 1:
            return ServerTimeline(timeline, {})
        history = conn.pgconn.exec_(f"TIMELINE_HISTORY {timeline}".encode())
        if history.ntuples != 1:
            raise PgdrError(f"TIMELINE_HISTORY {timeline} failed: "
                            f"{(history.error_message or b'').decode(errors='replace').strip()}")
        return ServerTimeline(timeline, parse_history((history.get_value(0, 1) or b"").decode(errors="replace")))


@dataclass(frozen=True)
class _Spooled:
    path: Path
    timeline: int
    segno: int
    partial: bool


def _spooled(incoming: Path, segment_size: int) -> list[_Spooled]:
    per_xlogid = 0x100000000 // segment_size
    found = []
    for path in incoming.iterdir():
        match = SEGMENT_RE.match(path.name)
        if match:
            tli, hi, lo = (int(match.group(i), 16) for i in (1, 2, 3))
            found.append(_Spooled(path, tli, hi * per_xlogid + lo, match.group(4) is not None))
    return found


def _past_fork(item: _Spooled, server: ServerTimeline, segment_size: int) -> bool:
    """True when the new primary cannot continue from this file's start: it begins after
    the point where its timeline ended, or its timeline is not an ancestor at all."""
    if item.timeline == server.timeline:
        return False
    end = server.ends.get(item.timeline)
    return end is None or item.segno * segment_size > end


def _fork_point(stale: list[_Spooled], server: ServerTimeline) -> int:
    """Where the new primary's lineage left the timeline of the oldest stale file: its
    recorded end, or (a timeline that is no ancestor) where the current timeline began."""
    current_start = max(server.ends.values(), default=0)
    return min(server.ends.get(s.timeline, current_start) for s in stale)


def _segment_name(timeline: int, segno: int, segment_size: int) -> str:
    per_xlogid = 0x100000000 // segment_size
    return f"{timeline:08X}{segno // per_xlogid:08X}{segno % per_xlogid:08X}"


def follow_new_timeline(incoming: Path, diverged: Path, segment_size: int, server: ServerTimeline,
                        chown: Callable[[Path], None]) -> list[str]:
    """Prepare incoming/ so pg_receivewal resumes on the server's lineage; returns one line
    per file moved or created (empty when nothing had to change)."""
    spooled = _spooled(incoming, segment_size)
    stale = [s for s in spooled if _past_fork(s, server, segment_size)]
    if not stale:
        return []
    done = []
    diverged.mkdir(parents=True, exist_ok=True)
    for item in stale:
        dest = diverged / item.path.name
        n = 1
        while dest.exists():  # a second failover can strand a file of the same name
            dest, n = diverged / f"{item.path.name}.{n}", n + 1
        os.replace(item.path, dest)
        done.append(f"moved {item.path.name} to {diverged}: it starts past the point where timeline "
                    f"{item.timeline} ended on the new primary (timeline {server.timeline})")
    kept = [s for s in spooled if s not in stale]
    fork_segno = _fork_point(stale, server) // segment_size
    if not any(s.segno >= fork_segno for s in kept):
        # The archive holds everything before the fork segment (the archiver streamed past
        # it), so resume at that segment's start, on the timeline the server reads it from.
        start = fork_segno * segment_size
        tli = next((t for t, end in sorted(server.ends.items()) if end > start), server.timeline)
        placeholder = incoming / (_segment_name(tli, fork_segno, segment_size) + ".partial")
        with open(placeholder, "wb") as fh:
            fh.truncate(segment_size)
            fh.flush()
            os.fsync(fh.fileno())
        chown(placeholder)
        done.append(f"resume at the start of segment {placeholder.name[:24]}, which holds the point "
                    f"where the new primary's history forked")
    for line in done:
        log.warning("archiver: %s", line)
    return done

