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
from pgdr.errors import UsageError
from pgdr.pg.ident import TableName, qualified
from pgdr.pg.lsn import Segment, format_lsn, parse_lsn, parse_segment_name
from pgdr.pg.programs import Programs
from pgdr.pg.waldump import MAX_RECORD, Chunk, Commit, Progress, ScanResult, checkpoints, require_chunks, scan
from pgdr.repo.layout import Repository
from pgdr.repo.manifest import Relation, list_backups
from pgdr.repo.timelines import TimelineHistory, histories, latest_descendant, newest
from pgdr.repo.wal import WalArchive
from pgdr.restore.xid import full_xid

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
    most = MAX_RECORD // size + 1      # segments one record can reach into
    for i, (seg, path) in enumerate(ordered):
        run = [ordered[j] for j in range(i + 1, min(i + 1 + most, len(ordered)))]
        consecutive: list[tuple[Segment, Path]] = []
        for k, nxt_seg in enumerate(run):
            if nxt_seg[0].segno != seg.segno + 1 + k:
                break
            consecutive.append(nxt_seg)
        nxt = consecutive[0] if consecutive else None
        chunks.append(Chunk(seg, path, nxt[1] if nxt else None, nxt[0] if nxt else None, size,
                            tuple(p for _, p in consecutive[1:])))
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


@dataclass
class TransactionEnd:
    """One COMMIT/ABORT record of a 32-bit xid, with the xid's epoch when asked for."""

    commit: Commit
    full_xid: int | None = None     # epoch * 2^32 + xid, from the nearest checkpoint


def backup_anchors(repo: Repository) -> tuple[int, ...]:
    """The first segment of every physical backup: each holds the backup's checkpoint."""
    size = repo.wal_segment_size
    segs = (parse_segment_name(b.start_wal or "", size) for b in list_backups(repo, "physical"))
    return tuple(s.segno for s in segs if s is not None)


def find_transaction(programs: Programs, wal: ArchiveWal, xid: int, *,
                     with_epoch: bool = False, anchors: tuple[int, ...] = ()) -> list[TransactionEnd]:
    """Every COMMIT or ABORT record of the (top-level, 32-bit) xid in the whole archive,
    in WAL order: one, unless the xids wrapped around within the archive. with_epoch:
    each with its full xid (see Epochs)."""
    require_chunks(wal.chunks)
    result = scan(programs, wal.chunks, ("Transaction",), xid=xid)
    seen: dict[str, Commit] = {}
    for chunk in result.chunks:
        found = chunk.commits.get(xid)
        if found is not None:
            seen.setdefault(found.lsn, found)
    ends = [TransactionEnd(c) for c in sorted(seen.values(), key=lambda c: parse_lsn(c.lsn))]
    if with_epoch or len(ends) > 1:
        epochs = Epochs(programs, wal, anchors)
        for end in ends:
            end.full_xid = epochs.full(xid, parse_lsn(end.commit.lsn))
    return ends


class Epochs:
    """The epoch of a 32-bit xid written at some LSN, from the nextXid (epoch:xid) of a
    checkpoint record: first the checkpoint of the newest backup that started before that
    LSN (every base backup starts with one, in its first segment: one pg_waldump read),
    else the checkpoint nearest the LSN, searched outward a segment at a time. Exact while
    fewer than 2^31 transactions separate the two (PostgreSQL's wraparound horizon);
    segments read are remembered."""

    def __init__(self, programs: Programs, wal: ArchiveWal, anchors: tuple[int, ...] = ()) -> None:
        self.programs, self.wal = programs, wal
        self.anchors = sorted(anchors)          # segment numbers of backups' first segments
        self._read: dict[int, list[tuple[int, int]]] = {}

    def _checkpoints(self, i: int) -> list[tuple[int, int]]:
        if i not in self._read:
            self._read[i] = checkpoints(self.programs, self.wal.chunks[i])
        return self._read[i]

    def reference(self, lsn: int) -> int | None:
        """The nextXid of a checkpoint near lsn (see the class); None: the archive holds none."""
        chunks = self.wal.chunks
        segno = lsn // self.wal.segment_size
        index = {c.segment.segno: k for k, c in enumerate(chunks)}
        for anchor in reversed([a for a in self.anchors if a <= segno and a in index]):
            found = [cp for cp in self._checkpoints(index[anchor]) if cp[0] <= lsn]
            if found:
                return found[-1][1]
            break
        here = min(range(len(chunks)), key=lambda k: abs(chunks[k].segment.segno - segno), default=None)
        if here is None:
            return None
        for step in range(len(chunks)):
            found = [cp for i in {here - step, here + step} if 0 <= i < len(chunks) for cp in self._checkpoints(i)]
            if found:
                return min(found, key=lambda cp: abs(cp[0] - lsn))[1]
        return None

    def full(self, xid: int, lsn: int) -> int | None:
        ref = self.reference(lsn)
        return None if ref is None else full_xid(xid, ref)


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
    full_xid: int | None = None    # with its epoch (as txid_current() gives it); None: no checkpoint to tell

    @property
    def shown_xid(self) -> int:
        """What to print and paste: the full xid once the epoch is past 0 (unambiguous,
        and what applications log), else the 32-bit one (the same number)."""
        return self.full_xid if self.full_xid is not None else self.xid

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
    reader: str = "native"            # what read the WAL: native, pg_waldump, or both (some chunks each)
    notes: list[str] = field(default_factory=list)    # why pg_waldump read what it read

    def as_dict(self) -> dict[str, Any]:
        return {"disasters": [d.as_dict() for d in self.disasters], "segments": self.segments,
                "bytes_read": self.bytes_read, "seconds": round(self.seconds, 3),
                "mb_per_s": round(self.bytes_read / 1048576 / self.seconds, 1) if self.seconds else None,
                "errors": self.errors, "reader": self.reader, "notes": self.notes}


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


