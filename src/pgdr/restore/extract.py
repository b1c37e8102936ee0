"""Putting a physical backup's files into a NEW data directory, after proving them.

A backup folder holds base.tar.zst (server-zstd pg_basebackup -Ft), pg_wal.tar
(streamed WAL is never server-compressed), backup_manifest and pgdr.json. Every file is first checked against the sha256 in
pgdr.json, so a flipped byte is named before anything is extracted; then both tar
files are unpacked (in parallel) into the target, and the target handed to the
server user with mode 0700 as PostgreSQL requires.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import zstandard

from pgdr.backup.physical import sha256_file
from pgdr.errors import RepositoryError
from pgdr.pg.programs import Programs
from pgdr.repo.manifest import BackupManifest

ExtractMethod = Literal["tar", "python"]
# Measured by bench/bench_verify.py (pgbench scale 50, 2 cores): see DEFAULT_METHOD's
# commit; both are kept so the benchmark can keep comparing them.
DEFAULT_METHOD: ExtractMethod = "tar"


@dataclass
class FileProblem:
    file: str
    problem: str


def check_files(backup_dir: Path, manifest: BackupManifest) -> list[FileProblem]:
    """Every file pgdr.json lists must exist with its size and sha256 (hashed in parallel)."""

    def one(name: str) -> FileProblem | None:
        entry = manifest.files[name]
        path = backup_dir / name
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return FileProblem(name, "missing")
        if size != entry.size:
            return FileProblem(name, f"size {size} bytes, manifest says {entry.size}")
        digest = sha256_file(path)
        if digest != entry.sha256:
            return FileProblem(name, f"sha256 {digest[:12]}… does not match the manifest's "
                                     f"{entry.sha256[:12]}…")
        return None

    names = sorted(manifest.files)
    with ThreadPoolExecutor(max_workers=min(4, max(1, len(names)))) as pool:
        results = list(pool.map(one, names))
    return [r for r in results if r is not None]


_COMPRESSORS = {".zst": "zstd", ".gz": "gzip", ".lz4": "lz4", "": None}


def find_tar(backup_dir: Path, stem: str) -> Path:
    """base.tar / pg_wal.tar with whichever compression pg_basebackup used."""
    for suffix in _COMPRESSORS:
        candidate = backup_dir / f"{stem}.tar{suffix}"
        if candidate.exists():
            return candidate
    raise RepositoryError(f"backup {backup_dir.name} has no {stem}.tar[.zst|.gz|.lz4]",
                          hint="only pg_basebackup -Ft backups can be restored")


def _extract_python(archive: Path, dest: Path) -> None:
    with open(archive, "rb") as raw:
        if archive.suffix == ".zst":
            reader = zstandard.ZstdDecompressor().stream_reader(raw, read_size=1 << 20)
            with tarfile.open(fileobj=reader, mode="r|", bufsize=1 << 20) as tar:
                tar.extractall(dest, filter="tar")
        elif archive.suffix in (".gz", ".tar"):
            mode = "r|gz" if archive.suffix == ".gz" else "r|"
            with tarfile.open(fileobj=raw, mode=mode, bufsize=1 << 20) as tar:  # type: ignore[call-overload]
                tar.extractall(dest, filter="tar")
        else:
            raise RepositoryError(f"{archive.name}: use the tar method for {archive.suffix}")


def _extract_tar(archive: Path, dest: Path, programs: Programs) -> None:
    program = _COMPRESSORS.get(archive.suffix if archive.suffix != ".tar" else "")
    args = [f"--use-compress-program={program}"] if program else []
    programs.run("tar", [*args, "-xf", str(archive), "-C", str(dest)], timeout=3600)


def _chown_tree(root: Path, programs: Programs) -> None:
    if not programs.run_as.active:
        return
    uid, gid = programs.run_as.ids()
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            os.lchown(os.path.join(dirpath, name), uid, gid)
    os.chown(root, uid, gid)


def extract_physical(backup_dir: Path, target: Path, programs: Programs,
                     method: ExtractMethod = DEFAULT_METHOD) -> float:
    """Unpack base.tar* into target and pg_wal.tar* into target/pg_wal.

    target must not exist yet: a restore never writes over a data directory.
    Returns the seconds spent.
    """
    if target.exists():
        raise RepositoryError(f"refusing to restore into existing {target}",
                              hint="restores always go to a new, empty folder")
    t0 = time.monotonic()
    base, wal = find_tar(backup_dir, "base"), find_tar(backup_dir, "pg_wal")
    target.mkdir(mode=0o700)
    (target / "pg_wal").mkdir(mode=0o700, exist_ok=True)
    programs.run_as.chown(target)
    programs.run_as.chown(target / "pg_wal")
    jobs = [(base, target), (wal, target / "pg_wal")]
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            if method == "tar":
                futures = [pool.submit(_extract_tar, a, d, programs) for a, d in jobs]
            else:
                futures = [pool.submit(_extract_python, a, d) for a, d in jobs]
            for fut in futures:
                fut.result()
        if method == "python":
            _chown_tree(target, programs)
    except (OSError, tarfile.TarError, zstandard.ZstdError) as exc:
        shutil.rmtree(target, ignore_errors=True)
        raise RepositoryError(f"cannot extract backup {backup_dir.name}: {exc}") from None
    os.chmod(target, 0o700)
    return time.monotonic() - t0
