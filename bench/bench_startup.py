"""Benchmark: how much pgdr's own start-up costs.

Run: .venv/bin/python bench/bench_startup.py [--runs 10] [--no-failover]

0. Wall time of `pgdr --help` and `pgdr --version` (the console script, a new process
   each run), median and range of --runs.
1. CPU time (user + system, from the kernel's rusage of the child) of `pgdr --help`
   beside `pg_ctl --help` (and `pgbackrest help` when installed), medians of --runs.
2. The Python share of a guided failover: CPU of importing everything `pgdr failover`
   needs (`python -c "import pgdr.cli.main, pgdr.failover.failover"`).
3. Unless --no-failover: kill -9 of the primary → first write on the standby, on a fresh
   sandbox each time, `pgdr failover --yes` (started at once) interleaved with plain
   `pg_ctl promote`; a probe runs `select txid_current()` on the standby every ~10 ms;
   max(3, --runs // 3) pairs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

PGDR = [sys.executable, "-m", "pgdr"]


def wall_of(argv: list[str]) -> float:
    """Wall seconds of one run of argv in a new process, start to exit."""
    t0 = time.monotonic()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.monotonic() - t0


def median_wall(argv: list[str], runs: int) -> tuple[float, float, float]:
    """(median, min, max) wall seconds over runs, after one warm-up run."""
    wall_of(argv)
    times = [wall_of(argv) for _ in range(runs)]
    return statistics.median(times), min(times), max(times)


def cpu_of(argv: list[str], env: dict[str, str] | None = None) -> float:
    """User + system CPU seconds of one run of argv (and its children), from wait4's rusage."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    _pid, _status, usage = os.wait4(proc.pid, 0)
    proc.returncode = 0
    return usage.ru_utime + usage.ru_stime


def median_cpu(argv: list[str], runs: int) -> float:
    cpu_of(argv)  # warm the page cache
    return statistics.median(cpu_of(argv) for _ in range(runs))


def _first_write(conninfo: str, t0: float, timeout: float = 120) -> float | None:
    """Seconds from t0 until a new connection to conninfo commits a transaction id."""
    import psycopg

    while time.monotonic() - t0 < timeout:
        try:
            with psycopg.connect(conninfo, autocommit=True, connect_timeout=2) as conn:
                conn.execute("select txid_current()")
            return time.monotonic() - t0
        except psycopg.Error:
            time.sleep(0.01)
    return None


def failover_first_write(runs: int) -> dict[str, list[float]]:
    """kill -9 of the primary → first write on the standby, interleaved: `pgdr failover
    --yes` (the console script, started right after the kill) and plain `pg_ctl promote`
    (no fencing, no checks: the floor). A fresh sandbox for every run."""
    from pgdr.pg.programs import Programs
    from pgdr.sandbox import sandbox as sb

    programs = Programs()
    times: dict[str, list[float]] = {"pgdr failover --yes": [], "pg_ctl promote": []}
    base = Path(tempfile.mkdtemp(prefix="pgdr-bench-startup-", dir="/tmp"))
    os.chmod(base, 0o755)
    pgdr_bin = str(Path(sys.executable).parent / "pgdr")
    try:
        for i in range(runs):
            for how in times:
                sandbox = sb.up(base / f"run{i}-{how.split()[0]}", programs, standbys=1)
                node = next(n for n in sandbox.nodes if n.role == "standby")
                standby = sandbox.conninfo(node, "postgres")
                env = {**os.environ, "PGDR_CONFIG": str(sandbox.config_path)}
                sandbox.instance(sandbox.primary, programs).kill9()
                t0 = time.monotonic()
                if how.startswith("pgdr"):
                    proc = subprocess.Popen([pgdr_bin, "failover", "--yes"], env=env,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                else:
                    proc = subprocess.Popen([str(programs.path("pg_ctl")), "promote", "-D", str(node.data_dir)],
                                            user=programs.run_as.user if programs.run_as.active else None,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                first = _first_write(standby, t0)
                proc.wait(120)
                if first is not None:
                    times[how].append(first)
                sb.down(sandbox.root, programs, purge=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--no-failover", action="store_true")
    args = parser.parse_args()
    signal.signal(signal.SIGINT, signal.default_int_handler)

    pgdr_bin = str(Path(sys.executable).parent / "pgdr")  # the console script users run
    for what in ("--help", "--version"):
        med, lo, hi = median_wall([pgdr_bin, what], args.runs)
        print(f"pgdr {what:<10} wall median {med * 1000:.0f} ms  range {lo * 1000:.0f}-{hi * 1000:.0f} ms  "
              f"(target < 100 ms)")
    pgdr_help = median_cpu([*PGDR, "--help"], args.runs)
    pg_ctl = shutil.which("pg_ctl") or "/usr/lib/postgresql/15/bin/pg_ctl"
    pg_ctl_help = median_cpu([pg_ctl, "--help"], args.runs)
    print(f"pgdr --help      CPU median {pgdr_help * 1000:.0f} ms  (target <= 200 ms)")
    print(f"pg_ctl --help    CPU median {pg_ctl_help * 1000:.0f} ms  (ratio pgdr/pg_ctl {pgdr_help / max(pg_ctl_help, 1e-4):.0f}x)")
    if shutil.which("pgbackrest"):
        rest = median_cpu(["pgbackrest", "help"], args.runs)
        print(f"pgbackrest help  CPU median {rest * 1000:.0f} ms  (ratio pgdr/pgbackrest {pgdr_help / max(rest, 1e-4):.1f}x)")
    imports = median_cpu([sys.executable, "-c", "import pgdr.cli.main, pgdr.failover.failover"], args.runs)
    print(f"import of everything `pgdr failover` needs: CPU median {imports * 1000:.0f} ms")
    if not args.no_failover:
        times = failover_first_write(max(3, args.runs // 3))
        for how, got in times.items():
            if got:
                print(f"kill -9 primary -> first write, {how:<20}: median {statistics.median(got):.2f}s "
                      f"range {min(got):.2f}-{max(got):.2f}  runs {[round(t, 2) for t in got]}")


if __name__ == "__main__":
    main()
