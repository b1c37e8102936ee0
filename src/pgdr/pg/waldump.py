"""Reading WAL: the records PITR and undo care about, per transaction.

Each chunk is read by the native reader (walsum.py, pgdr._walsum) when it is built and
knows the WAL's version, else with pg_waldump as below; both give the same ChunkResult
(tests/test_walsum.py holds them to it), and pg_waldump is the reference.

The archive is cut into one chunk per segment; each chunk is decompressed into a
private temp folder and read with `pg_waldump -s <segment start> -e <end>`. pg_waldump
never reads past -e, so a record that starts in the segment and ends in the next one
would be printed by no chunk with -e at the segment's end: the next segment's first
page header says how long that record's remainder is (xlp_rem_len), so -e goes just
past it, only that much of the next segment is decompressed, and records printed from
the next segment are cut off - every record is read exactly once. Chunks run in
parallel processes; their output is parsed with whole-text regular expressions.

What is kept per chunk is small: counts of Heap DELETE / UPDATE per (xid, relation),
storage created per xid, Heap TRUNCATE records, COMMIT/ABORT records (time, LSN,
dropped files, whether stats were dropped: PostgreSQL 15 drops stats for a DROP, not
for a TRUNCATE), restore points, and the last record and commit seen (for "how far can
recovery go").
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import shutil
import struct
import tempfile
from array import array
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import count, repeat
from pathlib import Path
from typing import IO

import zstandard

from pgdr.errors import RepositoryError
from pgdr.pg.lsn import Segment, format_lsn, parse_lsn
from pgdr.pg.programs import Programs
from pgdr.pg.walsum import PG_EPOCH, lsn_text

_END_RE = re.compile(r"(?:invalid record length|record with incorrect prev-link|invalid magic number|"
                     r"contrecord is requested|invalid resource manager ID|could not read file|"
                     r"could not find file|invalid record offset)[^\n]*?at ([0-9A-F]+/[0-9A-F]+)")


def end_of_wal(stderr: str) -> str | None:
    """The LSN where pg_waldump stopped because the WAL ends there (None: another error)."""
    m = _END_RE.search(stderr)
    return m.group(1) if m else None


@dataclass(slots=True)
class Commit:
    xid: int
    time: datetime
    lsn: str
    rels: list[str] = field(default_factory=list)       # dropped files as spc/db/relfilenode
    dropped_stats: bool = False
    subxacts: list[int] = field(default_factory=list)
    aborted: bool = False

    def __reduce__(self) -> tuple[type[Commit], tuple[int, datetime, str, list[str], bool, list[int], bool]]:
        # a scan's workers send tens of thousands of these (one per commit) to the parent:
        # as plain arguments they pickle and load ~2x faster than as attribute dicts
        return (Commit, (self.xid, self.time, self.lsn, self.rels, self.dropped_stats, self.subxacts, self.aborted))


@dataclass
class ChunkResult:
    """What one segment's records say; merged over all chunks by ScanResult.merge."""

    segment: str
    deletes: dict[int, dict[str, int]] = field(default_factory=dict)
    updates: dict[int, dict[str, int]] = field(default_factory=dict)
    creates: dict[int, list[str]] = field(default_factory=dict)
    heap_truncates: dict[int, int] = field(default_factory=dict)
    commits: dict[int, Commit] = field(default_factory=dict)
    restore_points: list[tuple[str, str]] = field(default_factory=list)
    last_lsn: str | None = None
    end_lsn: str | None = None       # where reading stopped on an error (end of WAL)
    error: str | None = None
    bytes_read: int = 0
    reader: str = "pg_waldump"       # or "native" (pgdr._walsum, see walsum.py)
    note: str | None = None          # why pg_waldump read it when the native reader is built
    plain: PlainCommits | None = None  # read_chunk(compact=True): the commits kept out of `commits`


