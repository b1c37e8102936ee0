"""LSN and WAL segment arithmetic.

WAL file names encode timeline, log and segment; recovery, gap detection and
retention all reason in these terms, so the math lives in one place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024
SEGMENT_NAME_RE = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$")
HISTORY_NAME_RE = re.compile(r"^([0-9A-F]{8})\.history$")


def parse_lsn(text: str) -> int:
    """'16/B374D848' -> integer byte position."""
    try:
        hi, lo = text.strip().split("/")
        return (int(hi, 16) << 32) | int(lo, 16)
    except ValueError as exc:
        raise ValueError(f"not an LSN: {text!r} (expected like 0/3000060)") from exc


def format_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def segments_per_xlogid(segment_size: int) -> int:
    return 0x100000000 // segment_size


@dataclass(frozen=True, order=True)
class Segment:
    """One WAL segment file: (timeline, segment number)."""

    timeline: int
    segno: int

    def name(self, segment_size: int = DEFAULT_SEGMENT_SIZE) -> str:
        per = segments_per_xlogid(segment_size)
        return f"{self.timeline:08X}{self.segno // per:08X}{self.segno % per:08X}"

    def start_lsn(self, segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
        return self.segno * segment_size


def parse_segment_name(name: str, segment_size: int = DEFAULT_SEGMENT_SIZE) -> Segment | None:
    match = SEGMENT_NAME_RE.match(name)
    if not match:
        return None
    tli, log, seg = (int(g, 16) for g in match.groups())
    return Segment(tli, log * segments_per_xlogid(segment_size) + seg)


def segment_of(lsn: int, timeline: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> Segment:
    return Segment(timeline, lsn // segment_size)
