"""Putting a physical backup's files into a NEW data directory, proving them as they stream.

A backup folder holds base.tar.zst (server-zstd pg_basebackup -Ft), pg_wal.tar
(streamed WAL is never server-compressed), one <oid>.tar.zst per user tablespace,
backup_manifest and pgdr.json. Each tar is read ONCE: pgdr reads the file into one
buffer and feeds both the digest pgdr.json records (BLAKE3, or sha256 for older backups:
repo/digest.py) and the `zstd -dc | tar -x` pipeline from it, so what is extracted is
exactly what was hashed (server-side zstd has no frame checksum: only the digest catches
a flipped byte there). A mismatch removes everything extracted and names the file.

Tablespaces go under the target (<data>/pg_tblspc_data/<oid>) or where the user's
--tablespace-map says, never to the source's location: pg_tblspc links and
tablespace_map are rewritten to point there before anything can start.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import sys
import tarfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

import zstandard

from pgdr.errors import ProgramFailed, RepositoryError, UsageError
from pgdr.pg.programs import Programs
from pgdr.repo import digest
from pgdr.repo.manifest import BackupManifest

ExtractMethod = Literal["tar", "python"]
# Measured by bench/bench_verify.py (pgbench scale 50, 2 cores): see DEFAULT_METHOD's
# commit; both are kept so the benchmark can keep comparing them.
DEFAULT_METHOD: ExtractMethod = "tar"
TABLESPACE_DIR = "pg_tblspc_data"
CHUNK = 1 << 20
_TABLESPACE_TAR = re.compile(r"^(\d+)\.tar(\.(zst|gz|lz4))?$")


class BackupDamaged(RepositoryError):
    """A backup file or its metadata does not match what was recorded: never start from it."""


@dataclass
class FileProblem:
    file: str
    problem: str


def _mismatch(name: str, hexdigest: str, size: int, manifest: BackupManifest) -> FileProblem | None:
    """hexdigest: of the algorithm pgdr.json records for the file (BackupManifest.algorithm_of)."""
    entry = manifest.files.get(name)
    if entry is None:
        return FileProblem(name, "not listed in pgdr.json")
    if size != entry.size:
        return FileProblem(name, f"size {size} bytes, pgdr.json says {entry.size}")
    if hexdigest != entry.digest:
        return FileProblem(name, f"{entry.algorithm} {hexdigest[:12]}… does not match pgdr.json's "
                                 f"{entry.digest[:12]}…")
    return None


def check_files(backup_dir: Path, manifest: BackupManifest, names: list[str] | None = None) -> list[FileProblem]:
    """Files pgdr.json lists must exist with their size and digest (hashed in parallel)."""

    def one(name: str) -> FileProblem | None:
        path = backup_dir / name
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return FileProblem(name, "missing")
        if size != manifest.files[name].size:
            return _mismatch(name, "", size, manifest)
        return _mismatch(name, digest.file_digest(path, manifest.files[name].algorithm), size, manifest)

    todo = sorted(manifest.files) if names is None else names
    if not todo:
        return []
    with ThreadPoolExecutor(max_workers=min(4, len(todo))) as pool:
        results = list(pool.map(one, todo))
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


def tablespace_files(manifest: BackupManifest) -> dict[str, str]:
    """oid → its tar in the backup: every <oid>.tar* pg_basebackup wrote."""
    out = {oid: ts.file for oid, ts in manifest.tablespaces.items()}
    for name in manifest.files:
        match = _TABLESPACE_TAR.match(name)
        if match:
            out.setdefault(match.group(1), name)
    return out


# ---- where tablespaces go -------------------------------------------------------------

def _used_by_a_cluster(path: Path) -> str | None:
    if not path.exists():
        return None
    if not path.is_dir():
        return "it is not a directory"
    entries = list(path.iterdir())
    if any(e.name.startswith("PG_") for e in entries):
        return "it holds a PostgreSQL tablespace (PG_* directory)"
    if entries:
        return "it is not empty"
    return None


def plan_tablespaces(manifest: BackupManifest, data_dir: Path,
                     mapping: dict[str, Path] | None = None) -> dict[str, Path]:
    """Where each tablespace of the backup will be extracted; refused (exit 2, one line)
    when a place is used by another cluster, is the source's own location, or the map
    names an OID the backup does not have."""
    mapping = {k: Path(v).resolve() for k, v in (mapping or {}).items()}
    oids = tablespace_files(manifest)
    unknown = sorted(set(mapping) - set(oids))
    if unknown:
        raise UsageError(f"--tablespace-map names OID {unknown[0]}, which backup {manifest.id} does not have"
                         + (f" (it has {', '.join(sorted(oids))})" if oids else " (it has no tablespace)"))
    out: dict[str, Path] = {}
    for oid in sorted(oids):
        dest = mapping.get(oid, data_dir.resolve() / TABLESPACE_DIR / oid)
        if "\n" in str(dest) or " " in str(dest):
            raise UsageError(f"tablespace {oid}: path {dest} contains a space or newline")
        source = manifest.tablespaces.get(oid)
        if source is not None:
            live = Path(source.location).resolve()
            if dest == live or live in dest.parents or dest in live.parents:
                raise UsageError(f"refusing to restore tablespace {source.name} (oid {oid}) into {dest}: "
                                 f"that is the source cluster's tablespace location {live}")
        inside = data_dir.resolve()
        if (dest == inside or inside in dest.parents) and (inside / TABLESPACE_DIR) not in dest.parents:
            raise UsageError(f"refusing to restore tablespace {oid} into {dest}: inside the data directory "
                             f"(only {inside / TABLESPACE_DIR} is allowed there)")
        problem = _used_by_a_cluster(dest)
        if problem:
            raise UsageError(f"refusing to restore tablespace {oid} into {dest}: {problem}")
        if dest in out.values():
            raise UsageError(f"two tablespaces would be restored into {dest}")
        out[oid] = dest
    return out


def link_tablespaces(data_dir: Path, places: dict[str, Path], programs: Programs) -> None:
    """pg_tblspc/<oid> → place, and tablespace_map saying the same (PostgreSQL recreates the
    links from tablespace_map at startup, so both must name the restored places)."""
    tblspc = data_dir / "pg_tblspc"
    tblspc.mkdir(mode=0o700, exist_ok=True)
    for oid, place in places.items():
        link = tblspc / oid
        if link.is_symlink() or link.exists():
            if link.is_dir() and not link.is_symlink():
                shutil.rmtree(link)
            else:
                link.unlink()
        link.symlink_to(place)
        if programs.run_as.active:
            uid, gid = programs.run_as.ids()
            os.lchown(link, uid, gid)
    tsmap = data_dir / "tablespace_map"
    if places or tsmap.exists():
        tsmap.write_text("".join(f"{oid} {place}\n" for oid, place in sorted(places.items())))
        os.chmod(tsmap, 0o600)
        programs.run_as.chown(tsmap)


def check_links_inside(data_dir: Path, places: dict[str, Path]) -> None:
    """Last guard before a server starts: every tablespace link and tablespace_map line
    names a place this restore created, never the source's files."""
    allowed = {p.resolve() for p in places.values()}
    tblspc = data_dir / "pg_tblspc"
    for link in (tblspc.iterdir() if tblspc.is_dir() else []):
        if link.resolve() not in allowed:
            raise BackupDamaged(f"refusing to start: {link} points to {link.resolve()}, outside the restore")
    tsmap = data_dir / "tablespace_map"
    if tsmap.exists():
        for line in tsmap.read_text().splitlines():
            if line.strip() and Path(line.split(" ", 1)[1]).resolve() not in allowed:
                raise BackupDamaged(f"refusing to start: tablespace_map names {line.split(' ', 1)[1]}, "
                                    "outside the restore")


