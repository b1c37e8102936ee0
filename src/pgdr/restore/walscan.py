"""Questions answered from the archived WAL: where does the archive end, where did a
transaction commit, and which transactions dropped, truncated or mass-deleted rows.

Table names come from the relation maps recorded with every physical backup and the
archiver's snapshots between backups (newer maps win), so a table dropped since - even
one created after the newest backup - is still named.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pgdr.backup.relmap import snapshots
from pgdr.pg.ident import TableName, qualified
from pgdr.pg.lsn import Segment, format_lsn, parse_lsn, parse_segment_name
from pgdr.pg.programs import Programs
from pgdr.pg.waldump import Chunk, Commit, Progress, ScanResult, require_chunks, scan
from pgdr.repo.layout import Repository
from pgdr.repo.manifest import Relation, list_backups
from pgdr.repo.timelines import TimelineHistory, histories, latest_descendant, newest
from pgdr.repo.wal import WalArchive

KINDS = ("drop", "truncate", "delete", "update")
FIRST_NORMAL_OID = 16384
SYSTEM_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast")


@dataclass
class ArchiveWal:
    """The WAL recovery toward one timeline reads: per segment number, the segment of the
    timeline its history names (never another timeline's file with the same number);
    the open .partial last."""

    chunks: list[Chunk]
    gaps: list[tuple[int, int]]
    segment_size: int
    history: TimelineHistory = field(default_factory=lambda: TimelineHistory(1))

    @property
    def timeline(self) -> int:
        return self.history.tli

    def first_gap_after(self, segno: int) -> int | None:
        for low, high in self.gaps:
            if high >= segno:
                return max(low, segno)
        return None

    def upto(self, segno: int | None) -> list[Chunk]:
        return [c for c in self.chunks if segno is None or c.segment.segno <= segno]

    def missing_name(self, segno: int) -> str:
        return Segment(self.history.timeline_at(segno, self.segment_size), segno).name(self.segment_size)


def archive_wal(repo: Repository, from_segno: int | None = None, timeline: int | None = None) -> ArchiveWal:
    """Index the archive by (timeline, segment) and keep the path toward `timeline`
    (default: the newest timeline, or the newest descending from it when given)."""
    archive = WalArchive(repo)
    size = repo.wal_segment_size
    known = histories(archive)
    history = newest(known) if timeline is None else latest_descendant(known, timeline)
    present: dict[tuple[int, int], Path] = {}
    for f in archive.files():
        seg = parse_segment_name(f.name, size)
        if seg is not None:
            present[(seg.timeline, seg.segno)] = f.path
    for seg in archive.waiting():
        present.setdefault((seg.timeline, seg.segno), repo.incoming_dir / seg.name(size))
    partial = archive.partial()
    if partial is not None:
        present.setdefault((partial[0].timeline, partial[0].segno),
                           repo.incoming_dir / f"{partial[0].name(size)}.partial")
    best: dict[int, tuple[Segment, Path]] = {}
    for (tli, segno), path in present.items():
        if from_segno is not None and segno < from_segno:
            continue
        if history.timeline_at(segno, size) == tli:
            best[segno] = (Segment(tli, segno), path)
    ordered = [best[k] for k in sorted(best)]
    chunks = []
    for i, (seg, path) in enumerate(ordered):
        nxt = ordered[i + 1] if i + 1 < len(ordered) and ordered[i + 1][0].segno == seg.segno + 1 else None
        chunks.append(Chunk(seg, path, nxt[1] if nxt else None, nxt[0] if nxt else None, size))
    gaps: list[tuple[int, int]] = []
    if ordered and from_segno is not None and ordered[0][0].segno > from_segno:
        gaps.append((from_segno, ordered[0][0].segno - 1))
    for prev, cur in zip(ordered, ordered[1:], strict=False):
        if cur[0].segno > prev[0].segno + 1:
            gaps.append((prev[0].segno + 1, cur[0].segno - 1))
    return ArchiveWal(chunks, gaps, size, history)


@dataclass
class WalPoint:
    """How far recovery can go: the last commit and the last record before the end (or a gap)."""

    lsn: str | None
    commit_time: datetime | None
    commit_lsn: str | None
    commit_xid: int | None
    segment: str | None

    def describe(self) -> str:
        if self.commit_time is not None:
            return f"{self.commit_time.isoformat()} (xid {self.commit_xid}, LSN {self.commit_lsn})"
        return f"LSN {self.lsn}" if self.lsn else "the backup's end"

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["commit_time"] = self.commit_time.isoformat() if self.commit_time else None
        return d


def reachable_end(programs: Programs, wal: ArchiveWal, start_segno: int,
                  stop_before_gap: bool = True) -> WalPoint:
    """The last commit recovery can replay from start_segno on (up to the first gap)."""
    gap = wal.first_gap_after(start_segno) if stop_before_gap else None
    usable = [c for c in wal.chunks if c.segment.segno >= start_segno
              and (gap is None or c.segment.segno < gap)]
    # Read backwards a few segments at a time until one holds a commit.
    last_lsn: str | None = None
    seg_name: str | None = usable[-1].segment.name(wal.segment_size) if usable else None
    i = len(usable)
    while i > 0:
        batch = usable[max(0, i - 4):i]
        if gap is not None and batch and batch[-1] is usable[-1]:
            # the record crossing into the missing segment cannot be read
            batch = [*batch[:-1], Chunk(batch[-1].segment, batch[-1].source, None, None, wal.segment_size)]
        result = scan(programs, batch, ("Transaction",))
        if last_lsn is None:
            ends = [c.last_lsn for c in result.chunks if c.last_lsn]
            last_lsn = ends[-1] if ends else None
        commit = result.last_commit
        if commit is not None:
            return WalPoint(last_lsn or commit.lsn, commit.time, commit.lsn, commit.xid, seg_name)
        i -= 4
    return WalPoint(last_lsn, None, None, None, seg_name)


def find_transaction(programs: Programs, wal: ArchiveWal, xid: int) -> Commit | None:
    """The COMMIT or ABORT record of xid (top-level), searching the whole archive."""
    require_chunks(wal.chunks)
    result = scan(programs, wal.chunks, ("Transaction",), xid=xid)
    return result.commits.get(xid)


def find_restore_point(programs: Programs, wal: ArchiveWal, name: str) -> str | None:
    result = scan(programs, wal.chunks, ("XLOG",))
    found = [lsn for c in result.chunks for (rp, lsn) in c.restore_points if rp.endswith(name)]
    return found[-1] if found else None


# ---- find-disaster -------------------------------------------------------------------

@dataclass
class Disaster:
    xid: int
    commit_time: datetime
    lsn: str
    kind: str
    table: str                 # SQL-quoted where needed: paste it into `salvage --table`
    database: str | None
    rows: int | None
    relation: str

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["commit_time"] = self.commit_time.isoformat()
        return d


@dataclass
class DisasterScan:
    disasters: list[Disaster]
    segments: int
    bytes_read: int
    seconds: float
    errors: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {"disasters": [d.as_dict() for d in self.disasters], "segments": self.segments,
                "bytes_read": self.bytes_read, "seconds": round(self.seconds, 3),
                "mb_per_s": round(self.bytes_read / 1048576 / self.seconds, 1) if self.seconds else None,
                "errors": self.errors}


def relation_names(repo: Repository) -> dict[str, Relation]:
    """Every map the repository holds, applied oldest first so the newest name wins."""
    maps: list[tuple[datetime, dict[str, Relation]]] = [
        (m.stop_time, m.relations) for m in list_backups(repo, "physical")]
    maps += list(snapshots(repo))
    names: dict[str, Relation] = {}
    for _, rels in sorted(maps, key=lambda m: m[0]):
        names.update(rels)
    return names


def _wanted(rel: Relation | None, table: TableName | None) -> bool:
    if rel is None:
        return table is None
    if rel.schema_name in SYSTEM_SCHEMAS or rel.kind not in ("r", "m"):
        return False
    return table is None or table.matches(rel.schema_name, rel.name)


def _segno_bounds(repo: Repository, since: datetime | None,
                  until: datetime | None) -> tuple[int | None, int | None]:
    """Segments that can hold commits in [since, until], judged by the backups' WAL
    positions: WAL before a backup that ended before `since` is older; WAL after the
    start segment of a backup that started after `until` is newer."""
    backups = list_backups(repo, "physical")
    size = repo.wal_segment_size
    low = high = None
    if since is not None:
        before = [b for b in backups if b.stop_time <= since and b.start_wal]
        if before and (seg := parse_segment_name(before[-1].start_wal or "", size)):
            low = seg.segno
    if until is not None:
        after = [b for b in backups if b.start_time > until and b.start_wal]
        if after and (seg := parse_segment_name(after[0].start_wal or "", size)):
            high = seg.segno
    return low, high


def find_disasters(programs: Programs, repo: Repository, *, table: TableName | None = None,
                   since: datetime | None = None, until: datetime | None = None,
                   kinds: tuple[str, ...] = KINDS, min_rows: int = 100, jobs: int | None = None,
                   progress: Progress | None = None) -> DisasterScan:
    from_segno, to_segno = _segno_bounds(repo, since, until)
    wal = archive_wal(repo, from_segno)
    if to_segno is not None:
        wal.chunks = wal.upto(to_segno)
        wal.gaps = [(lo, min(hi, to_segno)) for lo, hi in wal.gaps if lo <= to_segno]
    require_chunks(wal.chunks)
    result = scan(programs, wal.chunks, ("Heap", "Transaction", "Storage"), jobs=jobs, progress=progress)
    names = relation_names(repo)
    found = _classify(result, names, table, since, until, kinds, min_rows)
    errors = [f"{c.segment}: {c.error}" for c in result.chunks
              if c.error and c is not result.chunks[-1] and c.end_lsn is None]
    if table is not None and not any(table.matches(r.schema_name, r.name) for r in names.values()):
        errors.append(f"no table {table} in any relation map (backups, archiver snapshots): "
                      "check the spelling; quote names with capitals or spaces, e.g. '\"Order Items\"'")
    errors += [f"missing segments {wal.missing_name(lo)}"
               + (f"..{wal.missing_name(hi)}" if hi > lo else "") for lo, hi in wal.gaps]
    return DisasterScan(found, len(wal.chunks), result.bytes_read, result.seconds, errors)


def _classify(result: ScanResult, names: dict[str, Relation], table: TableName | None,
              since: datetime | None, until: datetime | None, kinds: tuple[str, ...], min_rows: int) -> list[Disaster]:
    commits = result.commits
    top_of: dict[int, int] = {}
    for c in commits.values():
        for sub in c.subxacts:
            top_of[sub] = c.xid
    deletes, updates, creates = result.per_xid("deletes"), result.per_xid("updates"), result.creates
    out: list[Disaster] = []

    def add(xid: int, kind: str, key: str, rows: int | None) -> None:
        commit = commits.get(top_of.get(xid, xid))
        if commit is None or commit.aborted or kind not in kinds:
            return
        if (since is not None and commit.time < since) or (until is not None and commit.time > until):
            return
        rel = names.get(key)
        if not _wanted(rel, table):
            return
        if rel is None:
            if int(key.rsplit("/", 1)[-1]) < FIRST_NORMAL_OID:
                return  # a system catalog of a database no backup mapped
            if any(d.xid == commit.xid and d.kind == kind for d in out):
                return  # one line per transaction for relations no backup names
        out.append(Disaster(commit.xid, commit.time, commit.lsn, kind,
                            qualified(rel.schema_name, rel.name) if rel else f"(relation {key})",
                            rel.database if rel else None, rows, key))

    for xid, rels in deletes.items():
        for key, n in rels.items():
            if n >= min_rows:
                add(xid, "delete", key, n)
    for xid, rels in updates.items():
        for key, n in rels.items():
            if n >= min_rows:
                add(xid, "update", key, n)
    for commit in commits.values():
        if not commit.rels or commit.aborted:
            continue
        created = set(creates.get(commit.xid, []))
        for sub in commit.subxacts:
            created.update(creates.get(sub, []))
        # A DROP drops the relation's statistics too (PostgreSQL 15); a TRUNCATE gives
        # the table new, empty files and drops only the old ones.
        kind = "drop" if commit.dropped_stats or not created else "truncate"
        for key in commit.rels:
            if key in created:
                continue  # a file created and dropped in the same transaction
            add(commit.xid, kind, key, None)
    # Heap TRUNCATE (wal_level=logical) names relation OIDs, not files; the file drop
    # at commit already reported the table, so nothing more to add here.
    out.sort(key=lambda d: (d.commit_time, d.xid, d.table))
    return out


def lsn_gt(a: str, b: str) -> bool:
    return parse_lsn(a) > parse_lsn(b)


def segno_of(lsn: str, segment_size: int) -> int:
    return parse_lsn(lsn) // segment_size


__all__ = ["ArchiveWal", "Disaster", "DisasterScan", "WalPoint", "archive_wal", "find_disasters",
           "find_restore_point", "find_transaction", "format_lsn", "reachable_end"]
