"""Benchmark: where a physical restore's extraction spends its time, and the knobs of
restore/extract.py against their alternatives, in one process, interleaved.

pgbench -i -s SCALE into a fresh sandbox, one pgdr backup, then ROUNDS interleaved rounds of:
- `zstd -dc > /dev/null`             the decompression alone (one core);
- `zstd -dc > one file`              decompression + the same bytes written as one file;
- `zstd -dc | tar -x` (10 KiB)       what a user types (GNU tar's default record);
- pgdr, 10 KiB records               extract._stream_tar with GNU tar's default record;
- pgdr (as shipped)                  1 MiB records (TAR_RECORD_BLOCKS), writeback every 0.1 s;
- pgdr, no writeback                 without the syncfs thread (extract._Writeback);
- pgdr, 64 KiB zstd->tar pipe        the pipe between zstd and tar a shell's `|` makes
                                     (extract._pipe widens it to 1 MiB).
Each pgdr variant hashes every byte (the restore-trust check) and is followed by a
syncfs of the target (what the server's recovery_init_sync_method = syncfs then pays):
the time printed includes it. Ratios are against the shipped variant's median.

    .venv/bin/python bench/bench_extract.py [--scale 30] [--rounds 6]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pgdr.backup.physical import take_physical_backup
from pgdr.config import load_config
from pgdr.pg.programs import Programs
from pgdr.repo import digest
from pgdr.repo.layout import Repository
from pgdr.restore import extract

sys.path.insert(0, str(Path(__file__).parent))
from _common import pgbench_sandbox  # noqa: E402

_syncfs = ctypes.CDLL(None, use_errno=True).syncfs


class _NoWriteback:
    def __init__(self, places: list[Path]) -> None:
        del places

    def __enter__(self) -> _NoWriteback:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _fresh(base: Path, name: str, programs: Programs) -> Path:
    target = base / name
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(mode=0o700)
    programs.run_as.chown(target)
    (target / "pg_wal").mkdir(mode=0o700)
    programs.run_as.chown(target / "pg_wal")
    return target


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        _syncfs(fd)
    finally:
        os.close(fd)


def _narrow_pipe() -> tuple[int, int]:
    return os.pipe()  # the kernel's default 64 KiB, what a shell's `|` gives


def pgdr_variant(backup: Path, base: Path, programs: Programs, *, record: int,
                 writeback: bool, wide_pipe: bool = True) -> Callable[[], float]:
    def run() -> float:
        target = _fresh(base, "x", programs)
        _sync(target)
        saved, saved_pipe = extract.TAR_RECORD_BLOCKS, extract._pipe
        extract.TAR_RECORD_BLOCKS = record
        if not wide_pipe:
            extract._pipe = _narrow_pipe
        t0 = time.monotonic()
        try:
            jobs = [(backup / "base.tar.zst", target), (backup / "pg_wal.tar", target / "pg_wal")]
            flusher = extract._Writeback if writeback else _NoWriteback
            with flusher([target]), ThreadPoolExecutor(max_workers=2) as pool:
                out = list(pool.map(lambda j: extract._stream_tar(j[0], j[1], programs, digest.WRITTEN), jobs))
            _sync(target)
            seconds = time.monotonic() - t0
        finally:
            extract.TAR_RECORD_BLOCKS, extract._pipe = saved, saved_pipe
        assert not any(o.error for o in out), [o.error for o in out]
        shutil.rmtree(target)
        return seconds
    return run


def shell_variant(command: str, base: Path, programs: Programs) -> Callable[[], float]:
    def run() -> float:
        target = _fresh(base, "x", programs)
        _sync(target)
        t0 = time.monotonic()
        subprocess.run(["bash", "-o", "pipefail", "-c", command.format(x=target)], check=True)
        _sync(target)
        seconds = time.monotonic() - t0
        shutil.rmtree(target)
        return seconds
    return run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    programs = Programs()
    with pgbench_sandbox("pgdr-bench-extract-", args.scale, programs) as (base, sandbox, pg):
        config = load_config(sandbox.config_path)
        backup = take_physical_backup(config, programs, Repository(config.repository.path))
        m, path = backup.manifest, backup.path
        print(f"backup {m.id}: {m.bytes_logical / 2**20:.0f} MB data, {m.bytes_on_disk / 2**20:.0f} MB on disk")
        zst = path / "base.tar.zst"
        variants: dict[str, Callable[[], float]] = {
            "zstd -dc > /dev/null": shell_variant(f"zstd -q -dc {zst} > /dev/null", base, programs),
            "zstd -dc > one file": shell_variant(f"zstd -q -dc {zst} > {{x}}/all.tar", base, programs),
            "zstd -dc | tar -x (10 KiB)": shell_variant(
                f"zstd -q -dc {zst} | tar -xf - -C {{x}} && tar -xf {path}/pg_wal.tar -C {{x}}/pg_wal", base, programs),
            "pgdr, 10 KiB records": pgdr_variant(path, base, programs, record=20, writeback=True),
            "pgdr (as shipped)": pgdr_variant(path, base, programs, record=extract.TAR_RECORD_BLOCKS,
                                              writeback=True),
            "pgdr, no writeback": pgdr_variant(path, base, programs, record=extract.TAR_RECORD_BLOCKS,
                                               writeback=False),
            "pgdr, 64 KiB zstd->tar pipe": pgdr_variant(path, base, programs, record=extract.TAR_RECORD_BLOCKS,
                                                        writeback=True, wide_pipe=False),
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        print(f"load average before: {os.getloadavg()[0]:.1f}")
        for rnd in range(args.rounds):
            for name, run in variants.items():
                times[name].append(run())
            print(f"round {rnd + 1}: " + ", ".join(f"{n} {t[-1]:.2f}s" for n, t in times.items()), flush=True)
        print(f"load average after: {os.getloadavg()[0]:.1f}")
        shipped = statistics.median(times["pgdr (as shipped)"])
        for name, series in times.items():
            med = statistics.median(series)
            print(f"{name:28s} median {med:.2f}s ({min(series):.2f}-{max(series):.2f})  "
                  f"ratio to shipped {med / shipped:.2f}")


if __name__ == "__main__":
    main()
