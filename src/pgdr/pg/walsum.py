"""Reading a chunk of WAL natively (pgdr._walsum), into the same ChunkResult pg_waldump's
text gives (waldump.parse_output).

pg_waldump prints every record as a line of text, and even scanning that text with
whole-buffer regexes costs several times what pg_waldump itself costs; the native module
reads the raw bytes as PostgreSQL's xlogreader does and summarizes them in C. The chunk's
segment is decompressed in memory (no temp files), with as much of the following
segments as the record crossing out of it needs (waldump.continuation_bytes), exactly
the bytes pg_waldump -e would read.

pg_waldump stays the reference and the fallback: when the module was not built (no
compiler), when PGDR_WAL_READER=pg_waldump asks for it, for a WAL version (page magic)
this decoder does not know, or a resource manager it does not filter on, waldump.read_chunk
runs pg_waldump instead (why_not says why, kept as ChunkResult.note); ChunkResult.reader
says which read a chunk.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

# XLOG_PAGE_MAGIC of each major (src/include/access/xlog_internal.h): the layouts the
# decoder knows; another magic (a newer major) is read by pg_waldump
PAGE_MAGIC = {0xD106: 13, 0xD10D: 14, 0xD110: 15, 0xD113: 16, 0xD116: 17, 0xD118: 18}
RMGR_IDS = {"XLOG": 0, "Transaction": 1, "Storage": 2, "Heap": 10, "LogicalMessage": 21}
PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
ENV = "PGDR_WAL_READER"


def module() -> ModuleType | None:
    """The native module, or None (not built here, or pg_waldump asked for)."""
    if os.environ.get(ENV) == "pg_waldump":
        return None
    try:
        from pgdr import _walsum  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _walsum  # type: ignore[no-any-return]


def _fill(src: Path, into: memoryview) -> None:
    """Decompress src into `into`; what src does not cover is zeroed (pg_waldump sees a
    short segment padded with zeros)."""
    from pgdr.pg.waldump import _open_wal

    raw, reader = _open_wal(src)
    try:
        got = 0
        while got < len(into):
            n = reader.readinto(into[got:])  # type: ignore[attr-defined]
            if not n:
                break
            got += n
    finally:
        raw.close()
    if got < len(into):
        into[got:] = bytes(len(into) - got)


_buffer = bytearray()
"""This process's buffer, reused from chunk to chunk: a fresh 16 MB per segment costs its
page faults again (~15% of a native read)."""


def load(chunk: object) -> memoryview:
    """The chunk's segment and the continuation of its last record, as one buffer (valid
    until the next load in this process)."""
    global _buffer
    from pgdr.pg.waldump import Chunk, continuation_bytes

    assert isinstance(chunk, Chunk)
    size = chunk.segment_size
    extras: list[tuple[Path, int]] = []
    if chunk.next_source is not None and chunk.next_segment is not None:
        for src in (chunk.next_source, *chunk.further):
            extra = continuation_bytes(src, size)
            if not extra:
                break
            extras.append((src, extra))
            if extra < size:
                break
    need = size + sum(e for _, e in extras)
    if len(_buffer) < need:
        _buffer = bytearray(need)
    view = memoryview(_buffer)[:need]
    _fill(chunk.source, view[:size])
    at = size
    for src, extra in extras:
        _fill(src, view[at:at + extra])
        at += extra
    return view


def why_not(data: bytes | bytearray | memoryview, rmgrs: tuple[str, ...], relations: tuple[str, ...]) -> str | None:
    """Why this chunk must be read by pg_waldump (None: the native reader can)."""
    magic = int.from_bytes(data[:2], "little") if len(data) >= 2 else 0
    if magic not in PAGE_MAGIC:
        return f"WAL page magic 0x{magic:04X} is not one pgdr decodes (PostgreSQL {min(PAGE_MAGIC.values())}-" \
               f"{max(PAGE_MAGIC.values())})"
    unknown = [r for r in rmgrs if r not in RMGR_IDS]
    if unknown:
        return f"resource managers {', '.join(unknown)} are read by pg_waldump only"
    if any(len(r.split("/")) != 3 or not all(p.isdigit() for p in r.split("/")) for r in relations):
        return "relation filter is not spc/db/node"
    return None


def lsn_text(value: int) -> str:
    """An LSN as pg_waldump prints a record's (%X/%08X), so both readers' results compare equal."""
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:08X}"


def summarize(native: ModuleType, data: bytes | bytearray | memoryview, start: int, segment_size: int, rmgrs: tuple[str, ...],
              xid: int | None, relations: tuple[str, ...], result: object, compact: bool = False) -> None:
    """Fold what the native reader finds in data (WAL from start) into result, as
    waldump.parse_output folds pg_waldump's text: only records of rmgrs (and xid), Heap
    records only of relations when given, and only records starting in the first
    segment (the rest of data is the crossing record's continuation). compact: plain
    commits go to result.plain, packed (waldump.PlainCommits)."""
    from array import array

    from pgdr.pg.waldump import ChunkResult, Commit, PlainCommits, end_of_wal

    assert isinstance(result, ChunkResult)
    mask = 0
    for r in rmgrs:
        mask |= 1 << RMGR_IDS[r]
    rels = tuple(tuple(int(p) for p in r.split("/")) for r in relations) if "Heap" in rmgrs else ()
    magic = int.from_bytes(data[:2], "little")
    rows, commits, creates, truncates, points, last, error = native.summarize(
        data, start, segment_size, start + segment_size, magic, mask, -1 if xid is None else xid, rels)
    for kind, row_xid, rel, n in rows:
        target = result.deletes if kind else result.updates
        per = target.setdefault(row_xid, {})
        per[rel] = per.get(rel, 0) + n
    plain = PlainCommits(array("I"), array("q"), array("Q"), b"") if compact else None
    flags = bytearray()
    for rec_xid, twophase, aborted, when, lsn, dropped, subxacts, stats in commits:
        key = twophase or rec_xid     # COMMIT/ABORT PREPARED: the prepared transaction's xid
        if plain is not None and not dropped and not subxacts and not stats:
            plain.xids.append(key)
            plain.times.append(when)
            plain.lsns.append(lsn)
            flags.append(1 if aborted else 0)
            continue
        result.commits[key] = Commit(key, PG_EPOCH + timedelta(microseconds=when), lsn_text(lsn), dropped,
                                     bool(stats), subxacts, bool(aborted))
    if plain is not None and plain.xids:
        plain.aborted = bytes(flags)
        result.plain = plain
    for create_xid, rel in creates:
        result.creates.setdefault(create_xid, []).append(rel)
    for t_xid, n in truncates.items():
        result.heap_truncates[t_xid] = result.heap_truncates.get(t_xid, 0) + n
    result.restore_points += [(name.decode(errors="replace").strip(), lsn_text(lsn)) for name, lsn in points]
    if last is not None:
        result.last_lsn = lsn_text(last)
    if error is not None:
        result.error = error
        result.end_lsn = end_of_wal(error)
