"""Extraction with 1 MiB tar records (extract.TAR_RECORD_BLOCKS) under the faults the
10 KiB records were already proven against: archives whose length is no multiple of the
record, members straddling record boundaries, a byte flipped at the start, middle or end
of a stored tar, truncation exactly at a record boundary and inside one, bytes after a
complete zstd frame, and a disk that fills during the extraction.

The backups are synthetic (a tar built here, pgdr.json written from its bytes) so each
case costs milliseconds; the witnesses are independent of pgdr's report: the extracted
files compared byte by byte with what went into the tar, and the target folder's (or the
small tmpfs's) contents afterwards. SIGKILL mid-extract is test_rspeed_extract.py's.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
import zstandard

from pgdr.errors import RepositoryError
from pgdr.pg.programs import Programs
from pgdr.repo.manifest import BackupManifest, FileEntry
from pgdr.restore import extract
from pgdr.restore.extract import BackupDamaged, extract_physical

MIB = 1 << 20
# sizes around the 512-byte block and the 1 MiB record, so headers and data cross records
SIZES = [0, 1, 511, 512, 513, MIB - 1, MIB, MIB + 1, 3 * MIB + 777, 5000]


def _members(seed: int) -> dict[str, bytes]:
    out = {"PG_VERSION": b"15\n"}
    for i, size in enumerate(SIZES):
        # half random (incompressible), half repetitive: both zstd block kinds
        body = os.urandom(size // 2) + bytes([seed + i]) * (size - size // 2)
        out[f"base/1/{16384 + i}"] = body
    return out


def _tar(members: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        dirs = sorted({str(parent) for name in members for parent in Path(name).parents if str(parent) != "."})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o700
            tar.addfile(info)
        for name, body in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(body), 0o600
            tar.addfile(info, io.BytesIO(body))
    return raw.getvalue()


def _wal_members() -> dict[str, bytes]:
    return {"000000010000000000000002": os.urandom(2 * MIB + 4321), "archive_status/x.done": b""}


def _write_backup(folder: Path, *, base: bytes, wal: bytes) -> BackupManifest:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(mode=0o755, parents=True)
    files = {"base.tar.zst": base, "pg_wal.tar": wal}
    for name, body in files.items():
        (folder / name).write_bytes(body)
        os.chmod(folder / name, 0o644)
    now = datetime.now(UTC)
    return BackupManifest.model_construct(
        id=folder.name, kind="physical", cluster="rs3", source_node="n1", start_time=now, stop_time=now,
        duration_s=0.0, start_lsn="0/2000028", stop_lsn="0/2000100", timeline=1, pg_version="15",
        pg_version_num=150000, system_identifier="1", wal_segment_size=16 * MIB, data_checksums=True,
        compression="zstd", bytes_on_disk=sum(map(len, files.values())), bytes_logical=0,
        # sha256, as a format-1 pgdr.json records it: the older digest stays exercised here
        files={name: FileEntry(size=len(body), sha256=hashlib.sha256(body).hexdigest())
               for name, body in files.items()})


def _tree(root: Path) -> dict[str, bytes]:
    out = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            out[str(path.relative_to(root))] = path.read_bytes()
    return out


@pytest.fixture(scope="module")
def archives() -> dict[str, object]:
    base_members, wal_members = _members(7), _wal_members()
    base_tar = _tar(base_members)
    assert len(base_tar) % MIB != 0, "the test needs a last record shorter than 1 MiB"
    return {"base_members": base_members, "wal_members": wal_members, "base_tar": base_tar,
            "base": zstandard.ZstdCompressor(level=1).compress(base_tar), "wal": _tar(wal_members)}


def test_record_size_is_a_whole_number_of_pipe_buffers() -> None:
    assert extract.TAR_RECORD_BLOCKS * 512 == extract.PIPE_BYTES


def test_every_byte_arrives_across_record_boundaries(archives: dict, base_dir: Path, programs: Programs) -> None:
    folder = base_dir / "rs3-ok"
    manifest = _write_backup(folder, base=archives["base"], wal=archives["wal"])
    target = base_dir / "rs3-ok-target"
    shutil.rmtree(target, ignore_errors=True)
    extract_physical(folder, target, programs, manifest=manifest, tablespaces={})
    got = _tree(target)
    expected = dict(archives["base_members"]) | {f"pg_wal/{k}": v for k, v in archives["wal_members"].items()}
    assert got.keys() == expected.keys()
    for name, body in expected.items():
        assert got[name] == body, f"{name} differs after extraction"
    shutil.rmtree(target)


@pytest.mark.parametrize("victim", ["base.tar.zst", "pg_wal.tar"])
@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_flipped_byte_is_named_and_nothing_is_left(archives: dict, base_dir: Path, programs: Programs,
                                                   victim: str, where: str) -> None:
    folder = base_dir / f"rs3-flip-{victim}-{where}"
    manifest = _write_backup(folder, base=archives["base"], wal=archives["wal"])
    path = folder / victim
    body = bytearray(path.read_bytes())
    offset = {"start": 0, "middle": len(body) // 2, "end": len(body) - 1}[where]
    body[offset] ^= 0x01
    path.write_bytes(bytes(body))
    target = base_dir / f"rs3-flip-target-{victim}-{where}"
    shutil.rmtree(target, ignore_errors=True)
    with pytest.raises(BackupDamaged) as caught:
        extract_physical(folder, target, programs, manifest=manifest, tablespaces={})
    assert f"{victim}: sha256" in caught.value.message
    assert not target.exists()


@pytest.mark.parametrize("victim", ["base", "wal"])
@pytest.mark.parametrize("cut", ["one record", "two records", "inside a record"])
def test_truncated_tar_fails_even_without_the_manifest(archives: dict, base_dir: Path, programs: Programs,
                                                       victim: str, cut: str) -> None:
    """No pgdr.json, so no sha256: tar itself must see the end missing, whether the cut
    falls exactly on a 1 MiB record boundary or inside a record."""
    length = {"one record": MIB, "two records": 2 * MIB, "inside a record": MIB + 1000}[cut]
    base, wal = archives["base"], archives["wal"]
    if victim == "base":  # cut the tar, then compress the cut tar: a complete zstd frame
        base = zstandard.ZstdCompressor(level=1).compress(archives["base_tar"][:length])
    else:
        wal = wal[:length]
    folder = base_dir / f"rs3-trunc-{victim}-{cut.replace(' ', '-')}"
    _write_backup(folder, base=base, wal=wal)
    target = base_dir / f"rs3-trunc-target-{victim}-{cut.replace(' ', '-')}"
    shutil.rmtree(target, ignore_errors=True)
    with pytest.raises(RepositoryError) as caught:
        extract_physical(folder, target, programs)
    name = "base.tar.zst" if victim == "base" else "pg_wal.tar"
    assert f"cannot extract {name}" in caught.value.message
    assert not target.exists()


def test_bytes_after_a_complete_frame_fail_the_extraction(archives: dict, base_dir: Path,
                                                          programs: Programs) -> None:
    folder = base_dir / "rs3-trailing"
    _write_backup(folder, base=archives["base"] + b"\x00" * 5 + b"not zstd", wal=archives["wal"])
    target = base_dir / "rs3-trailing-target"
    shutil.rmtree(target, ignore_errors=True)
    with pytest.raises(RepositoryError) as caught:
        extract_physical(folder, target, programs)
    assert "cannot extract base.tar.zst" in caught.value.message
    assert not target.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_disk_full_during_extraction_fails_in_one_line_and_leaves_nothing(
        archives: dict, base_dir: Path, programs: Programs) -> None:
    """The target's file system holds half of what the backup unpacks to."""
    folder = base_dir / "rs3-full"
    manifest = _write_backup(folder, base=archives["base"], wal=archives["wal"])
    small = base_dir / "rs3-small-disk"
    small.mkdir(exist_ok=True)
    total = len(archives["base_tar"]) + len(archives["wal"])
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={total // 2},mode=0755", "tmpfs", str(small)], check=True)
    try:
        with pytest.raises(RepositoryError) as caught:
            extract_physical(folder, small / "data", programs, manifest=manifest, tablespaces={})
        message = caught.value.message
        assert "cannot extract" in message and "No space left on device" in message, message
        assert "\n" not in message.strip(), message
        assert list(small.iterdir()) == [], "the extraction left files on the full disk"
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)