@dataclass
class PlainCommits:
    """A chunk's plain COMMIT/ABORT records (no dropped files, no subtransactions, no
    dropped statistics), packed: a busy segment holds ~700, and building, pickling and
    loading one Commit each costs a table-filtered scan a quarter of its time, when only
    the few whose transaction touched the table are ever looked at (see ScanResult.commit)."""

    xids: array[int]       # 'I'
    times: array[int]      # 'q': microseconds since 2000-01-01 UTC, as the record holds it
    lsns: array[int]       # 'Q'
    aborted: bytes    # one byte per commit

    def at(self, i: int) -> Commit:
        return Commit(self.xids[i], PG_EPOCH + timedelta(microseconds=self.times[i]), lsn_text(self.lsns[i]),
                      aborted=bool(self.aborted[i]))

    def all(self) -> dict[int, Commit]:
        return {self.xids[i]: self.at(i) for i in range(len(self.xids))}


@dataclass
class ScanResult:
    chunks: list[ChunkResult]
    seconds: float = 0.0
    _index: dict[int, tuple[int, int]] | None = field(default=None, init=False, repr=False,
                                                                        compare=False)

    @property
    def commits(self) -> dict[int, Commit]:
        out: dict[int, Commit] = {}
        for c in self.chunks:
            if c.plain is not None:
                out.update(c.plain.all())
            out.update(c.commits)
        return out

    @property
    def full_commits(self) -> dict[int, Commit]:
        """The commits kept whole: every one that dropped files or had subtransactions."""
        out: dict[int, Commit] = {}
        for c in self.chunks:
            out.update(c.commits)
        return out

    def commit(self, xid: int) -> Commit | None:
        """xid's COMMIT/ABORT, whole or packed (the last chunk naming it wins, as in commits)."""
        if self._index is None:      # xid -> (chunk, position in its plain commits or -1)
            self._index = {}
            for k, c in enumerate(self.chunks):
                if c.plain is not None:
                    self._index.update(zip(c.plain.xids, zip(repeat(k), count()), strict=False))
                self._index.update(zip(c.commits, repeat((k, -1)), strict=False))
        hit = self._index.get(xid)
        if hit is None:
            return None
        chunk = self.chunks[hit[0]]
        if hit[1] < 0:
            return chunk.commits[xid]
        assert chunk.plain is not None
        return chunk.plain.at(hit[1])

    def per_xid(self, attr: str) -> dict[int, dict[str, int]]:
        out: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for c in self.chunks:
            for xid, rels in getattr(c, attr).items():
                for rel, n in rels.items():
                    out[xid][rel] += n
        return out

    @property
    def creates(self) -> dict[int, list[str]]:
        out: dict[int, list[str]] = defaultdict(list)
        for c in self.chunks:
            for xid, rels in c.creates.items():
                out[xid].extend(rels)
        return out

    @property
    def bytes_read(self) -> int:
        return sum(c.bytes_read for c in self.chunks)

    @property
    def last_commit(self) -> Commit | None:
        commits = [c for c in self.commits.values() if not c.aborted]
        return max(commits, key=lambda c: parse_lsn(c.lsn)) if commits else None


def path_to_key(path: str) -> str:
    """'base/16384/16441' -> '1663/16384/16441' (the relation maps' and blkrefs' form)."""
    parts = path.split("/")
    if parts[0] == "base" and len(parts) == 3:
        return f"1663/{parts[1]}/{parts[2]}"
    if parts[0] == "global" and len(parts) == 2:
        return f"1664/0/{parts[1]}"
    if parts[0] == "pg_tblspc" and len(parts) == 5:
        return f"{parts[1]}/{parts[3]}/{parts[4]}"
    return path


# Only the records that matter, found by C-level regex scans over pg_waldump's whole
# output (one Python step per matching record, none per other line): Heap DELETE /
# UPDATE / HOT_UPDATE (and UPDATE+INIT, an update onto a fresh page) counted per (xid,
# op, relation) with a Counter, and the rarer records (commits, aborts, storage creates,
# heap truncates, restore points) one by one. The row pattern is the whole parse cost of
# an update-heavy segment (~50k matching lines): it starts on a literal, crosses the LSN
# fields in one character-class run, and reads relation #0 from the first ", blkref".
# Per major: PostgreSQL 15's heap descriptions print no comma before it ("off 3 flags
# 0x00 KEYS_UPDATED , blkref"); 16+ print "key: value, " fields ("xmax: 776, off: 1,
# infobits: [KEYS_UPDATED], flags: 0x00, blkref"), skipped one comma-field at a time.
# (over bytes: decoding megabytes of output to scan it costs as much as the scan)
_ROW_RE = re.compile(rb"tx: +(\d+), [^d\n]+desc: (DELETE|UPDATE|HOT_UPDATE)(?:\+INIT)? "
                     rb"(?:[^,\n]*, )*?blkref #0: rel (\d+/\d+/\d+)")
