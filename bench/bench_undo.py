"""Benchmark the real `pgdr find-disaster` command beside pg_waldump run as a user would.

Build (once; `--keep DIR` keeps it for later runs, which then skip straight to measuring):
a fresh sandbox (no standby, archiver running), one physical backup, then pgbench
(-c 2, scale --scale, --pgbench-seconds) and batches of 2000-row UPDATEs until at least
--mb MB of WAL is archived after the backup, plus one mass DELETE to find; the sandbox's
servers are then stopped (find-disaster reads only the repository).

Measure, interleaved A B A B ... (--rounds pairs, the machine is shared), each in a new process:
- A: `pgdr find-disaster --json` over the whole archive (decompression and the native WAL
  reader, pgdr._walsum, per segment in parallel) - the command a user runs;
- B: what a user would run without pgdr to find the same thing: `pg_waldump` with the
  same record filter (-r Heap -r Transaction -r Storage) over the same segments, already
  decompressed (decompression is not timed: the baseline gets it free), output discarded.
MB/s each (median and range) and the ratio of medians; the target is >= 0.8. Then the
same for `--table pgbench_history` against pg_waldump -R on that table's file plus a run
for the commits (the same filtering find-disaster applies). With --pg-waldump-reader, the
same again with find-disaster reading through pg_waldump's text (PGDR_WAL_READER=pg_waldump,
the fallback when the native reader is not built), for comparison.

    .venv/bin/python bench/bench_undo.py [--mb 600] [--scale 10] [--rounds 3] [--keep DIR] [--pg-waldump-reader]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _common import wait_archived  # bench/ is on sys.path when a bench is run

from pgdr.backup.physical import take_physical_backup
from pgdr.config import load_config
from pgdr.pg.connect import session
from pgdr.pg.lsn import format_lsn
from pgdr.pg.programs import Programs
from pgdr.repo.layout import Repository
from pgdr.repo.wal import WalArchive
from pgdr.restore.walscan import relation_names
from pgdr.sandbox import sandbox as sb

RMGRS = ("Heap", "Transaction", "Storage")   # what find-disaster asks pg_waldump for


def build(base: Path, programs: Programs, args: argparse.Namespace) -> None:
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
    sb.down(sandbox.root, programs)
    (base / "built").write_text(f"{made / 2**20:.0f}\n")


def decompress(base: Path, repo: Repository) -> tuple[Path, list[str]]:
    """The archive's segments as a user would unpack them for pg_waldump."""
    folder = base / "waldump"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    archive = WalArchive(repo)
    names = [seg.name(repo.wal_segment_size) for seg in archive.segments()]
    for name in names:
        (folder / name).write_bytes(archive.read(name))
    return folder, names


def run_find_disaster(config: Path, *extra: str, reader: str | None = None) -> tuple[float, int, int]:
    """The real command in a new process: (seconds, bytes of WAL read, findings)."""
    pgdr = Path(sys.executable).parent / "pgdr"
    env = {**os.environ, "PGDR_CONFIG": str(config)}
    env.pop("PGDR_WAL_READER", None)
    if reader is not None:
        env["PGDR_WAL_READER"] = reader
    t0 = time.monotonic()
    proc = subprocess.run([str(pgdr), "find-disaster", "--json", *extra], capture_output=True, text=True,
                          env=env, timeout=3600, check=False)
    seconds = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"find-disaster failed ({proc.returncode}): {proc.stderr.strip()}")
    out = json.loads(proc.stdout)
    if out.get("reader") != (reader or "native"):
        raise SystemExit(f"find-disaster read with {out.get('reader')}, not {reader or 'native'}: {out.get('notes')}")
    return seconds, int(out["bytes_read"]), len(out["disasters"])