# ---- streaming extraction ---------------------------------------------------------------

@dataclass
class _Streamed:
    name: str
    digest: str
    size: int
    error: str | None = None


class _HashingReader:
    """A file whose bytes are hashed as they are read (for the pure-Python method)."""

    def __init__(self, fh: IO[bytes], algorithm: str | None) -> None:
        self.fh = fh
        self.running = digest.hasher(algorithm) if algorithm is not None else None
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        block = self.fh.read(n)
        if self.running is not None:
            self.running.update(block)
        self.size += len(block)
        return block

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


WRITEBACK_EVERY = 0.1  # seconds
PIPE_BYTES = 1 << 20  # the pipe into the decompressor: 1 MiB (Linux's default cap), not 64 KiB
# tar's record: 1 MiB (2048 blocks of 512 bytes), not GNU tar's 10 KiB. Extraction time is
# the kernel's (creating and writing files), not zstd's: `zstd -dc > /dev/null` takes 0.3 s
# of a 1.4 s extraction of pgbench scale 30; with 10 KiB records tar makes ~50,000 read and
# ~50,000 write calls for 470 MB. 1 MiB records cut the extraction's median by ~15% (8
# interleaved rounds, same process: 1.19 s vs 1.40 s). Reading a pipe, GNU tar reblocks
# short reads itself (--read-full-records is its default on stdin).
TAR_RECORD_BLOCKS = 2048


