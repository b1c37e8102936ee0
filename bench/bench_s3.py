"""Benchmark: `pgdr backup` into an S3 repository (moto_server on this machine) vs the local
repository, and reading the backup back (fetch + check, what restore adds) vs hashing it
locally (what restore does anyway).

Run: .venv/bin/python bench/bench_s3.py [--scale 50] [--rounds 2] [--encrypt]

Rounds alternate local and S3 in the same process to spread machine noise evenly; the
ratio S3/local is the figure (goal: backup within 1.5x).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from pgdr.backup.physical import take_physical_backup  # noqa: E402
from pgdr.config import load_config  # noqa: E402
from pgdr.pg.connect import session  # noqa: E402
from pgdr.pg.programs import Programs  # noqa: E402
from pgdr.repo.layout import Repository  # noqa: E402
from pgdr.repo.manifest import read_manifest  # noqa: E402
from pgdr.repo.remote import fetch_backup, purge_backup  # noqa: E402
from pgdr.restore.extract import check_files  # noqa: E402
from pgdr.sandbox import sandbox as sb  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--encrypt", action="store_true")
    args = ap.parse_args()

    base = Path(tempfile.mkdtemp(prefix="pgdr-bench-s3-", dir="/tmp"))
    os.chmod(base, 0o755)
    programs = Programs()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      PGDR_BENCH_KEY="bench passphrase")
    moto = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sandbox = sb.up(base / "sb", programs, standbys=0)
    try:
        import boto3

        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}").create_bucket(Bucket="bench")
        app = sandbox.conninfo(sandbox.primary)
        programs.run("pgbench", ["-i", "-q", "-s", str(args.scale), "-d", app], timeout=1800)
        with session(app) as conn:
            conn.execute("checkpoint")
            size = conn.execute("select pg_database_size('app') as s").fetchone()["s"]  # type: ignore[index]
        print(f"pgbench scale {args.scale}: database {size / 1048576:.0f} MB")

        text = sandbox.config_path.read_text()
        s3_toml = sandbox.root / "s3.toml"
        s3_toml.write_text(text.replace('[repository]\npath = "repo"',
                                        f'[repository]\npath = "s3work"\nurl = "s3://bench/r"\n'
                                        f'endpoint = "http://127.0.0.1:{port}"\nregion = "us-east-1"'
                                        + ('\nencryption_key_env = "PGDR_BENCH_KEY"' if args.encrypt else "")))
        local_cfg, s3_cfg = load_config(sandbox.config_path), load_config(s3_toml)
        from pgdr.repo.remote import open_store

        local_repo = Repository(local_cfg.repository.path, programs.run_as)
        s3_repo = Repository(s3_cfg.repository.path, programs.run_as,
                             open_store(s3_cfg.repository, programs.run_as))
        local_t, s3_t, local_read, s3_read, stored = [], [], [], [], 0
        for _ in range(args.rounds):
            t = time.monotonic()
            res = take_physical_backup(local_cfg, programs, local_repo)
            local_t.append(time.monotonic() - t)
            t = time.monotonic()
            problems = check_files(res.path, res.manifest)
            local_read.append(time.monotonic() - t)
            assert not problems, problems
            shutil.rmtree(res.path)
            t = time.monotonic()
            res = take_physical_backup(s3_cfg, programs, s3_repo)
            s3_t.append(time.monotonic() - t)
            stored = res.manifest.bytes_on_disk
            t = time.monotonic()
            fetch_backup(s3_repo, res.manifest.id)
            problems = check_files(res.path, read_manifest(res.path))
            s3_read.append(time.monotonic() - t)
            assert not problems, problems
            purge_backup(s3_repo, res.manifest.id)
        lb, sb_ = statistics.median(local_t), statistics.median(s3_t)
        lr, sr = statistics.median(local_read), statistics.median(s3_read)
        print(f"backup bytes stored: {stored / 1048576:.0f} MB{' (encrypted)' if args.encrypt else ''}")
        print(f"backup local: median {lb:.2f}s runs {[round(x, 2) for x in local_t]}")
        print(f"backup S3:    median {sb_:.2f}s runs {[round(x, 2) for x in s3_t]}")
        print(f"ratio S3/local backup: {sb_ / lb:.3f}  (goal <= 1.5)")
        print(f"read back local (sha256): median {lr:.2f}s; S3 (fetch + check + sha256): median {sr:.2f}s; "
              f"ratio {sr / lr:.2f}")
    finally:
        sb.down(sandbox.root, programs, purge=True)
        moto.terminate()
        moto.wait(timeout=20)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
