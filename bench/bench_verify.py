"""Benchmark `pgdr verify` against a plain restore-and-start of the same backup.

pgbench -i -s SCALE into a fresh sandbox (no standby), one physical backup, then:
- extraction alone, tar+zstd vs Python tarfile+zstandard (the default was chosen from this);
- a plain restore: extract, recover to consistency, promote, first query;
- `verify` with each phase's time.
Plain restore and verify alternate --repeat times (default 3) and the medians are
compared, as a shared 2-core machine is noisy; the phases shown are those of the
median verify. Run as root or as the server user:

    .venv/bin/python bench/bench_verify.py [--scale 50] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from pgdr.backup.physical import take_physical_backup
from pgdr.config import load_config
from pgdr.pg.connect import session
from pgdr.pg.programs import Programs
from pgdr.repo.layout import Repository
from pgdr.restore.extract import extract_physical
from pgdr.restore.recovery import RecoveryTarget, restore_physical, wait_until_promoted
from pgdr.restore.scratch import Scratch, scratch_root
from pgdr.restore.verify import verify_backup
from pgdr.sandbox import sandbox as sb


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    programs = Programs()
    base = Path(tempfile.mkdtemp(prefix="pgdr-bench-", dir="/tmp"))
    os.chmod(base, 0o755)
    try:
        sandbox = sb.up(base / "sb", programs, standbys=0)
        t0 = time.monotonic()
        programs.run("pgbench", ["-i", "-q", "-s", str(args.scale), "-h", str(sandbox.socket_dir),
                                 "-p", str(sandbox.primary.port), "-U", "postgres", "app"], timeout=3600)
        print(f"pgbench -i -s {args.scale}: {time.monotonic() - t0:.1f}s")
        config = load_config(sandbox.config_path)
        repo = Repository(config.repository.path)
        backup = take_physical_backup(config, programs, repo)
        m = backup.manifest
        print(f"backup {m.id}: {m.bytes_logical / 2**20:.0f} MB data, {m.bytes_on_disk / 2**20:.0f} MB "
              f"on disk, {m.duration_s:.1f}s")

        extract: dict[str, list[float]] = {"tar": [], "python": []}
        for _ in range(2):
            for method in ("tar", "python"):
                target = base / f"extract-{method}"
                extract[method].append(extract_physical(backup.path, target, programs, method=method).seconds)  # type: ignore[arg-type]
                shutil.rmtree(target)
        for method, times in extract.items():
            print(f"extract {method:6}: " + ", ".join(f"{t:.2f}s" for t in times))

        plains: list[float] = []
        runs = []
        for i in range(max(1, args.repeat)):
            scratch = Scratch.create(scratch_root(config), "plain", programs)
            try:
                t0 = time.monotonic()
                restore_physical(backup.path, scratch.instance, programs, config_path=sandbox.config_path,
                                 target=RecoveryTarget("immediate"), extra_settings=scratch.settings())
                t_extract = time.monotonic() - t0
                scratch.instance.start(timeout=600)
                wait_until_promoted(scratch.instance)
                with session(scratch.instance.conninfo("app")) as conn:
                    conn.execute("select 1")
                plains.append(time.monotonic() - t0)
            finally:
                scratch.destroy()
            t0 = time.monotonic()
            result = verify_backup(config, programs, repo, m.id)
            runs.append((time.monotonic() - t0, result))
            print(f"run {i + 1}: plain restore+start+first query {plains[-1]:.2f}s (extract "
                  f"{t_extract:.2f}s), verify {runs[-1][0]:.2f}s passed={result.passed}")
        plain = statistics.median(plains)
        wall = statistics.median(w for w, _ in runs)
        result = sorted(runs, key=lambda r: r[0])[len(runs) // 2][1]
        print(f"median plain restore+start+first query: {plain:.2f}s")
        print(f"median verify: {wall:.2f}s = {wall / plain:.1f}x the plain restore")
        for phase, seconds in result.phases.items():
            print(f"  {phase:20} {seconds:7.2f}s  {seconds / plain:5.2f}x plain")
        for check in result.checks:
            print(f"  check {check.check.name:20} {check.duration_s:7.2f}s {check.check.status}")
    finally:
        try:
            sb.down(base / "sb", programs, purge=True)
        finally:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
