"""A/B: `pgdr verify` of two pgdr installations on the same backup, interleaved.

pgbench -i -s SCALE into a fresh sandbox, one backup (taken with --old: a newer pgdr reads
every older pgdr.json format, not the other way round; format 2, BLAKE3 digests, came with
fb787e2), then ROUNDS rounds of `pgdr verify ID --json` from each installation in turn
(the order alternates), each a new process; prints every run's wall time and verify's own
phases, then medians. So an older checkout's pgdr verifies the same backup:

    git worktree add --detach /tmp/pgdr-old <commit> && (cd /tmp/pgdr-old && bash scripts/bootstrap.sh)
    .venv/bin/python bench/ab_verify.py --old /tmp/pgdr-old/.venv/bin/pgdr --scale 100 --rounds 4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from pgdr.pg.programs import Programs

sys.path.insert(0, str(Path(__file__).parent))
from _common import pgbench_sandbox  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--old", required=True, help="the other installation's pgdr")
    parser.add_argument("--new", default=str(Path(__file__).resolve().parents[1] / ".venv/bin/pgdr"))
    parser.add_argument("--scale", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    programs = Programs()
    with pgbench_sandbox("pgdr-ab-verify-", args.scale, programs) as (_base, sandbox, _pg):
        out = subprocess.run([args.old, "-c", str(sandbox.config_path), "backup", "--json"],
                             capture_output=True, text=True, check=True)
        backup_id = json.loads(out.stdout)["id"]
        walls: dict[str, list[float]] = {"old": [], "new": []}
        print(f"load average before: {os.getloadavg()[0]:.1f}")
        for rnd in range(args.rounds):
            order = [("old", args.old), ("new", args.new)]
            for name, exe in order if rnd % 2 == 0 else order[::-1]:
                t0 = time.monotonic()
                run = subprocess.run([exe, "-c", str(sandbox.config_path), "verify", backup_id, "--json"],
                                     capture_output=True, text=True)
                walls[name].append(time.monotonic() - t0)
                phases = json.loads(run.stdout).get("phases", {})
                print(f"{name} exit {run.returncode} {walls[name][-1]:.2f}s "
                      + " ".join(f"{k}={v:.2f}" for k, v in phases.items()), flush=True)
        print(f"load average after: {os.getloadavg()[0]:.1f}")
        for name, series in walls.items():
            print(f"{name}: median {statistics.median(series):.2f}s ({min(series):.2f}-{max(series):.2f})")


if __name__ == "__main__":
    main()
