"""Benchmark point-in-time restore, its restore phase beside pgBackRest, and find-disaster.

pgbench -i -s SCALE into a fresh sandbox (no standby), one pgdr physical backup,
then SECONDS of pgbench (-c 2) so the archive holds WAL after the backup. Then:
- `pgdr restore --latest` (plan + extract + prefetch + replay + promote), phase by phase;
- a plain restore of the same backup: tar extract, recovery settings by hand with
  restore_command = `zstd -dc <archive>/%f.zst > %p`, replay, promote;
- pgBackRest (process-max 2, zst:1) full backup of the same database and its restore
  into a new folder: its restore time beside pgdr's extract phase;
- find-disaster over the whole archive (MB of WAL per second) beside pg_waldump alone
  reading the same, already decompressed, segments in one process.

    .venv/bin/python bench/bench_pitr.py [--scale 50] [--seconds 60]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from _common import wait_archived, waldump_alone  # bench/ is on sys.path when a bench is run

from pgdr.backup.physical import take_physical_backup
from pgdr.config import load_config
from pgdr.pg.connect import session
from pgdr.pg.instance import Instance, free_port
from pgdr.pg.programs import Programs
from pgdr.repo.layout import Repository
from pgdr.restore.extract import extract_physical
from pgdr.restore.pitr import restore_to_point, stop_restored
from pgdr.restore.recovery import RecoveryTarget, wait_until_promoted, write_recovery
from pgdr.restore.walscan import find_disasters
from pgdr.sandbox import sandbox as sb


def plain_restore(base: Path, backup_path: Path, repo: Repository, programs: Programs) -> tuple[float, float]:
    """extract + hand-written recovery settings + replay of all archived WAL; (extract_s, total_s)."""
    data = base / "plain"
    t0 = time.monotonic()
    extract_s = extract_physical(backup_path, data, programs).seconds
    inst = Instance("plain", data, free_port(), base / "plain-run", programs, log_file=base / "plain.log")
    settings = inst.local_settings()
    settings.update({"archive_mode": "off", "primary_conninfo": "", "logging_collector": "off",
                     "restore_command": f"zstd -q -dc {repo.wal_dir}/%f.zst > %p",
                     "recovery_target_action": "promote", "recovery_target_timeline": "latest"})
    write_recovery(data, settings, programs.run_as)
    inst.start(timeout=600)
    wait_until_promoted(inst, timeout=3600)
    total = time.monotonic() - t0
    inst.stop()
    shutil.rmtree(data)
    return extract_s, total


def pgbackrest(base: Path, sandbox: sb.Sandbox, programs: Programs) -> tuple[float, float] | str:
    """(backup_s, restore_s) with process-max 2 and zst, or why it could not run."""
    try:
        programs.path("pgbackrest")
    except Exception:
        return "pgbackrest not installed (apt-get install -y pgbackrest)"
    folder = base / "pgbackrest"
    for sub in ("repo", "log", "lock"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        programs.run_as.chown(folder / sub)
    programs.run_as.chown(folder)
    conf = folder / "pgbackrest.conf"
    node = sandbox.primary
    conf.write_text(
        "[global]\n"
        f"repo1-path={folder / 'repo'}\nlog-path={folder / 'log'}\nlock-path={folder / 'lock'}\n"
        "process-max=2\ncompress-type=zst\ncompress-level=1\nstart-fast=y\narchive-check=n\n"
        "log-level-console=warn\n\n"
        f"[bench]\npg1-path={node.data_dir}\npg1-port={node.port}\npg1-socket-path={sandbox.socket_dir}\n")
    os.chmod(conf, 0o644)
    common = [f"--config={conf}", "--stanza=bench"]
    try:
        programs.run("pgbackrest", [*common, "stanza-create"], timeout=300)
        t0 = time.monotonic()
        programs.run("pgbackrest", [*common, "--type=full", "backup"], timeout=3600)
        backup_s = time.monotonic() - t0
        target = folder / "restore"
        target.mkdir(mode=0o700)
        programs.run_as.chown(target)
        t0 = time.monotonic()
        programs.run("pgbackrest", [*common, f"--pg1-path={target}", "--type=immediate", "restore"], timeout=3600)
        restore_s = time.monotonic() - t0
    except Exception as exc:
        return f"pgbackrest failed: {exc}"
    shutil.rmtree(folder / "restore", ignore_errors=True)
    return backup_s, restore_s


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=int, default=50)
    parser.add_argument("--seconds", type=int, default=60)
    args = parser.parse_args()
    programs = Programs()
    base = Path(tempfile.mkdtemp(prefix="pgdr-bench-pitr-", dir="/tmp"))
    os.chmod(base, 0o755)
    sandbox = None
    try:
        sandbox = sb.up(base / "sb", programs, standbys=0)
        pg = ["-h", str(sandbox.socket_dir), "-p", str(sandbox.primary.port), "-U", "postgres"]
        t0 = time.monotonic()
        programs.run("pgbench", ["-i", "-q", "-s", str(args.scale), *pg, "app"], timeout=3600)
        print(f"pgbench -i -s {args.scale}: {time.monotonic() - t0:.1f}s")
        config = load_config(sandbox.config_path)
        repo = Repository(config.repository.path)
        backup = take_physical_backup(config, programs, repo)
        m = backup.manifest
        print(f"backup {m.id}: {m.bytes_logical / 2**20:.0f} MB data, {m.bytes_on_disk / 2**20:.0f} MB on disk")
        with session(sandbox.conninfo(sandbox.primary)) as conn:
            row = conn.execute("select pg_current_wal_lsn() as l").fetchone()
        programs.run("pgbench", ["-c", "2", "-j", "2", "-T", str(args.seconds), "-n", *pg, "app"],
                     timeout=args.seconds + 600)
        with session(sandbox.conninfo(sandbox.primary)) as conn:
            wal = conn.execute("select pg_wal_lsn_diff(pg_current_wal_lsn(), %s) as d", (row["l"],)).fetchone()
        assert wal is not None
        wait_archived(sandbox, repo)
        print(f"pgbench -T {args.seconds} -c 2: {float(wal['d']) / 2**20:.0f} MB of WAL after the backup")

        pitr_dir = base / "pitr"
        t0 = time.monotonic()
        result = restore_to_point(config, programs, repo, RecoveryTarget("latest"), pitr_dir)
        pitr_total = time.monotonic() - t0
        stop_restored(pitr_dir, programs)
        shutil.rmtree(pitr_dir)
        phases = ", ".join(f"{k} {v:.1f}s" for k, v in result.phases.items())
        print(f"pgdr restore --latest: {pitr_total:.1f}s ({phases})")

        extract_s, plain_total = plain_restore(base, backup.path, repo, programs)
        print(f"plain restore (tar extract {extract_s:.1f}s + zstd restore_command + replay): {plain_total:.1f}s")

        bk = pgbackrest(base, sandbox, programs)
        if isinstance(bk, str):
            print(f"pgBackRest: {bk}")
        else:
            print(f"pgBackRest process-max 2 zst:1: backup {bk[0]:.1f}s, restore {bk[1]:.1f}s; "
                  f"pgdr extract phase {result.phases.get('extract', 0):.1f}s")

        scan = find_disasters(programs, repo)
        mb = scan.bytes_read / 2**20
        print(f"find-disaster: {mb:.0f} MB of WAL in {scan.seconds:.1f}s = {mb / scan.seconds:.0f} MB/s "
              f"({len(scan.disasters)} findings)")
        wd_s, wd_bytes = waldump_alone(base, repo, programs)
        print(f"pg_waldump alone (one process, decompressed): {wd_bytes / 2**20:.0f} MB in {wd_s:.1f}s = "
              f"{wd_bytes / 2**20 / wd_s:.0f} MB/s")
    finally:
        if sandbox is not None:
            sb.down(sandbox.root, programs, purge=True)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
