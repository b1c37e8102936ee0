"""Benchmark: `pgdr backup` vs pg_basebackup and pgBackRest, and WAL archive lag under pgbench.

Run: .venv/bin/python bench/bench_backup.py [--data pgbench|random] [--scale 50] [--rounds 3] [--load-seconds 20]

The backups are the real commands in new processes, interleaved (bench/peers.py,
"backup" part): the whole `pgdr backup` (interpreter start-up included) against
`pg_basebackup -Ft -X stream --compress=server-zstd:1` and a pgBackRest full backup set
up as its user guide does. Archive lag is sampled from pg_stat_replication (the archiver's flush position)
every 100 ms while pgbench writes, and expressed in bytes and in seconds of writes
(lag bytes / WAL rate).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from peers import HEADER, run  # noqa: E402  (bench/ is on sys.path when a bench is run)

from pgdr.pg.connect import session  # noqa: E402
from pgdr.pg.lsn import parse_lsn  # noqa: E402
from pgdr.pg.programs import Programs  # noqa: E402
from pgdr.sandbox import sandbox as sb  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--load-seconds", type=int, default=20)
    ap.add_argument("--data", choices=("pgbench", "random"), default="pgbench")
    args = ap.parse_args()
    print(HEADER)
    for row in run(args.data, args.scale, max(3, args.rounds), 0, ("backup",)):
        print(row.markdown())

    base = Path(tempfile.mkdtemp(prefix="pgdr-bench-", dir="/tmp"))
    os.chmod(base, 0o755)
    programs = Programs()
    sandbox = sb.up(base / "sb", programs, standbys=0)
    try:
        app = sandbox.conninfo(sandbox.primary)
        t0 = time.monotonic()
        programs.run("pgbench", ["-i", "-q", "-s", str(args.scale), "-d", app], timeout=1800)
        print(f"pgbench -i -s {args.scale}: {time.monotonic() - t0:.1f}s")
        with session(app) as conn:
            conn.execute("checkpoint")
            size = conn.execute("select pg_database_size('app') as s").fetchone()["s"]  # type: ignore[index]
        print(f"database size: {size / 1048576:.0f} MB")

        # archive lag under load
        bench = programs.spawn("pgbench", ["-c", "4", "-j", "2", "-T", str(args.load_seconds), "-n", app],
                               log_path=base / "pgbench.log")
        samples: list[tuple[int, float | None]] = []
        wal_start = wal_end = 0
        t_start = time.monotonic()
        with session(sandbox.conninfo(sandbox.primary, "postgres")) as conn:
            wal_start = parse_lsn(conn.execute("select pg_current_wal_lsn()::text as l").fetchone()["l"])  # type: ignore[index]
            while bench.poll() is None:
                row = conn.execute(
                    "select pg_wal_lsn_diff(pg_current_wal_lsn(), flush_lsn)::bigint as b, "
                    "extract(epoch from flush_lag)::float8 as s from pg_stat_replication "
                    "where application_name like 'pgdr_archiver%'").fetchone()
                if row:
                    samples.append((int(row["b"]), row["s"]))
                time.sleep(0.1)
            wal_end = parse_lsn(conn.execute("select pg_current_wal_lsn()::text as l").fetchone()["l"])  # type: ignore[index]
        elapsed = time.monotonic() - t_start
        rate = (wal_end - wal_start) / elapsed
        lag_bytes = sorted(b for b, _ in samples)
        lag_secs = sorted(s for _, s in samples if s is not None)
        q = lambda xs, f: xs[min(len(xs) - 1, int(f * len(xs)))] if xs else float("nan")  # noqa: E731
        print(f"pgbench WAL rate: {rate / 1048576:.1f} MB/s over {elapsed:.0f}s, {len(samples)} samples")
        print(f"archive lag bytes: p50 {q(lag_bytes, .5)}  p99 {q(lag_bytes, .99)}  max {lag_bytes[-1] if lag_bytes else 'n/a'}")
        print(f"archive lag as seconds of writes: p50 {q(lag_bytes, .5) / rate:.3f}  max {(lag_bytes[-1] if lag_bytes else 0) / rate:.3f}  (target <= 1 s)")
        print(f"archive flush_lag reported by the primary: p50 {q(lag_secs, .5):.3f}s  max {lag_secs[-1] if lag_secs else float('nan'):.3f}s")
    finally:
        sb.down(sandbox.root, programs, purge=True)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