# the rare records: Transaction and Storage lines (a few, or one per commit of an OLTP
# load: ~1k per segment) read field by field by one findall; Heap TRUNCATE and XLOG
# RESTORE_POINT (rarer still) found by their literal desc, then read whole
_LINE = (rb"rmgr: (%s) +len \(rec/tot\): *\d+/ *\d+, tx: +(\d+), lsn: ([0-9A-F]+/[0-9A-F]+), "
         rb"prev [0-9A-F]+/[0-9A-F]+, desc: (\S+) ?([^\n]*)")
_RARE_RE = re.compile(_LINE % rb"Transaction|Storage")
_LINE_RE = re.compile(_LINE % rb"\S+")
_RARE_DESCS = (b"desc: TRUNCATE ", b"desc: RESTORE_POINT ")
_PREPARED_RE = re.compile(r"(\d+): ")
_LAST_LSN_RE = re.compile(rb"lsn: ([0-9A-F]+/[0-9A-F]+), prev")


Text = bytes | mmap.mmap
"""pg_waldump's output: bytes, or the output file mapped (no copy of ~24 MB per segment)."""


def _rare_records(text: Text, end: int) -> list[tuple[bytes, bytes, bytes, bytes, bytes]]:
    """(rmgr, xid, lsn, op, rest) of the rare records before end."""
    found: list[tuple[bytes, bytes, bytes, bytes, bytes]] = _RARE_RE.findall(text, 0, end)
    for desc in _RARE_DESCS:
        at = text.find(desc, 0, end)
        while at >= 0:
            m = _LINE_RE.match(text, text.rfind(b"\n", 0, at) + 1, end)
            if m is not None and m.group(1) not in (b"Transaction", b"Storage"):
                found.append((m[1], m[2], m[3], m[4], m[5]))
            at = text.find(desc, at + 1, end)
    return found


def _commit_time(ts: str) -> datetime:
    return datetime.fromisoformat(ts).replace(tzinfo=UTC)


def parse_output(text: Text, result: ChunkResult, end: int | None = None) -> None:
    """Fold pg_waldump's output (up to end) into result (module level so worker
    processes can run it)."""
    end = len(text) if end is None else end
    counts = Counter(_ROW_RE.findall(text, 0, end))
    for (xid_s, op, rel_b), n in counts.items():
        target = result.deletes if op == b"DELETE" else result.updates
        rels = target.setdefault(int(xid_s), {})
        rel = rel_b.decode()
        rels[rel] = rels.get(rel, 0) + n
    for rmgr_b, xid_s, lsn_b, op_b, rest_b in _rare_records(text, end):
        rmgr, op, lsn, rest = rmgr_b.decode(), op_b.decode(), lsn_b.decode(), rest_b.decode(errors="replace")
        xid = int(xid_s)
        if rmgr == "Transaction" and op in ("COMMIT", "ABORT", "COMMIT_PREPARED", "ABORT_PREPARED"):
            head, _, tail = rest.partition("; ")
            if not head.endswith(" UTC"):
                continue
            prepared = _PREPARED_RE.match(head)
            if prepared:        # COMMIT/ABORT PREPARED name the prepared transaction first
                xid, head = int(prepared.group(1)), head[prepared.end():]
            try:
                when = _commit_time(head[:-4])
            except ValueError:
                continue
            commit = Commit(xid, when, lsn, aborted=op.startswith("ABORT"))
            if tail:
                for part in tail.split("; "):
                    if part.startswith("rels: "):
                        commit.rels = [path_to_key(p) for p in part[6:].split()]
                    elif part.startswith("dropped stats:"):
                        commit.dropped_stats = True
                    elif part.startswith("subxacts: "):
                        commit.subxacts = [int(x) for x in part[10:].split() if x.isdigit()]
            result.commits[xid] = commit
        elif rmgr == "Storage" and op == "CREATE":
            result.creates.setdefault(xid, []).append(path_to_key(rest.strip().split()[0]))
        elif rmgr == "Heap" and op == "TRUNCATE":
            result.heap_truncates[xid] = result.heap_truncates.get(xid, 0) + 1
        elif rmgr == "XLOG" and op == "RESTORE_POINT":
            result.restore_points.append((rest.strip(), lsn))
    last = _LAST_LSN_RE.match(text, max(0, text.rfind(b"lsn: ", 0, end)), end)
    if last is not None:
        result.last_lsn = last.group(1).decode()


