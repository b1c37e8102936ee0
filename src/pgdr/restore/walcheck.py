"""Is the archived WAL after a point readable and complete, per timeline?

For every segment recovery toward a timeline would read (repo/timelines.py) from a
start segment to the archive's end: decompress it (zstd frame checksum), check its
first page header (address, segment size, system identifier) and every later page
header (magic, address) up to the first all-zero page, and note every segment
number missing on that timeline's path. `pgdr verify` checks afresh; `pgdr status`
uses a cache keyed by each file's size and mtime so it re-reads only what changed.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgdr.fsutil import write_json_durable
from pgdr.repo.layout import Repository
from pgdr.repo.wal import SegmentDamaged, WalArchive
from pgdr.restore.walscan import archive_wal

PAGE = 8192
CACHE_NAME = "walcheck-cache.json"


@dataclass
class ArchiveCheck:
    timeline: int
    checked: int = 0
    damaged: dict[str, str] = field(default_factory=dict)   # segment → problem
    missing: list[str] = field(default_factory=list)         # first segment of each gap
    gaps: list[dict[str, Any]] = field(default_factory=list)  # {"from", "to", "segments"}
    missing_count: int = 0
    first: str | None = None
    last: str | None = None

    @property
    def ok(self) -> bool:
        return not self.damaged and not self.missing

    def summary(self) -> str:
        parts = []
        if self.damaged:
            name, problem = next(iter(sorted(self.damaged.items())))
            parts.append(f"{len(self.damaged)} damaged segment(s), first {name}: {problem}")
        if self.missing:
            parts.append(f"{self.missing_count} WAL segment(s) missing from the archive on timeline "
                         f"{self.timeline}, first {self.missing[0]}")
        if not parts:
            return (f"{self.checked} archived segment(s) on timeline {self.timeline} "
                    f"{self.first or '-'}..{self.last or '-'} readable, no gap")
        return "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {"timeline": self.timeline, "checked": self.checked, "damaged": self.damaged,
                "missing": self.missing, "gaps": self.gaps, "missing_count": self.missing_count,
                "first": self.first, "last": self.last}


def page_problem(name: str, data: bytes, segment_start: int) -> str | None:
    """The first page header that is neither all zeros nor this segment's next page."""
    magic = struct.unpack_from("<H", data, 0)[0]
    zero = bytes(PAGE)
    for i in range(1, len(data) // PAGE):
        page = data[i * PAGE:(i + 1) * PAGE]
        if page == zero:
            return None  # pg_receivewal's zero padding after the last written page
        page_magic, _info, _tli, addr = struct.unpack_from("<HHIQ", page, 0)
        if page_magic != magic or addr != segment_start + i * PAGE:
            return f"page {i} header is damaged (magic {page_magic:#x}, address {addr:X})"
    return None


def check_one(archive: WalArchive, name: str, path: Path) -> str | None:
    """None when the segment is sound, else the problem."""
    try:
        # a complete segment still in incoming/ is read as it is
        data = archive.read(name) if path.name.endswith(".zst") else path.read_bytes()
    except SegmentDamaged as exc:
        return exc.message.split(": ", 1)[-1]
    except OSError as exc:
        return f"unreadable: {exc.strerror}"
    start = struct.unpack_from("<Q", data, 8)[0] if len(data) >= 16 else 0
    return page_problem(name, data, start)


def _load_cache(path: Path) -> dict[str, list[Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def check_archive(repo: Repository, from_segno: int, timeline: int | None = None,
                  *, cached: bool = False) -> ArchiveCheck:
    """Check every segment from from_segno to the archive's end on the timeline path."""
    wal = archive_wal(repo, from_segno, timeline)
    archive = WalArchive(repo)
    size = repo.wal_segment_size
    result = ArchiveCheck(wal.timeline)
    cache_path = repo.archiver_dir / CACHE_NAME
    cache = _load_cache(cache_path) if cached else {}
    fresh: dict[str, list[Any]] = {}
    for chunk in wal.chunks:
        if chunk.source.name.endswith(".partial"):
            continue  # the open segment: still being written
        name = chunk.segment.name(size)
        try:
            st = chunk.source.stat()
        except FileNotFoundError:
            continue  # moved from incoming/ into the archive meanwhile
        key = f"{name}:{chunk.source.name}"
        hit = cache.get(key)
        if hit is not None and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            problem = hit[2]
        else:
            problem = check_one(archive, name, chunk.source)
        fresh[key] = [st.st_size, st.st_mtime_ns, problem]
        result.checked += 1
        if problem:
            result.damaged[name] = problem
        result.first = result.first or name
        result.last = name
    for low, high in wal.gaps:
        if high >= from_segno:
            low = max(low, from_segno)
            result.missing.append(wal.missing_name(low))
            result.gaps.append({"from": wal.missing_name(low), "to": wal.missing_name(high),
                                "segments": high - low + 1})
            result.missing_count += high - low + 1
    if fresh != cache:
        try:
            repo.archiver_dir.mkdir(parents=True, exist_ok=True)
            write_json_durable(cache_path, fresh)
            os.chmod(cache_path, 0o640)
        except OSError:
            pass  # a cache that cannot be written only costs time
    return result
