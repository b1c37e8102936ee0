"""Benchmark find-disaster beside pg_waldump alone over the same archived WAL.

A fresh sandbox (no standby, archiver running), one physical backup, then pgbench
(-c 2, scale --scale, --pgbench-seconds) and batches of 2000-row UPDATEs until at least
--mb MB of WAL is archived after the backup, plus one mass DELETE to find. Then, in this one process:
- `find-disaster` over the whole archive (decompression, pg_waldump per segment in
  parallel, parsing): MB of WAL per second;
- pg_waldump alone: one process over the same segments, already decompressed, all
  record types, output discarded (the issue's baseline);
and their ratio (the target is >= 0.8).

    .venv/bin/python bench/bench_undo.py [--mb 512] [--scale 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
from pathlib import Path

from _common import wait_archived, waldump_alone  # bench/ is on sys.path when a bench is run

from pgdr.backup.physical import take_physical_backup
from pgdr.config import load_config
from pgdr.pg.connect import session
from pgdr.pg.programs import Programs
from pgdr.repo.layout import Repository
from pgdr.repo.wal import WalArchive
from pgdr.restore.walscan import find_disasters
from pgdr.sandbox import sandbox as sb


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=512)
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--pgbench-seconds", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", help="keep the sandbox in this (new) folder, to measure again")
    args = parser.parse_args()
    programs = Programs()
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="pgdr-bench-undo-", dir="/tmp"))
    base.mkdir(exist_ok=True)
    os.chmod(base, 0o755)
    sandbox = None
    try:
        sandbox = sb.up(base / "sb", programs, standbys=0)
        primary = sandbox.conninfo(sandbox.primary)
        pg = ["-h", str(sandbox.socket_dir), "-p", str(sandbox.primary.port), "-U", "postgres"]
        programs.run("pgbench", ["-i", "-q", "-s", str(args.scale), *pg, "app"], timeout=3600)
        config = load_config(sandbox.config_path)
        repo = Repository(config.repository.path)
        take_physical_backup(config, programs, repo)
        with session(primary) as conn:
            start = conn.execute("select pg_current_wal_lsn() as l").fetchone()
        assert start is not None
        # one pgbench run (many small transactions), then batches of 2000-row updates
        # (the record mix of a batch job) until the WAL is big enough
        programs.run("pgbench", ["-c", "2", "-j", "2", "-T", str(args.pgbench_seconds), "-n", *pg, "app"],
                     timeout=600, env={"PGOPTIONS": "-c synchronous_commit=local"})
        made, lo = 0.0, 0
        accounts = args.scale * 100000
        with session(primary) as conn:
            conn.execute("set synchronous_commit = local")
            while made < args.mb * 2**20:
                conn.execute("update pgbench_accounts set abalance = abalance + 1 where aid > %s and aid <= %s",
                             (lo, lo + 2000))
                lo = (lo + 2000) % accounts
                row = conn.execute("select pg_wal_lsn_diff(pg_current_wal_lsn(), %s) as d", (start["l"],)).fetchone()
                assert row is not None
                made = float(row["d"])
        with session(primary) as conn:
            conn.execute("delete from pgbench_history")
        wait_archived(sandbox, repo)
        print(f"{made / 2**20:.0f} MB of WAL after the backup, {len(WalArchive(repo).segments())} segments archived")

        fd_rates, wd_rates = [], []
        for _ in range(args.rounds):  # alternated, medians: the machine is shared
            scan = find_disasters(programs, repo)
            mb = scan.bytes_read / 2**20
            fd_rates.append(mb / scan.seconds)
            wd_s, wd_bytes = waldump_alone(base, repo, programs)
            wd_rates.append(wd_bytes / 2**20 / wd_s)
            print(f"  find-disaster {mb:.0f} MB in {scan.seconds:.1f}s = {fd_rates[-1]:.0f} MB/s "
                  f"({len(scan.disasters)} findings); pg_waldump alone {wd_bytes / 2**20:.0f} MB in {wd_s:.1f}s = "
                  f"{wd_rates[-1]:.0f} MB/s")
        fd, wd = statistics.median(fd_rates), statistics.median(wd_rates)
        print(f"median of {args.rounds}: find-disaster {fd:.0f} MB/s ({os.cpu_count()} cores), pg_waldump alone "
              f"(one process, decompressed, all records) {wd:.0f} MB/s; ratio {fd / wd:.2f}")
    finally:
        if sandbox is not None and not args.keep:
            sb.down(sandbox.root, programs, purge=True)
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
