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