def run_waldump(programs: Programs, folder: Path, names: list[str], size: int,
                filters: list[list[str]]) -> tuple[float, int]:
    """pg_waldump as a user would run it to find the same records, one run per filter
    over all the segments, output discarded: (seconds, bytes)."""
    from pgdr.pg.lsn import parse_segment_name

    first, last = parse_segment_name(names[0], size), parse_segment_name(names[-1], size)
    assert first is not None and last is not None
    cmd = [str(programs.path("pg_waldump")), "-p", str(folder), "-t", str(first.timeline),
           "-s", format_lsn(first.start_lsn(size)), "-e", format_lsn(last.start_lsn(size) + size)]
    t0 = time.monotonic()
    for args in filters:
        with open(os.devnull, "wb") as sink:
            proc = subprocess.run([*cmd, *args], stdout=sink, stderr=subprocess.PIPE,
                                  env={**os.environ, "TZ": "UTC"}, timeout=3600, check=False)
        if proc.returncode not in (0, 1):
            raise SystemExit(f"pg_waldump failed ({proc.returncode}): {proc.stderr.decode().strip()}")
    return time.monotonic() - t0, len(names) * size


def measure(label: str, rounds: int, a: Callable[[], tuple[float, int, int]], b_label: str,
            b: Callable[[], tuple[float, int]]) -> None:
    fd_rates, wd_rates = [], []
    for i in range(rounds):
        fd_s, fd_bytes, found = a()
        wd_s, wd_bytes = b()
        fd_rates.append(fd_bytes / 2**20 / fd_s)
        wd_rates.append(wd_bytes / 2**20 / wd_s)
        print(f"  pair {i + 1}: {label} {fd_bytes / 2**20:.0f} MB in {fd_s:.2f}s = {fd_rates[-1]:.0f} MB/s "
              f"({found} findings); {b_label} {wd_bytes / 2**20:.0f} MB in {wd_s:.2f}s = {wd_rates[-1]:.0f} MB/s")
    ratio = statistics.median(fd_rates) / statistics.median(wd_rates)
    pairs = [f / w for f, w in zip(fd_rates, wd_rates, strict=True)]
    print(f"{label}: {_spread(fd_rates)}; {b_label}: {_spread(wd_rates)}; ratio of medians {ratio:.2f} "
          f"(pairs {min(pairs):.2f}-{max(pairs):.2f}; load now {os.getloadavg()[0]:.1f})")


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.0f} MB/s (range {min(values):.0f}-{max(values):.0f})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=600)
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--pgbench-seconds", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", help="build in this folder and keep it; later runs with it only measure")
    parser.add_argument("--pg-waldump-reader", action="store_true",
                        help="also measure find-disaster reading through pg_waldump (the fallback)")
    args = parser.parse_args()
    programs = Programs()
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="pgdr-bench-undo-", dir="/tmp"))
    base.mkdir(exist_ok=True)
    os.chmod(base, 0o755)
    try:
        if not (base / "built").exists():
            build(base, programs, args)
        sandbox = sb.load_sandbox(base / "sb")
        assert sandbox is not None
        repo = sandbox.repo
        folder, names = decompress(base, repo)
        print(f"{(base / 'built').read_text().strip()} MB of WAL made after the backup; "
              f"{len(names)} segments archived ({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f})")
        size = repo.wal_segment_size
        everything = [[arg for rmgr in RMGRS for arg in ("-r", rmgr)]]
        measure("pgdr find-disaster", args.rounds, lambda: run_find_disaster(sandbox.config_path),
                f"pg_waldump -r {' -r '.join(RMGRS)}",
                lambda: run_waldump(programs, folder, names, size, everything))
        # --table: pgdr reads that table's Heap records and the commits; so does the user,
        # with the table's file (pg_relation_filenode) and a second run for the commits
        rel = next(k for k, r in relation_names(repo).items() if r.name == "pgbench_history")
        table_filters = [["-r", "Heap", "-R", rel], ["-r", "Transaction", "-r", "Storage"]]
        measure("pgdr find-disaster --table pgbench_history", args.rounds,
                lambda: run_find_disaster(sandbox.config_path, "--table", "pgbench_history"),
                f"pg_waldump -r Heap -R {rel}, then -r Transaction -r Storage",
                lambda: run_waldump(programs, folder, names, size, table_filters))
        if args.pg_waldump_reader:
            measure("pgdr find-disaster (PGDR_WAL_READER=pg_waldump)", args.rounds,
                    lambda: run_find_disaster(sandbox.config_path, reader="pg_waldump"),
                    f"pg_waldump -r {' -r '.join(RMGRS)}",
                    lambda: run_waldump(programs, folder, names, size, everything))
        shutil.rmtree(folder, ignore_errors=True)
    finally:
        if not args.keep:
            if (base / "sb").exists():
                sb.down(base / "sb", programs, purge=True)
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