@dataclass(frozen=True)
class Bound:
    """One end of find-disaster's window: a commit time or a WAL position (LSN)."""

    time: datetime | None = None
    lsn: int | None = None


def parse_bound(text: str) -> Bound:
    """'0/5A000028' is an LSN; anything else must be an ISO time (UsageError otherwise)."""
    from pgdr.restore.pitr import parse_time

    if "/" in text and ":" not in text:
        try:
            return Bound(lsn=parse_lsn(text))
        except ValueError:
            raise UsageError(f"not an LSN: {text!r}", hint="an LSN looks like 0/5A000028; a time like "
                             "'2026-11-24 09:30:00+00'") from None
    return Bound(time=parse_time(text))


def _commit_span(programs: Programs, chunk: Chunk) -> tuple[datetime, datetime] | None:
    """The first and last commit times in one segment (None: it holds no commit)."""
    times = [c.time for c in scan(programs, [chunk], ("Transaction",), jobs=1).commits.values()]
    return (min(times), max(times)) if times else None


def _window(programs: Programs, chunks: list[Chunk], since: Bound | None, until: Bound | None,
            segment_size: int) -> tuple[int, int]:
    """Indexes [low, high] of the chunks that can hold commits inside the window.

    An LSN names its segment directly. A time is found by bisection over the segments'
    commit times (one cheap `-r Transaction` read of one segment per step, ~log2(n)
    steps): commit times grow with the WAL, give or take the few milliseconds by which
    concurrent commits can be out of order, so one segment of slack is kept on each side;
    a segment without commits is kept (never skipped on a guess)."""
    low, high = 0, len(chunks) - 1
    segnos = [c.segment.segno for c in chunks]
    if since is not None and since.lsn is not None:
        low = next((i for i, n in enumerate(segnos) if n >= since.lsn // segment_size), len(chunks))
    if until is not None and until.lsn is not None:
        high = max((i for i, n in enumerate(segnos) if n <= until.lsn // segment_size), default=-1)
    if since is not None and since.time is not None and low <= high:
        lo, hi = low, high + 1           # the first chunk whose last commit is at or after since
        while lo < hi:
            mid = (lo + hi) // 2
            span = _commit_span(programs, chunks[mid])
            if span is not None and span[1] < since.time:
                lo = mid + 1
            else:
                hi = mid
        low = max(low, lo - 1)
    if until is not None and until.time is not None and low <= high:
        lo, hi = low, high + 1           # the first chunk whose first commit is after until
        while lo < hi:
            mid = (lo + hi) // 2
            span = _commit_span(programs, chunks[mid])
            if span is not None and span[0] > until.time:
                hi = mid
            else:
                lo = mid + 1
        high = min(high, lo)
    return low, high


def find_disasters(programs: Programs, repo: Repository, *, table: TableName | None = None,
                   since: Bound | None = None, until: Bound | None = None,
                   kinds: tuple[str, ...] = KINDS, min_rows: int = 100, jobs: int | None = None,
                   progress: Progress | None = None) -> DisasterScan:
    """Every transaction in the archive's WAL (toward the newest timeline) that dropped,
    truncated, or deleted/updated at least min_rows rows of one table.

    since/until bound what is read as well as what is reported: only the segments that
    can hold commits inside the window are read, so a DELETE whose row records were
    written in a segment before the window (a long transaction) counts only the rows
    inside it; DROP and TRUNCATE are always found (their commit record names the files)."""
    wal = archive_wal(repo)
    require_chunks(wal.chunks)
    if since is not None or until is not None:
        low, high = _window(programs, wal.chunks, since, until, wal.segment_size)
        kept = wal.chunks[low:high + 1]
        first = kept[0].segment.segno if kept else 0
        last = kept[-1].segment.segno if kept else -1
        wal.chunks = kept
        wal.gaps = [(max(lo, first), min(hi, last)) for lo, hi in wal.gaps if hi >= first and lo <= last]
    names = relation_names(repo)
    # DROP and TRUNCATE are in the commit records alone: without DELETE/UPDATE to count,
    # pg_waldump need not print a single Heap record
    rmgrs = (("Heap",) if {"delete", "update"} & set(kinds) else ()) + ("Transaction", "Storage")
    result = (scan(programs, wal.chunks, rmgrs, jobs=jobs, progress=progress, relations=_only(names, table),
                   compact=True)
              if wal.chunks else ScanResult([]))
    found = _classify(result, names, table, since, until, kinds, min_rows)
    epochs = Epochs(programs, wal, backup_anchors(repo))
    for d in found:
        d.full_xid = epochs.full(d.xid, parse_lsn(d.lsn))
    errors = [f"{c.segment}: {c.error}" for c in result.chunks
              if c.error and c is not result.chunks[-1] and c.end_lsn is None]
    if table is not None and not any(table.matches(r.schema_name, r.name) for r in names.values()):
        errors.append(f"no table {table} in any relation map (backups, archiver snapshots): "
                      "check the spelling; quote names with capitals or spaces, e.g. '\"Order Items\"'")
    errors += [f"missing segments {wal.missing_name(lo)}"
               + (f"..{wal.missing_name(hi)}" if hi > lo else "") for lo, hi in wal.gaps]
    readers = sorted({c.reader for c in result.chunks})
    notes = sorted({f"read with pg_waldump: {c.note}" for c in result.chunks if c.note})
    return DisasterScan(found, len(wal.chunks), result.bytes_read, result.seconds, errors,
                        readers[0] if len(readers) == 1 else "both" if readers else "none", notes)


MAX_RELATION_PASSES = 4


def _only(names: dict[str, Relation], table: TableName | None) -> tuple[str, ...]:
    """With --table, the files (spc/db/node) whose Heap records are worth printing: the
    ones any relation map names as that table (a file no map names cannot match the
    filter anyway). Each is one more pg_waldump run per segment, so a table with many
    files (rewritten often) is read in the one full run instead."""
    if table is None:
        return ()
    keys = tuple(sorted(k for k, r in names.items() if _wanted(r, table)))
    return keys if 0 < len(keys) <= MAX_RELATION_PASSES else ()


def _inside(commit: Commit, since: Bound | None, until: Bound | None) -> bool:
    if since is not None and ((since.time is not None and commit.time < since.time)
                              or (since.lsn is not None and parse_lsn(commit.lsn) < since.lsn)):
        return False
    return not (until is not None and ((until.time is not None and commit.time > until.time)
                                       or (until.lsn is not None and parse_lsn(commit.lsn) > until.lsn)))


def _classify(result: ScanResult, names: dict[str, Relation], table: TableName | None,
              since: Bound | None, until: Bound | None, kinds: tuple[str, ...], min_rows: int) -> list[Disaster]:
    commits = result.full_commits       # all that have subtransactions or dropped files
    top_of: dict[int, int] = {}
    for c in commits.values():
        for sub in c.subxacts:
            top_of[sub] = c.xid
    deletes, updates, creates = result.per_xid("deletes"), result.per_xid("updates"), result.creates
    out: list[Disaster] = []

    def add(xid: int, kind: str, key: str, rows: int | None) -> None:
        commit = result.commit(top_of.get(xid, xid))
        if commit is None or commit.aborted or kind not in kinds:
            return
        if not _inside(commit, since, until):
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


__all__ = ["ArchiveWal", "Bound", "Disaster", "DisasterScan", "Epochs", "TransactionEnd", "WalPoint", "archive_wal", "find_disasters",
           "find_restore_point", "find_transaction", "format_lsn", "parse_bound",
           "reachable_end"]
