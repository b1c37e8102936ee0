"""Benchmark: restore with its trust checks vs the same restore without them vs pgBackRest.

pgbench -i -s SCALE into a fresh sandbox (no standby), one pgdr backup, SECONDS of
pgbench so the archive holds WAL after it, then, in this one process:
- checked:   extract with sha256 of every byte as tar reads it, pg_verifybackup,
             pgdr.json cross-check, recovery settings, replay of the archive, promote;
- unchecked: the same path with checks=False (the restore as it was before issue 10).
Prints the ratio checked/unchecked (goal ≤ 1.3) and where the time goes. This is the one
in-process benchmark, on purpose: "unchecked" exists only as a function argument. The
comparison with pgBackRest and `zstd | tar`, real commands in new processes, is
bench/peers.py's.

    .venv/bin/python bench/bench_restore.py [--scale 50] [--seconds 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

from pgdr.backup.physical import take_physical_backup
from pgdr.config import load_config
from pgdr.pg.instance import DETACHED_SETTINGS, Instance, free_port
from pgdr.pg.programs import Programs
from pgdr.repo.layout import Repository
from pgdr.restore.access import bootstrap_superuser
from pgdr.restore.extract import extract_physical, plan_tablespaces
from pgdr.restore.prove import require_consistent, require_verified
from pgdr.restore.recovery import RecoveryTarget, configure_recovery, wait_until_promoted

sys.path.insert(0, str(Path(__file__).parent))
from _common import pgbench_sandbox, wait_archived  # noqa: E402


def one_restore(base: Path, name: str, backup_path: Path, repo: Repository, programs: Programs,
                config_path: Path, checks: bool) -> dict[str, float]:
    from pgdr.repo.manifest import read_manifest

    manifest = read_manifest(backup_path)
    data = base / name
    inst = Instance(name, data, free_port(), base / f"{name}-run", programs, log_file=base / f"{name}.log")
    (base / f"{name}-run").mkdir(mode=0o700)
    programs.run_as.chown(base / f"{name}-run")
    phases: dict[str, float] = {}
    t0 = time.monotonic()
    places = plan_tablespaces(manifest, data)
    extract_physical(backup_path, data, programs, manifest=manifest, tablespaces=places, checks=checks)
    phases["extract" + (" + sha256" if checks else "")] = time.monotonic() - t0
    if checks:
        t1 = time.monotonic()
        require_verified(backup_path, data, programs)
        phases["pg_verifybackup"] = time.monotonic() - t1
        t1 = time.monotonic()
        require_consistent(backup_path, data, manifest, programs)
        phases["cross-check"] = time.monotonic() - t1
    settings = {**inst.local_settings(), **DETACHED_SETTINGS}
    t1 = time.monotonic()
    configure_recovery(data, places, programs, config_path=config_path, target=RecoveryTarget("latest"),
                       socket_dir=inst.socket_dir, extra_settings=settings)
    inst.superuser = bootstrap_superuser(data)
    inst.start(timeout=600)
    wait_until_promoted(inst, timeout=3600)
    phases["replay + promote"] = time.monotonic() - t1
    phases["total"] = time.monotonic() - t0
    inst.stop()
    shutil.rmtree(data)
    return phases


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=int, default=50)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    programs = Programs()
    with pgbench_sandbox("pgdr-bench-restore-", args.scale, programs) as (base, sandbox, pg):
        config = load_config(sandbox.config_path)
        repo = Repository(config.repository.path)
        backup = take_physical_backup(config, programs, repo)
        m = backup.manifest
        print(f"backup {m.id}: {m.bytes_logical / 2**20:.0f} MB data, {m.bytes_on_disk / 2**20:.0f} MB on disk")
        programs.run("pgbench", ["-c", "2", "-j", "2", "-T", str(args.seconds), "-n", *pg, "app"],
                     timeout=args.seconds + 600)
        wait_archived(sandbox, repo)
        every: dict[str, list[dict[str, float]]] = {"unchecked": [], "checked": []}
        # alternated rounds, medians, so neither side gets only a cold or warm page cache
        for rnd in range(args.rounds):
            for label, checks in (("unchecked", False), ("checked", True)):
                got = one_restore(base, f"{label}{rnd}", backup.path, repo, programs, sandbox.config_path, checks)
                print(f"{label} #{rnd + 1}: " + ", ".join(f"{k} {v:.1f}s" for k, v in got.items()))
                every[label].append(got)
        runs = {label: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for label, rs in every.items()}
        for label, med in runs.items():
            print(f"{label} median: " + ", ".join(f"{k} {v:.2f}s" for k, v in med.items()))
        before_replay = {label: med["total"] - med["replay + promote"] for label, med in runs.items()}
        print(f"checked / unchecked, extract..ready to start (medians): "
              f"{before_replay['checked'] / before_replay['unchecked']:.2f}x")
        ratio = runs["checked"]["total"] / runs["unchecked"]["total"]
        print(f"checked / unchecked, whole restore (medians): {ratio:.2f}x (goal <= 1.3x)")


if __name__ == "__main__":
    main()