def _tar_args(dest: Path) -> list[str]:
    return ["-b", str(TAR_RECORD_BLOCKS), "-xf", "-", "-C", str(dest)]


def _pipe() -> tuple[int, int]:
    """A pipe of PIPE_BYTES (read end, write end). The decompressor's output crosses it:
    with the kernel's default 64 KiB, zstd and tar wake each other every 64 KiB, and the
    extraction of an 800 MB tar took 1.12 s against 0.85 s through 1 MiB (6 interleaved
    rounds, the same files). A shell's `|` cannot be widened, hence pgdr makes the pipe."""
    read_end, write_end = os.pipe()
    try:
        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except OSError:  # above /proc/sys/fs/pipe-max-size for this user: keep the default
        pass
    return read_end, write_end


def _stream_tar(archive: Path, dest: Path, programs: Programs, algorithm: str | None) -> _Streamed:
    """`DECOMPRESSOR -dc | tar -x`, the pipeline a user types, as two programs joined by
    one wide pipe (_pipe), fed by a loop that hashes the same buffer it writes (one read
    of the file: what is extracted is exactly what was hashed). Each program's exit
    status counts, as under pipefail: a decompressor that fails after tar has read a
    whole archive (damage after the last frame) still fails the extraction. When the
    pipeline dies early (damaged data), the rest of the file is still hashed so the
    damage is named. algorithm: the digest to compute (None: none)."""
    decompressor = _COMPRESSORS.get(archive.suffix if archive.suffix != ".tar" else "")
    running = digest.hasher(algorithm) if algorithm is not None else None
    size = 0

    def feed(stdin: IO[bytes]) -> None:
        nonlocal size
        alive = True
        fd = stdin.fileno()
        try:
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        except OSError:  # above /proc/sys/fs/pipe-max-size for this user: keep the default
            pass
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        with open(archive, "rb", buffering=0) as fh:
            while n := fh.readinto(buf):
                block = view[:n]
                if running is not None:
                    running.update(block)
                size += n
                written = 0
                while alive and written < n:
                    try:
                        written += os.write(fd, block[written:])
                    except BrokenPipeError:
                        alive = False

    def failure(program: str, args: list[str], *, with_feed: bool = False,
                stdin_fd: int | None = None, stdout_fd: int | None = None) -> str | None:
        try:
            programs.run(program, args, timeout=3600, feed=feed if with_feed else None,
                         stdin_fd=stdin_fd, stdout_fd=stdout_fd)
        except ProgramFailed as exc:
            return exc.message
        return None

    if decompressor is None:
        error = failure("tar", _tar_args(dest), with_feed=True)
    else:
        read_end, write_end = _pipe()
        try:
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pgdr-untar") as pool:
                untar = pool.submit(failure, "tar", _tar_args(dest), stdin_fd=read_end)
                read_end = -1  # tar's now (its run closes it)
                decompressed = failure(decompressor, ["-q", "-dc"], with_feed=True, stdout_fd=write_end)
                write_end = -1
                untarred = untar.result()
        finally:
            for fd in (read_end, write_end):
                if fd >= 0:
                    os.close(fd)
        # tar's complaint first (a full disk ends zstd with a broken pipe), else zstd's
        error = untarred or decompressed
    return _Streamed(archive.name, running.hexdigest() if running is not None else "", size, error)


