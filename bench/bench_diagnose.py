"""Benchmark: `pgdr diagnose` with 300 open connections; /healthz/database under loopback load.

    .venv/bin/python bench/bench_diagnose.py [--connections 300] [--seconds 10] [--clients 8]

Creates a throwaway sandbox under /tmp (primary only), raises max_connections and
restarts, holds N connections (a third idle in transaction), times diagnose
(median of 5), then runs `pgdr serve` in a child process and drives
/healthz/database from client threads for a fixed time: with the default answer
cache and with the cache off (every request a real check). Everything it started is
stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psycopg

from pgdr.config import load_config
from pgdr.diagnose.analyze import diagnose
from pgdr.pg.instance import free_port
from pgdr.pg.programs import Programs
from pgdr.sandbox import sandbox as sb


def hold_connections(sandbox: sb.Sandbox, n: int) -> list[psycopg.Connection]:  # type: ignore[type-arg]
    conns = []
    for i in range(n):
        conn = psycopg.connect(sandbox.conninfo(sandbox.primary), autocommit=(i % 3 != 0),
                               application_name=f"bench{i}")
        conn.execute("select count(*) from customers where id = %s", (i,))
        conns.append(conn)
    return conns


def load_test(url: str, seconds: float, clients: int) -> dict[str, float]:
    latencies: list[list[float]] = [[] for _ in range(clients)]
    codes: dict[int, int] = {}
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker(k: int) -> None:
        with httpx.Client(timeout=5) as client:
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                code = client.get(url).status_code
                latencies[k].append(time.perf_counter() - t0)
                with lock:
                    codes[code] = codes.get(code, 0) + 1

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    flat = sorted(x for lst in latencies for x in lst)
    return {"requests": len(flat), "rps": len(flat) / elapsed,
            "p50_ms": flat[len(flat) // 2] * 1000, "p99_ms": flat[int(len(flat) * 0.99) - 1] * 1000,
            "non_200": sum(v for k, v in codes.items() if k != 200)}


def serve(config_path: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "pgdr", "-c", str(config_path), "serve", "--port", str(port)])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("pgdr serve did not start")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=300)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--clients", type=int, default=8)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="pgdr-bench-", dir="/tmp"))
    os.chmod(base, 0o755)
    programs = Programs()
    sandbox = sb.up(base / "sb", programs, standbys=0)
    conns: list[psycopg.Connection] = []  # type: ignore[type-arg]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with psycopg.connect(sandbox.conninfo(sandbox.primary), autocommit=True) as c:
            c.execute(f"alter system set max_connections = {args.connections + 100}")
        inst = sandbox.instance(sandbox.primary, programs)
        inst.stop()
        inst.start()
        conns = hold_connections(sandbox, args.connections)
        config = load_config(sandbox.config_path)
        times = []
        for _ in range(5):
            report = diagnose(config, None)
            times.append(report.duration_s)
        conn_f = report.by_concern("connections")[0]
        print(f"diagnose with {conn_f.evidence['client_connections']} client connections "
              f"({conn_f.evidence['by_state']}): median {statistics.median(times) * 1000:.0f} ms, "
              f"min {min(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms over 5 runs")
        for label, cache in (("cache 0.5s (default)", None), ("cache off", "0")):
            path = sandbox.config_path
            if cache is not None:
                path = sandbox.root / "bench-nocache.toml"
                path.write_text(sandbox.config_path.read_text() + f"\n[serve]\nhealth_cache = {cache}\n")
            port = free_port()
            proc = serve(path, port)
            procs.append(proc)
            r = load_test(f"http://127.0.0.1:{port}/healthz/database", args.seconds, args.clients)
            print(f"/healthz/database, {label}, {args.clients} client threads, {args.seconds:.0f}s: "
                  f"{r['requests']} requests, {r['rps']:.0f} req/s, p50 {r['p50_ms']:.1f} ms, "
                  f"p99 {r['p99_ms']:.1f} ms, non-200 {r['non_200']}")
            proc.send_signal(signal.SIGINT)
            proc.wait(10)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        for c in conns:
            c.close()
        sb.down(sandbox.root, programs, purge=True)
        import shutil
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