def parse_lines(lines: Sequence[str], result: ChunkResult) -> None:
    parse_output("\n".join(lines).encode(), result)


@dataclass(frozen=True)
class Chunk:
    """One segment to read: its archived file, and the next one (for boundary records).

    further: the files of the segments after the next one, consecutive, for a record
    longer than a segment (up to PostgreSQL's 1 GB record limit); each is opened only
    when the record before it fills the whole of the previous one."""

    segment: Segment
    source: Path                 # <name>.zst in the archive, or a .partial in incoming/
    next_source: Path | None
    next_segment: Segment | None
    segment_size: int
    further: tuple[Path, ...] = ()


MAX_RECORD = 1 << 30            # a WAL record is at most ~1 GB (XLogRecordMaxSize)


PAGE = 8192                         # XLOG_BLCKSZ
LONG_HEADER, SHORT_HEADER = 40, 24  # XLogLongPageHeaderData / XLogPageHeaderData, MAXALIGNed
XLP_FIRST_IS_CONTRECORD = 0x0001


def _open_wal(src: Path) -> tuple[IO[bytes], IO[bytes]]:
    raw = open(src, "rb")  # noqa: SIM115 - closed by the caller
    return raw, (zstandard.ZstdDecompressor().stream_reader(raw) if src.name.endswith(".zst") else raw)


def _materialize(src: Path, dest: Path, segment_size: int, limit: int | None = None) -> None:
    """The segment as pg_waldump reads it: decompressed, padded with zeros to its size;
    with limit, only its first `limit` bytes are real. An existing dest is overwritten in
    place (its memory pages are reused: allocating and freeing 16 MB of tmpfs per segment
    costs more CPU than decompressing it), and whatever the source does not cover is
    zeroed, never left from the file's previous segment."""
    raw, reader = _open_wal(src)
    try:
        with open(dest, "r+b" if dest.exists() else "wb") as out:
            left = segment_size if limit is None else min(limit, segment_size)
            while left > 0:
                block = reader.read(min(left, 1 << 20))
                if not block:
                    break
                out.write(block)
                left -= len(block)
            if left > 0 or limit is not None:
                out.truncate(out.tell())      # cut what the source did not cover ...
            out.truncate(segment_size)        # ... and pad it with zeros
    finally:
        raw.close()


