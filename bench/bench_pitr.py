"""Benchmark point-in-time restore against a plain recovery and pgBackRest.

The real commands in new processes, interleaved (bench/peers.py, "pitr" part), after
SECONDS of write load following the backups:
- `pgdr restore --latest` until a new connection sees the server out of recovery;
- plain: `zstd -d | tar -x` of the same backup, recovery.signal, restore_command =
  `zstd -dc <archive>/%f.zst > %p`, pg_ctl start, until promoted;
- pgBackRest set up as its user guide does (archive_command = archive-push, archive-check
  on, process-max 2, zst:1): `restore` (to the end of its archive) + pg_ctl start, until
  promoted.
find-disaster against pg_waldump is bench/bench_undo.py's.

    .venv/bin/python bench/bench_pitr.py [--data pgbench|random] [--scale 50] [--seconds 60] [--rounds 3]
"""

from __future__ import annotations

import argparse

from peers import HEADER, run  # bench/ is on sys.path when a bench is run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", choices=("pgbench", "random"), default="pgbench")
    parser.add_argument("--scale", type=int, default=50)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(HEADER)
    for row in run(args.data, args.scale, max(3, args.rounds), args.seconds, ("pitr",)):
        print(row.markdown())


if __name__ == "__main__":
    main()
