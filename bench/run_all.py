"""Run every peer benchmark and write bench/RESULTS.md, the table the README quotes.

Each benchmark runs in its own process (they set up their own sandboxes):
- bench/peers.py on pgbench data and on random text (backup, restore → first query,
  verify, PITR; interleaved against pg_basebackup, pgBackRest with its archive, and
  `zstd | tar` + start);
- bench/bench_startup.py (`pgdr --help`/`--version` wall time; kill -9 → first write
  with `pgdr failover --yes` against `pg_ctl promote`).

    .venv/bin/python bench/run_all.py            # scale 100 (~1.5 GB), 3 rounds, 60 s of WAL
    .venv/bin/python bench/run_all.py --quick    # scale 5, 3 rounds, 10 s of WAL: minutes

The machine's load average is recorded beside every row: compare within a row.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
PY = sys.executable


def run(argv: list[str]) -> str:
    print("$ " + " ".join(argv), file=sys.stderr, flush=True)
    proc = subprocess.run(argv, stdout=subprocess.PIPE, text=True, cwd=HERE.parent, check=False)
    if proc.returncode != 0:
        return f"(failed with exit {proc.returncode}; see the output above)\n"
    return proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small data: runs in minutes")
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    args = ap.parse_args()
    scale, wal_seconds, runs = (5, 10, 9) if args.quick else (100, 60, 9)
    started = time.monotonic()
    load_before = os.getloadavg()
    sections = []
    for data in ("pgbench", "random"):
        out = run([PY, str(HERE / "peers.py"), "--data", data, "--scale", str(scale), "--rounds", "3",
                   "--wal-seconds", str(wal_seconds)])
        sections.append(f"### {data} data (scale {scale})\n\nReproduce: `.venv/bin/python bench/peers.py "
                        f"--data {data} --scale {scale} --rounds 3 --wal-seconds {wal_seconds}`\n\n{out}")
    startup = run([PY, str(HERE / "bench_startup.py"), "--runs", str(runs)])
    sections.append("### start-up and failover\n\nReproduce: `.venv/bin/python bench/bench_startup.py "
                    f"--runs {runs}`\n\n```\n{startup}```\n")
    header = (f"# pgdr benchmarks against their peers\n\nWritten by `bench/run_all.py"
              f"{' --quick' if args.quick else ''}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
              f"{platform.node()}, {os.cpu_count()} CPUs; load average {load_before[0]:.1f} at the start, "
              f"{os.getloadavg()[0]:.1f} at the end; {time.monotonic() - started:.0f} s in all. Every time is a "
              "new process running the real command; methods interleaved, 3 rounds, median (range); "
              "ratio = pgdr median / baseline median.\n\n")
    args.out.write_text(header + "\n".join(sections))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