def continuation_bytes(src: Path, segment_size: int) -> int:
    """How many bytes of this segment the record crossing into it from the previous one
    occupies (page headers included, rounded up to whole pages); 0 when none crosses."""
    raw, reader = _open_wal(src)
    try:
        head = reader.read(LONG_HEADER)
    finally:
        raw.close()
    if len(head) < LONG_HEADER:
        return 0
    info, = struct.unpack_from("<H", head, 2)
    rem_len, = struct.unpack_from("<I", head, 16)
    if not info & XLP_FIRST_IS_CONTRECORD:
        return 0
    first = PAGE - LONG_HEADER
    pages = 1 if rem_len <= first else 1 + -(-(rem_len - first) // (PAGE - SHORT_HEADER))
    return min(pages * PAGE, segment_size)


def _cut_point(text: Text, end_lsn: int) -> int:
    """Where the trailing lines of records that start at or after end_lsn begin (few:
    only those on the next segment's pages read for the crossing record)."""
    stop = len(text)
    while stop > 0:
        cut = text.rfind(b"\n", 0, stop - 1) + 1
        m = _LAST_LSN_RE.search(text, cut, stop)
        if m is None or parse_lsn(m.group(1).decode()) < end_lsn:
            break
        stop = cut
    return stop


def _cut_after(text: bytes, end_lsn: int) -> bytes:
    return text[:_cut_point(text, end_lsn)]


def _unpack(tmp: Path, chunk: Chunk) -> tuple[int, int]:
    """The chunk's segment (and what the record crossing out of it needs of the next
    ones) as pg_waldump reads them, in tmp; returns the LSNs to read from and to."""
    size = chunk.segment_size
    _materialize(chunk.source, tmp / chunk.segment.name(size), size)
    start = chunk.segment.start_lsn(size)
    end = start + size
    if chunk.next_source is not None and chunk.next_segment is not None:
        # The following segments are named on this chunk's timeline, whatever timeline
        # their files are archived under: pg_waldump -t looks for one timeline's names,
        # and the first segment of a new timeline begins with the old one's bytes.
        sources = (chunk.next_source, *chunk.further)
        for i, src in enumerate(sources):
            extra = continuation_bytes(src, size)
            if not extra:
                break
            name = Segment(chunk.segment.timeline, chunk.segment.segno + 1 + i).name(size)
            _materialize(src, tmp / name, size, extra)
            end += extra
            if extra < size:
                break      # the crossing record ends in this segment
    return start, end


def _dump(programs: Programs, tmp: Path, chunk: Chunk, span: tuple[int, int], rmgrs: tuple[str, ...],
          xid: int | None, relation: str | None, result: ChunkResult) -> tuple[int, str]:
    """One pg_waldump run over the unpacked chunk, its output folded into result."""
    start, end = span
    args = ["-p", str(tmp), "-t", str(chunk.segment.timeline), "-s", format_lsn(start), "-e", format_lsn(end)]
    for rmgr in rmgrs:
        args += ["-r", rmgr]
    if xid is not None:
        args += ["-x", str(xid)]
    if relation is not None:
        args += ["-R", relation]
    # stdout to a file read back in one call: a pipe read line by line costs more
    # Python time than pg_waldump itself (a segment prints ~100k lines)
    dumped = tmp / "waldump.out"
    res = programs.run("pg_waldump", args, ok_codes=(0, 1), as_server_user=False,
                       env={"TZ": "UTC", "PGTZ": "UTC"}, timeout=600, stdout_path=dumped)
    with open(dumped, "rb") as fh:
        if os.fstat(fh.fileno()).st_size:
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as text:
                cut = start + chunk.segment_size
                parse_output(text, result, _cut_point(text, cut) if end > cut else None)
    dumped.unlink()
    return res.returncode, res.stderr


def _prepared_end(programs: Programs, tmp: Path, chunk: Chunk, span: tuple[int, int], xid: int,
                  result: ChunkResult) -> list[str]:
    """COMMIT/ROLLBACK PREPARED of xid, which -x cannot find: it runs in a session of
    its own, so the record's header carries that session's xid (usually 0) and the
    prepared one only in its body. One more run over the commits, keeping that one."""
    others = ChunkResult(result.segment)
    _dump(programs, tmp, chunk, span, ("Transaction",), None, None, others)
    found = others.commits.get(xid)
    if found is None or xid in result.commits:
        return []
    result.commits[xid] = found
    return [found.lsn]


def passes(rmgrs: tuple[str, ...], relations: tuple[str, ...]) -> list[tuple[tuple[str, ...], str | None]]:
    """The pg_waldump runs one chunk needs: one with every rmgr; or, when only some
    relations matter, their Heap records one relation at a time (-R takes one) and the
    other rmgrs' records (commits name dropped files and have no block to filter on) in
    one more run. Each run decodes the whole segment but prints only what it keeps, and
    printing, then parsing, is nearly all the cost."""
    if not relations or "Heap" not in rmgrs:
        return [(rmgrs, None)]
    rest = tuple(r for r in rmgrs if r != "Heap")
    return ([(rest, None)] if rest else []) + [(("Heap",), rel) for rel in relations]


SHM = "/dev/shm"


def scratch_root(segment_size: int, jobs: int) -> str | None:
    """Where the workers unpack segments and keep pg_waldump's output: memory (/dev/shm)
    when it has room for every worker's files (a segment, part of the next, and ~1.5
    segments of text each), else the temp folder (None). On disk, writing and unlinking
    ~3 segments' worth per segment costs a third of the scan's CPU."""
    try:
        st = os.statvfs(SHM)
    except OSError:
        return None
    need = jobs * 4 * segment_size + (64 << 20)
    return SHM if os.access(SHM, os.W_OK) and st.f_bavail * st.f_frsize >= need else None


SCAN_PREFIX = "pgdr-waldump-"


def _worker_dir(scan_root: Path) -> Path:
    """This process's folder in a scan's root, kept across its chunks: the segment file
    it holds is renamed and overwritten by the next chunk (see _materialize)."""
    folder = scan_root / f"w{os.getpid()}"
    folder.mkdir(exist_ok=True)
    for entry in folder.iterdir():
        if entry.name != "seg":
            entry.unlink()          # the previous chunk's next segments and output
    return folder


def reap_stale(folder: Path) -> list[Path]:
    """Remove the scan roots (pgdr-waldump-<pid>-*) of scans whose pgdr is gone (killed):
    in /dev/shm they would hold memory until reboot. A live pid's root is never touched."""
    from pgdr.pg.children import is_alive

    removed: list[Path] = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        pid = entry.name.removeprefix(SCAN_PREFIX).split("-", 1)[0]
        if entry.name.startswith(SCAN_PREFIX) and pid.isdigit() and not is_alive(int(pid)) and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def read_chunk(programs: Programs, chunk: Chunk, rmgrs: tuple[str, ...], xid: int | None,
               scan_root: str | None = None, relations: tuple[str, ...] = (),
               reader: str | None = None, compact: bool = False) -> ChunkResult:
    """One segment's records (see the module docstring); scan_root: the scan's folder to
    unpack in (else a folder of its own, removed after); relations: when given, only
    these relations' Heap records are read (spc/db/node); reader: "pg_waldump" to read
    with pg_waldump even when the native reader (walsum.py) is built."""
    name = chunk.segment.name(chunk.segment_size)
    native = None
    if reader != "pg_waldump":
        from pgdr.pg import walsum

        native = walsum.module()
    note = None
    if native is not None:
        from pgdr.pg import walsum

        result = ChunkResult(name, reader="native")
        try:
            data = walsum.load(chunk)
        except (OSError, zstandard.ZstdError) as exc:
            result.error = f"cannot read {name}: {exc}"
            return result
        note = walsum.why_not(data, rmgrs, relations)
        if note is None:
            walsum.summarize(native, data, chunk.segment.start_lsn(chunk.segment_size), chunk.segment_size,
                             rmgrs, xid, relations, result, compact)
            result.bytes_read = chunk.segment_size
            return result
    result = ChunkResult(name, note=note)
    tmp = _worker_dir(Path(scan_root)) if scan_root else Path(tempfile.mkdtemp(prefix=SCAN_PREFIX))
    try:
        try:
            kept = tmp / "seg"
            if kept.exists():
                kept.rename(tmp / name)
            span = _unpack(tmp, chunk)
            runs = []
            last: list[str] = []
            for rmgrs_, rel in passes(rmgrs, relations):
                runs.append(_dump(programs, tmp, chunk, span, rmgrs_, xid, rel, result))
                if result.last_lsn is not None:
                    last.append(result.last_lsn)
            if xid is not None and "Transaction" in rmgrs:
                last += _prepared_end(programs, tmp, chunk, span, xid, result)
        except (OSError, zstandard.ZstdError) as exc:
            result.error = f"cannot read {name}: {exc}"
            return result
        result.bytes_read = chunk.segment_size
        for code, err_text in runs:
            if code != 0 and result.error is None:
                err = err_text.strip().splitlines()
                result.error = err[-1] if err else f"pg_waldump exit {code}"
                m = _END_RE.search(err_text)
                if m:
                    result.end_lsn = m.group(1)
        result.last_lsn = max(last, key=parse_lsn) if last else None
        return result
    finally:
        if scan_root:
            with contextlib.suppress(OSError):
                (tmp / name).rename(tmp / "seg")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def _read_chunk_job(args: tuple[Programs, Chunk, tuple[str, ...], int | None, str | None,
                                tuple[str, ...], str | None, bool]) -> ChunkResult:
    return read_chunk(*args)


def _native_built() -> bool:
    from pgdr.pg import walsum

    return walsum.module() is not None


Progress = Callable[[int, int], None]
"""Called with (chunks done, chunks in all) as a scan advances."""


def scan(programs: Programs, chunks: Sequence[Chunk], rmgrs: tuple[str, ...],
         *, xid: int | None = None, jobs: int | None = None, progress: Progress | None = None,
         relations: tuple[str, ...] = (), reader: str | None = None, compact: bool = False) -> ScanResult:
    """Read chunks in parallel processes (natively, or see passes() for the pg_waldump
    runs per chunk); results in chunk order. compact: plain commits may be packed (see
    PlainCommits; ScanResult.commit and .commits find them)."""
    import time

    t0 = time.monotonic()
    # with pg_waldump two workers per core (each waits on its pg_waldump part of the
    # time); the native reader keeps its core busy
    native = reader != "pg_waldump" and _native_built()
    jobs = max(1, min(jobs or (1 if native else 2) * (os.cpu_count() or 2), len(chunks) or 1))
    scratch = scratch_root(chunks[0].segment_size, jobs) if chunks else None
    reap_stale(Path(scratch or tempfile.gettempdir()))
    root = tempfile.mkdtemp(prefix=f"{SCAN_PREFIX}{os.getpid()}-", dir=scratch)
    work = [(programs, c, rmgrs, xid, root, relations, reader, compact) for c in chunks]
    results: list[ChunkResult] = []
    try:
        if jobs == 1 or len(chunks) <= 1:
            for w in work:
                results.append(_read_chunk_job(w))
                if progress:
                    progress(len(results), len(work))
        else:
            import multiprocessing

            with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("fork")) as pool:
                for r in pool.map(_read_chunk_job, work, chunksize=1):
                    results.append(r)
                    if progress:
                        progress(len(results), len(work))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return ScanResult(results, time.monotonic() - t0)


