"""Benchmark `pgdr verify` against a plain restore-and-start of the same backup.

The real commands in new processes, interleaved (bench/peers.py, "restore" part):
`pgdr verify latest` against `zstd -d | tar -x` of the same backup files + pg_ctl start +
first query — not pgdr's own restore path, which carries pgdr's checks and start-up. The
same rounds time `pgdr restore --immediate` and pgBackRest's restore + start.

    .venv/bin/python bench/bench_verify.py [--data pgbench|random] [--scale 50] [--rounds 3]
"""

from __future__ import annotations

import argparse

from peers import HEADER, run  # bench/ is on sys.path when a bench is run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", choices=("pgbench", "random"), default="pgbench")
    parser.add_argument("--scale", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(HEADER)
    for row in run(args.data, args.scale, max(3, args.rounds), 0, ("restore",)):
        print(row.markdown())


if __name__ == "__main__":
    main()
