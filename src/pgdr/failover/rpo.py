"""RPO, measured: what the old primary wrote after the point the new one was promoted at.

When the old primary's pg_wal is on this machine, pg_waldump reads it from the
promotion LSN to its end: the bytes and the COMMIT records there are exactly the
work the new primary never received. Otherwise the loss is reported as unknown.
The WAL is read on the old primary's own current timeline — after one failover the
standby's checkpoint timeline is not the one the old primary wrote on — found from
its WAL file names and pg_control, whichever is newest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pgdr.errors import ProgramFailed
from pgdr.pg.lsn import format_lsn, parse_lsn
from pgdr.pg.programs import Programs
from pgdr.repo.layout import Repository

_RECORD_RE = re.compile(r"rmgr: (\w+)\s+len \(rec/tot\):\s+\d+/\s*(\d+), tx:\s+(\d+), lsn: ([0-9A-F]+/[0-9A-F]+)")


_SEGMENT_RE = re.compile(r"^([0-9A-F]{8})[0-9A-F]{16}(?:\.partial)?$|^([0-9A-F]{8})\.history$")


def current_timeline(programs: Programs, data_dir: Path | None) -> int | None:
    """The timeline a (stopped) server last wrote on: the newest of its WAL file names
    and history files, and pg_control's latest checkpoint timeline."""
    if data_dir is None or not (data_dir / "pg_wal").is_dir():
        return None
    found = []
    for entry in (data_dir / "pg_wal").iterdir():
        match = _SEGMENT_RE.match(entry.name)
        if match:
            found.append(int(match.group(1) or match.group(2), 16))
    try:
        out = programs.run("pg_controldata", [str(data_dir)], timeout=30).stdout
        for line in out.splitlines():
            if line.startswith("Latest checkpoint's TimeLineID:"):
                found.append(int(line.split(":", 1)[1]))
    except ProgramFailed:
        pass
    return max(found) if found else None


@dataclass
class LostWal:
    known: bool
    bytes: int | None = None
    commits: int | None = None
    old_end_lsn: str | None = None
    detail: str = ""

    def as_dict(self) -> dict[str, object]:
        return {"known": self.known, "bytes": self.bytes, "commits": self.commits,
                "old_end_lsn": self.old_end_lsn, "detail": self.detail}


def lost_after(programs: Programs, old_data_dir: Path | None, from_lsn: str, timeline: int) -> LostWal:
    if old_data_dir is None or not (old_data_dir / "pg_wal").is_dir():
        return LostWal(False, detail="old primary's pg_wal is not on this machine: loss unknown")
    try:
        result = programs.run("pg_waldump", ["-p", str(old_data_dir / "pg_wal"), "-s", from_lsn,
                                             "-t", str(timeline)], ok_codes=(0, 1), timeout=120)
    except ProgramFailed as exc:
        return LostWal(False, detail=f"pg_waldump could not read the old WAL: {exc.message}")
    end = parse_lsn(from_lsn)
    commits = 0
    for line in result.stdout.splitlines():
        match = _RECORD_RE.search(line)
        if not match:
            continue
        rmgr, total, _xid, lsn = match.groups()
        end = max(end, parse_lsn(lsn) + int(total))
        if rmgr == "Transaction" and "desc: COMMIT" in line:
            commits += 1
    lost = end - parse_lsn(from_lsn)
    return LostWal(True, lost, commits, format_lsn(end),
                   f"{lost} bytes and {commits} commits after {from_lsn} never reached the new primary")


def lost_since(programs: Programs, repo: Repository, old_data_dir: Path | None, from_lsn: str,
               timeline: int) -> LostWal:
    """What the old cluster wrote after from_lsn (a cutover's restore point, possibly long
    ago): from the old primary's pg_wal while it still holds the segment of from_lsn (its
    unarchived tail included), else from the repository's archive, which the archiver fed
    until the old primary was fenced."""
    size = repo.wal_segment_size
    segno = parse_lsn(from_lsn) // size
    suffix = format(segno // (0x100000000 // size), "08X") + format(segno % (0x100000000 // size), "08X")
    if old_data_dir is not None and any((old_data_dir / "pg_wal").glob(f"????????{suffix}*")):
        return lost_after(programs, old_data_dir, from_lsn, timeline)
    from pgdr.pg.waldump import scan
    from pgdr.restore.walscan import archive_wal

    wal = archive_wal(repo, from_segno=segno, timeline=timeline)
    if not wal.chunks or wal.chunks[0].segment.segno != segno:
        return LostWal(False, detail=f"neither the old primary's pg_wal nor the archive holds the WAL at "
                                     f"{from_lsn}: loss unknown")
    result = scan(programs, wal.chunks, ("Transaction",))
    start = parse_lsn(from_lsn)
    # the switchpoint is the first position of the new timeline: a record starting there is lost
    commits = [c for c in result.commits.values() if not c.aborted and parse_lsn(c.lsn) >= start]
    end = max([start, *(parse_lsn(c.last_lsn) for c in result.chunks if c.last_lsn)])
    return LostWal(True, end - start, len(commits), format_lsn(end),
                   f"{end - start} bytes and {len(commits)} commits after {from_lsn} in the archive "
                   "are not in the restored instance")