def require_chunks(chunks: Sequence[Chunk]) -> None:
    if not chunks:
        raise RepositoryError("the WAL archive holds no segments to read",
                              hint="is the archiver running? (`pgdr archiver start`)")


_CHECKPOINT_RE = re.compile(rb"rmgr: XLOG +len \(rec/tot\): *\d+/ *\d+, tx: +\d+, lsn: ([0-9A-F]+/[0-9A-F]+), "
                            rb"prev [0-9A-F]+/[0-9A-F]+, desc: CHECKPOINT_(?:ONLINE|SHUTDOWN) [^\n]*?; "
                            rb"xid (\d+):(\d+);")


def checkpoints(programs: Programs, chunk: Chunk) -> list[tuple[int, int]]:
    """(LSN, next full xid) of every checkpoint record in the chunk's segment: the xid
    epoch at that point (WAL records carry 32-bit xids; a checkpoint's nextXid carries the
    epoch, as pg_controldata's 'NextXID e:x' does). Read with pg_waldump -r XLOG; the
    native reader does not decode checkpoints."""
    tmp = Path(tempfile.mkdtemp(prefix=SCAN_PREFIX))
    try:
        start, end = _unpack(tmp, chunk)
        args = ["-p", str(tmp), "-t", str(chunk.segment.timeline), "-s", format_lsn(start),
                "-e", format_lsn(end), "-r", "XLOG"]
        programs.run("pg_waldump", args, ok_codes=(0, 1), as_server_user=False, timeout=600,
                     stdout_path=tmp / "waldump.out")
        text = (tmp / "waldump.out").read_bytes()
        found = [(parse_lsn(m[1].decode()), (int(m[2]) << 32) | int(m[3])) for m in _CHECKPOINT_RE.finditer(text)]
        return [(lsn, full) for lsn, full in found if lsn < start + chunk.segment_size]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
