"""The WAL archive in the repository: put segments in (checked, compressed, durable),
get them out (decompressed, checksum verified), and find gaps.

Each segment is stored as <name>.zst with zstd's frame checksum, so a flipped byte
is caught when the segment is read back; before it is stored, its first page header
must name this segment's address and this cluster's system identifier, so a
truncated, misplaced or foreign file never enters the archive.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import zstandard

from pgdr.errors import RepositoryError
from pgdr.fsutil import durable_rename
from pgdr.pg.lsn import HISTORY_NAME_RE, Segment, parse_segment_name
from pgdr.repo.layout import Repository

XLOG_PAGE_MAGIC_PG15 = 0xD110
ZST = ".zst"


# restore_command's answer for a damaged segment: PostgreSQL aborts recovery on an exit
# status above 125, while 1 would mean "not in the archive" and end recovery quietly there.
WAL_DAMAGED_EXIT = 126


class SegmentInvalid(RepositoryError):
    """A file offered to the archive is not the WAL segment its name claims."""


class SegmentDamaged(RepositoryError):
    """An archived WAL file is present but cannot be trusted (decompression, checksum, header)."""


def check_segment_bytes(name: str, data: bytes, segment_size: int, system_identifier: str | None) -> None:
    seg = parse_segment_name(name, segment_size)
    if seg is None:
        raise SegmentInvalid(f"{name}: not a WAL segment name")
    if len(data) != segment_size:
        raise SegmentInvalid(f"{name}: {len(data)} bytes, expected {segment_size}")
    magic, _info, _tli, pageaddr = struct.unpack_from("<HHIQ", data, 0)
    sysid, seg_size = struct.unpack_from("<QI", data, 24)
    if pageaddr != seg.start_lsn(segment_size):
        raise SegmentInvalid(f"{name}: first page is for address {pageaddr:X}, not this segment's")
    if seg_size != segment_size:
        raise SegmentInvalid(f"{name}: header says segment size {seg_size}")
    if system_identifier is not None and str(sysid) != str(system_identifier):
        raise SegmentInvalid(f"{name}: belongs to cluster {sysid}, not {system_identifier}")
    if magic != XLOG_PAGE_MAGIC_PG15:
        # Other major versions have other magics; the address check above already
        # proves it is WAL, so a version mismatch is only worth noting, not refusing.
        pass


@dataclass(frozen=True)
class ArchivedFile:
    name: str
    path: Path
    size: int


class WalArchive:
    def __init__(self, repo: Repository, compression_level: int = 1) -> None:
        self.repo = repo
        self.level = compression_level

    # ---- writing -----------------------------------------------------------------
    def store(self, src: Path) -> str:
        """Check, compress and durably store one completed segment or history file.

        Returns 'stored', or 'duplicate' when an identical copy is already archived.
        A different file under the same name is refused: the archive is never overwritten.
        """
        name = src.name
        data = src.read_bytes()
        if HISTORY_NAME_RE.match(name) is None:
            ident = self.repo.identity() or {}
            check_segment_bytes(name, data, self.repo.wal_segment_size,
                                ident.get("system_identifier"))
        dest = self.repo.wal_dir / (name + ZST)
        store, key = self.repo.store, f"wal/{name}{ZST}"
        if dest.exists() or (store is not None and store.exists(key)):
            if not dest.exists() and store is not None:  # only in the store: compare with its copy
                archived = zstandard.ZstdDecompressor().decompress(store.get_bytes(key))
            else:
                archived = self.read(name)
            if archived == data:  # both whole in memory: compare them, no digest needed
                return "duplicate"
            raise RepositoryError(f"{name} is already archived with different contents",
                                  hint="two clusters or timelines write to one repository?")
        compressed = zstandard.ZstdCompressor(level=self.level, write_checksum=True,
                                              write_content_size=True).compress(data)
        if store is not None:  # the store is the archive; the local copy below is its cache
            from pgdr.repo.remote import encrypted

            store.put_bytes(key, compressed)
            if encrypted(self.repo):  # no decrypted copy kept at rest
                return "stored"
        tmp = dest.with_name(f".{dest.name}.tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(compressed)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError:  # a full disk: leave no half file taking the space
            tmp.unlink(missing_ok=True)
            raise
        os.chmod(tmp, 0o640)
        self.repo.run_as.chown(tmp)
        durable_rename(tmp, dest)
        return "stored"

    # ---- reading -----------------------------------------------------------------
    def read(self, name: str) -> bytes:
        """Decompressed (frame checksum verified) and, for a segment, its first page header
        checked against its name; SegmentDamaged names the file otherwise."""
        path = self.repo.wal_dir / (name + ZST)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise RepositoryError(f"WAL file {name} is not in the archive") from None
        try:
            data = zstandard.ZstdDecompressor().decompress(raw)
        except zstandard.ZstdError as exc:
            raise SegmentDamaged(f"WAL file {name} in the archive is damaged: {exc}",
                                 hint=f"{path} cannot be decompressed; recovery cannot pass it") from None
        self._check_header(name, data, path)
        return data

    def _check_header(self, name: str, data: bytes, path: Path) -> None:
        if HISTORY_NAME_RE.match(name) is not None:
            return
        try:
            check_segment_bytes(name, data, self.repo.wal_segment_size,
                                (self.repo.identity() or {}).get("system_identifier"))
        except SegmentInvalid as exc:
            raise SegmentDamaged(f"WAL file {name} in the archive is damaged: {exc.message}",
                                 hint=f"see {path}") from None

    def fetch(self, name: str, dest: Path) -> bool:
        """restore_command's job: False (exit 1 for PostgreSQL) when the file is absent.

        The newest WAL is still in incoming/<name>.partial (pg_receivewal's open
        segment): when the requested segment is not archived and its .partial is the
        newest one, that is served, padded to a whole segment (Barman's --partial).
        Recovery then reads up to the last streamed record and sees zeros as the end
        of WAL, so targets seconds old are reachable.
        """
        finished = self.repo.incoming_dir / name
        if not (self.repo.wal_dir / (name + ZST)).exists() and finished.is_file():
            # complete, waiting in incoming/ for the archiver to store it
            try:
                data = finished.read_bytes()
            except FileNotFoundError:  # stored meanwhile
                return self.fetch(name, dest)
            self._check_header(name, data, finished)
        elif not (self.repo.wal_dir / (name + ZST)).exists():
            partial = self.partial_path(name)
            if partial is None:
                return False
            try:
                data = partial.read_bytes()
            except FileNotFoundError:  # completed and archived meanwhile
                return self.fetch(name, dest) if (self.repo.wal_dir / (name + ZST)).exists() else False
            if len(data) < self.repo.wal_segment_size:
                data += bytes(self.repo.wal_segment_size - len(data))
        else:
            data = self.read(name)
        tmp = dest.with_name(f".{dest.name}.pgdr-tmp")
        tmp.write_bytes(data)
        os.replace(tmp, dest)
        return True

    def files(self) -> list[ArchivedFile]:
        out = []
        if self.repo.wal_dir.is_dir():
            for entry in os.scandir(self.repo.wal_dir):
                if entry.is_file() and entry.name.endswith(ZST) and not entry.name.startswith("."):
                    out.append(ArchivedFile(entry.name[: -len(ZST)], Path(entry.path),
                                            entry.stat().st_size))
        return sorted(out, key=lambda f: f.name)

    def segments(self) -> list[Segment]:
        size = self.repo.wal_segment_size
        segs = (parse_segment_name(f.name, size) for f in self.files())
        return sorted(s for s in segs if s is not None)

    def waiting(self) -> list[Segment]:
        """Complete segments pg_receivewal finished that the archiver has not stored yet:
        they are in the archive for recovery's purposes (wal-fetch serves them)."""
        size = self.repo.wal_segment_size
        out = []
        if self.repo.incoming_dir.is_dir():
            for entry in os.scandir(self.repo.incoming_dir):
                seg = parse_segment_name(entry.name, size)
                if seg is not None and entry.is_file() and entry.stat().st_size == size:
                    out.append(seg)
        return sorted(out)

    def partial_path(self, name: str) -> Path | None:
        """incoming/<name>.partial when it exists and is the newest open segment."""
        newest = self.partial()
        if newest is None or newest[0].name(self.repo.wal_segment_size) != name:
            return None
        path = self.repo.incoming_dir / f"{name}.partial"
        return path if path.exists() else None

    def partial(self) -> tuple[Segment, int] | None:
        """The segment pg_receivewal is writing now and how many bytes it holds."""
        size = self.repo.wal_segment_size
        best: tuple[Segment, int] | None = None
        if self.repo.incoming_dir.is_dir():
            for entry in os.scandir(self.repo.incoming_dir):
                if entry.name.endswith(".partial"):
                    seg = parse_segment_name(entry.name.removesuffix(".partial"), size)
                    if seg and (best is None or seg > best[0]):
                        best = (seg, entry.stat().st_size)
        return best




def find_gaps(segments: list[Segment], from_segno: int | None = None) -> list[tuple[int, int]]:
    """Missing segment-number ranges (inclusive) between the first needed and the newest.

    A segment number counts as present when any timeline holds it: after a timeline
    switch, the old timeline's last segment and the new one's first share a number.
    """
    present = {s.segno for s in segments}
    if not present:
        return []
    low = min(present) if from_segno is None else from_segno
    high = max(present)
    gaps: list[tuple[int, int]] = []
    start = None
    for segno in range(low, high + 1):
        if segno not in present:
            start = segno if start is None else start
        elif start is not None:
            gaps.append((start, segno - 1))
            start = None
    if start is not None:
        gaps.append((start, high))
    return gaps