class _Writeback:
    """Write the extracted files back to disk while the extraction runs, not after it.

    The server pgdr starts on a restored directory first makes every file durable
    (recovery_init_sync_method = syncfs): with gigabytes still dirty in the page cache
    that call waits for all of them (0.3 s per 500 MB here, while nothing else runs).
    A syncfs every WRITEBACK_EVERY seconds during the extraction lets the disk work
    beside the decompression instead, and the server's own sync finds little left. It
    changes no promise: the server's sync still runs and still decides durability.
    Linux only (syncfs(2)); elsewhere it does nothing."""

    def __init__(self, places: list[Path]) -> None:
        by_device: dict[int, Path] = {}
        for place in places:  # one syncfs per file system
            try:
                by_device.setdefault(place.stat().st_dev, place)
            except OSError:
                continue
        self.places = list(by_device.values())
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def __enter__(self) -> _Writeback:
        if sys.platform == "linux" and self.places:
            self.thread = threading.Thread(target=self._run, name="pgdr-writeback", daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        # not joined: a syncfs under another program's writes can take long, and the
        # server's own sync (or nothing, on a failure) comes next anyway
        self.stop.set()

    def _run(self) -> None:
        import ctypes

        try:
            syncfs = ctypes.CDLL(None, use_errno=True).syncfs
        except (OSError, AttributeError):
            return
        while not self.stop.wait(WRITEBACK_EVERY):
            for place in self.places:
                try:
                    fd = os.open(place, os.O_RDONLY)
                except OSError:
                    continue
                try:
                    syncfs(fd)
                finally:
                    os.close(fd)


def _stream_python(archive: Path, dest: Path, programs: Programs, algorithm: str | None) -> _Streamed:
    del programs
    with open(archive, "rb") as raw:
        reader = _HashingReader(raw, algorithm)
        error = None
        try:
            if archive.suffix == ".zst":
                zreader = zstandard.ZstdDecompressor().stream_reader(reader, read_size=CHUNK)  # type: ignore[arg-type]
                with tarfile.open(fileobj=zreader, mode="r|", bufsize=CHUNK) as tar:
                    tar.extractall(dest, filter="tar")
            elif archive.suffix in (".gz", ".tar"):
                mode = "r|gz" if archive.suffix == ".gz" else "r|"
                with tarfile.open(fileobj=reader, mode=mode, bufsize=CHUNK) as tar:  # type: ignore[call-overload]
                    tar.extractall(dest, filter="tar")
            else:
                raise RepositoryError(f"{archive.name}: use the tar method for {archive.suffix}")
        except (OSError, tarfile.TarError, zstandard.ZstdError, EOFError) as exc:
            error = str(exc) or type(exc).__name__
        reader.drain()
    return _Streamed(archive.name, reader.running.hexdigest() if reader.running is not None else "",
                     reader.size, error)


def _chown_tree(root: Path, programs: Programs) -> None:
    if not programs.run_as.active:
        return
    uid, gid = programs.run_as.ids()
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            os.lchown(os.path.join(dirpath, name), uid, gid)
    os.chown(root, uid, gid)


@dataclass
class Extracted:
    seconds: float
    tablespaces: dict[str, Path] = field(default_factory=dict)
    files_checked: int = 0


def _mkdir_for_server(path: Path, programs: Programs) -> None:
    path.mkdir(mode=0o700, parents=False)
    programs.run_as.chown(path)


def extract_physical(backup_dir: Path, target: Path, programs: Programs,
                     method: ExtractMethod = DEFAULT_METHOD, *, manifest: BackupManifest | None = None,
                     tablespaces: dict[str, Path] | None = None, checks: bool = True,
                     combine: bool = True, writeback: bool = True) -> Extracted:
    """Unpack base.tar* into target, pg_wal.tar* into target/pg_wal and each tablespace's
    tar into its place, hashing every byte read; link the tablespaces to their places.

    target must not exist yet: a restore never writes over a data directory. With a
    manifest and checks on, every file is compared with pgdr.json and a mismatch raises
    BackupDamaged (after removing what was extracted). checks=False is the benchmark's
    "restore as it was before the checks" and nothing else. An incremental backup's whole
    chain is unpacked and combined (restore/combine.py; combine=False is its own call).
    writeback=False leaves the files to the page cache (see _Writeback): for a copy that
    is thrown away minutes later (verify's, with fsync off), writing 1.5 GB to disk only
    competed with the checks for the disk and the CPU, and made the removal slower.
    """
    if combine and manifest is not None and manifest.parent is not None:
        from pgdr.restore.combine import extract_combined

        return extract_combined(backup_dir, target, programs, method, manifest=manifest, checks=checks)
    if target.exists():
        raise RepositoryError(f"refusing to restore into existing {target}",
                              hint="restores always go to a new, empty folder")
    if manifest is None:
        checks = False
    places = dict(tablespaces) if tablespaces is not None else (
        plan_tablespaces(manifest, target) if manifest is not None else {})
    t0 = time.monotonic()
    base, wal = find_tar(backup_dir, "base"), find_tar(backup_dir, "pg_wal")
    if manifest is not None:
        missing = sorted(n for n in manifest.files if not (backup_dir / n).is_file())
        if missing:
            raise BackupDamaged(f"backup {backup_dir.name}: {missing[0]}: missing"
                                + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""),
                                hint="the backup is damaged; restore another one with --backup")
    created: list[Path] = []
    try:
        _mkdir_for_server(target, programs)
        created.append(target)
        _mkdir_for_server(target / "pg_wal", programs)
        jobs = [(base, target), (wal, target / "pg_wal")]
        oid_files = tablespace_files(manifest) if manifest is not None else {}
        for oid, place in sorted(places.items()):
            if place.parent == target / TABLESPACE_DIR and not place.parent.exists():
                _mkdir_for_server(place.parent, programs)
            place.parent.mkdir(parents=True, exist_ok=True)
            if not place.exists():
                _mkdir_for_server(place, programs)
                created.append(place)
            else:  # an empty folder the user named: the server must own it, mode 0700
                programs.run_as.chown(place)
                os.chmod(place, 0o700)
            jobs.append((backup_dir / oid_files[oid], place))
        one: Callable[[Path, Path, Programs, str | None], _Streamed] = (
            _stream_tar if method == "tar" else _stream_python)
        with _Writeback([dest for _archive, dest in jobs] if writeback else []), \
                ThreadPoolExecutor(max_workers=min(3, len(jobs))) as pool:
            streamed = list(pool.map(lambda job: one(job[0], job[1], programs,
                                                     manifest.algorithm_of(job[0].name) if manifest and checks
                                                     else None), jobs))
        if method == "python":
            for _archive, dest in jobs:
                _chown_tree(dest, programs)
        problems: list[FileProblem] = []
        if checks:
            assert manifest is not None
            for s in streamed:
                problem = _mismatch(s.name, s.digest, s.size, manifest)
                if problem:
                    problems.append(problem)
            extracted_names = {s.name for s in streamed}
            problems += check_files(backup_dir, manifest,
                                    [n for n in sorted(manifest.files) if n not in extracted_names])
        if problems:
            first = problems[0]
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            raise BackupDamaged(f"backup {backup_dir.name}: {first.file}: {first.problem}{more}",
                                hint="the backup is damaged; restore another one with --backup")
        failed = next((s for s in streamed if s.error), None)
        if failed is not None:
            raise RepositoryError(f"cannot extract {failed.name} of backup {backup_dir.name}: {failed.error}")
        link_tablespaces(target, places, programs)
    except BaseException:
        for path in reversed(created):
            shutil.rmtree(path, ignore_errors=True)
        raise
    os.chmod(target, 0o700)
    return Extracted(time.monotonic() - t0, places,
                     len(manifest.files) if (checks and manifest is not None) else 0)
