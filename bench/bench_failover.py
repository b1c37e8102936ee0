"""Benchmark: kill -9 of the primary under load → when clients write again, commits lost.

Run: .venv/bin/python bench/bench_failover.py [--runs 1] [--sync] [--methods plain,guided,watch,patroni-default,patroni-tuned]

Methods, each repeated --runs times on a fresh cluster (all on loopback/unix sockets):
  plain            `pg_ctl promote` of the standby right after the kill, then the pgbouncer ini
                   rewritten and RELOADed the way a hand-written script does: the lower bound
                   for the server, and what pgbouncer's server_login_retry does to clients
  guided           `python -m pgdr failover --yes --json` right after the kill (Python start-up included)
  watch            `python -m pgdr watch --once` (default settings) already running before the kill
  patroni-default  Patroni 3 (Debian), one local etcd, ttl 30 / loop_wait 10 / retry_timeout 10
  patroni-tuned    same, ttl 10 / loop_wait 2 / retry_timeout 5

The pgdr methods run a sandbox (with --sync: two standbys, ANY 1 (standby1, standby2)) behind a
real pgbouncer at its default server_login_retry (15 s). Two Jepsen-style writers commit one row
at a time and log each acknowledged commit: one through pgbouncer, one through a libpq multi-host
string (target_session_attrs=read-write); Patroni gets the multi-host writer only. Reported per
run: seconds from the SIGKILL (for Patroni: its Patroni process and its postmaster, or Patroni
would restart it) to each writer's first acknowledged commit, to the first successful
`txid_current()` on the new primary, and acknowledged commits missing from the new primary.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pgdr.pg.instance import free_port  # noqa: E402
from pgdr.pg.programs import Programs  # noqa: E402
from pgdr.sandbox import sandbox as sb  # noqa: E402
from tests.fo_helpers import CommitLog, Pgbouncer, multi_host  # noqa: E402

PATRONI = "/usr/bin/patroni"
ETCD = "/usr/bin/etcd"
PG_BIN = "/usr/lib/postgresql/15/bin"
WARMUP = 2.0  # seconds of writes before the kill


@dataclass
class Run:
    writable_s: float | None
    lost: int
    acknowledged: int
    extra: dict[str, object] = field(default_factory=dict)


# ---- measurement -------------------------------------------------------------------------------
def wait_writable(conninfo: str, t0: float, timeout: float) -> float | None:
    """Seconds from t0 until the node accepts a write (txid_current), probing every ~10 ms."""
    conn: psycopg.Connection | None = None
    try:
        while time.monotonic() - t0 < timeout:
            try:
                if conn is None or conn.closed or conn.broken:
                    conn = psycopg.connect(conninfo, autocommit=True, connect_timeout=1)
                conn.execute("select txid_current()")
                return time.monotonic() - t0
            except psycopg.Error:
                if conn is not None and conn.broken:
                    conn.close()
                    conn = None
            time.sleep(0.01)
        return None
    finally:
        if conn is not None:
            conn.close()


def wait_streaming(primary_conninfo: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(primary_conninfo, autocommit=True, connect_timeout=2) as conn:
                row = conn.execute("select count(*) from pg_stat_replication where state = 'streaming' "
                                   "and application_name not like 'pgdr_archiver%'").fetchone()
                if row and row[0] >= 1:
                    return
        except psycopg.Error:
            pass
        time.sleep(0.1)
    raise RuntimeError("standby never streamed")


# ---- pgdr methods (project sandbox) --------------------------------------------------------------
def _client_times(writers: list[CommitLog], t0: float, timeout: float = 60) -> dict[str, float | None]:
    """Wait (bounded) until every writer has an acknowledged commit after t0; seconds per writer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(w.first_ack_after(t0) is None for w in writers):
        time.sleep(0.02)
    names = {1: "pgbouncer_s", 2: "multihost_s"}
    return {names[w.writer]: (None if (v := w.first_ack_after(t0)) is None else round(v, 3)) for w in writers}


def _lost(writers: list[CommitLog], conninfo: str) -> int:
    return sum(len(w.missing(conninfo)) for w in writers)


def pgdr_run(method: str, base: Path, i: int, programs: Programs, sync: bool) -> Run:
    root = base / f"{method}-{i}"
    sandbox = sb.up(root, programs, standbys=2 if sync else 1, sync=sync)
    bouncer = Pgbouncer(sandbox, programs)  # default server_login_retry, as clusters run it
    writers: list[CommitLog] = []
    watcher: subprocess.Popen[str] | None = None
    try:
        with open(sandbox.config_path, "a") as conf:
            conf.write(bouncer.repoint_toml())
        standby = next(n for n in sandbox.nodes if n.role == "standby")
        probe_ci = sandbox.conninfo(standby, "postgres")
        wait_streaming(sandbox.conninfo(sandbox.primary, "postgres"))
        cli = [sys.executable, "-m", "pgdr", "--config", str(sandbox.config_path)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "400"}
        events: list[tuple[float, str]] = []
        if method == "watch":
            watcher = subprocess.Popen([*cli, "watch", "--once"], stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True, env=env)
            ready = threading.Event()

            def read() -> None:
                assert watcher is not None and watcher.stdout is not None
                for line in watcher.stdout:
                    events.append((time.monotonic(), line.rstrip()))
                    if " primary: " in line:
                        ready.set()

            threading.Thread(target=read, daemon=True).start()
            if not ready.wait(30):
                raise RuntimeError("watcher never found the primary: " + " | ".join(e[1] for e in events))
        CommitLog.create_table(sandbox.conninfo(sandbox.primary))
        writers = [CommitLog(bouncer.conninfo("app"), 1).start(), CommitLog(multi_host(sandbox), 2).start()]
        time.sleep(WARMUP)
        extra: dict[str, object] = {}
        action: threading.Thread | None = None
        result: dict[str, object] = {}

        t0 = time.monotonic()
        sandbox.instance(sandbox.primary, programs).kill9()
        if method == "plain":
            def act() -> None:
                sandbox.instance(standby, programs).promote()
                ini = bouncer.ini.read_text()
                bouncer.ini.write_text(re.sub(r"port=\d+", f"port={standby.port}", ini, count=1))
                with psycopg.connect(bouncer.conninfo("pgbouncer"), autocommit=True) as conn:
                    conn.execute("RELOAD", prepare=False)
            action = threading.Thread(target=act)
            action.start()
        elif method == "guided":
            def act() -> None:
                proc = subprocess.run([*cli, "failover", "--yes", "--json"], capture_output=True, text=True,
                                      env=env, timeout=120)
                result["rc"], result["out"], result["err"] = proc.returncode, proc.stdout, proc.stderr
                result["done_s"] = time.monotonic() - t0
            action = threading.Thread(target=act)
            action.start()
        writable = wait_writable(probe_ci, t0, 60)
        if action is not None:
            action.join(120)
        extra.update(_client_times(writers, t0))
        for w in writers:
            w.stop()
        new_primary = standby
        if method == "guided":
            extra["cmd_exit_s"] = round(float(result.get("done_s", 0.0)), 3)  # type: ignore[arg-type]
            try:
                record = json.loads(str(result.get("out", "")))
                extra["rto_seconds"] = record.get("rto_seconds")
                extra["record_rpo_commits"] = (record.get("rpo") or {}).get("commits")
                new_primary = next(n for n in sandbox.nodes if n.name == record.get("new_primary"))
            except (ValueError, StopIteration):
                extra["error"] = f"exit {result.get('rc')}: {str(result.get('err', ''))[-300:]}"
        if method == "watch":
            assert watcher is not None
            try:
                watcher.wait(30)
            except subprocess.TimeoutExpired:
                extra["error"] = "watcher did not exit after --once"
            for at, line in events:
                if " failover: " in line and "detected_s" not in extra:
                    extra["detected_s"] = round(at - t0, 3)
                m = re.search(r"failover-done: (\S+) promoted .* after ([0-9.]+)s", line)
                if m:
                    extra["rto_seconds"] = float(m.group(2))
                    new_primary = next(n for n in sandbox.nodes if n.name == m.group(1))
                if "failover-refused" in line:
                    extra["error"] = line
        lost = _lost(writers, sandbox.conninfo(new_primary)) if writable is not None else -1
        return Run(writable, lost, sum(len(w.acked) for w in writers), extra)
    finally:
        for w in writers:
            w.stop()
        if watcher is not None and watcher.poll() is None:
            watcher.terminate()
            try:
                watcher.wait(10)
            except subprocess.TimeoutExpired:
                watcher.kill()
                watcher.wait()
        bouncer.stop()
        sb.down(root, programs, purge=True)


# ---- Patroni ---------------------------------------------------------------------------------------
def _pg_ids() -> tuple[int, int]:
    entry = pwd.getpwnam("postgres")
    return entry.pw_uid, entry.pw_gid


class Etcd:
    def __init__(self, base: Path) -> None:
        self.client, self.peer = free_port(), free_port()
        self.dir = base / "etcd"
        self.log = base / "etcd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client}"

    def start(self) -> None:
        c, p = f"http://127.0.0.1:{self.client}", f"http://127.0.0.1:{self.peer}"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [ETCD, "--name", "bench", "--data-dir", str(self.dir), "--listen-client-urls", c,
                 "--advertise-client-urls", c, "--listen-peer-urls", p, "--initial-advertise-peer-urls", p,
                 "--initial-cluster", f"bench={p}", "--initial-cluster-state", "new"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{c}/health", timeout=1) as resp:
                    if json.loads(resp.read()).get("health") == "true":
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"etcd did not become healthy; see {self.log}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class PatroniNode:
    name: str
    dir: Path
    pg_port: int
    api_port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.dir / "run"

    def conninfo(self, dbname: str = "postgres") -> str:
        return make_conninfo(host=str(self.socket_dir), port=self.pg_port, dbname=dbname, user="postgres")

    def postmaster_pid(self) -> int | None:
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError, IndexError):
            return None

    def api(self) -> dict[str, object] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.api_port}/patroni", timeout=1) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:  # 503 still carries the state
            try:
                return json.loads(exc.read())
            except ValueError:
                return None
        except (OSError, ValueError):
            return None


def patroni_yaml(node: PatroniNode, scope: str, etcd: str, ttl: int, loop_wait: int, retry: int) -> str:
    # JSON is YAML: no extra dependency to write it.
    conf = {
        "scope": scope, "namespace": "/pgdr-bench/", "name": node.name,
        "log": {"level": "INFO"},
        "restapi": {"listen": f"127.0.0.1:{node.api_port}", "connect_address": f"127.0.0.1:{node.api_port}"},
        "etcd3": {"hosts": [etcd]},
        "bootstrap": {
            "dcs": {"ttl": ttl, "loop_wait": loop_wait, "retry_timeout": retry,
                    "maximum_lag_on_failover": 1048576,
                    "postgresql": {"use_pg_rewind": False, "use_slots": True, "parameters": {
                        "wal_level": "replica", "hot_standby": "on", "max_wal_senders": 10,
                        "max_replication_slots": 10, "wal_log_hints": "on"}}},
            "initdb": [{"encoding": "UTF8"}, {"locale": "C"}, "data-checksums"],
            "pg_hba": ["local all all trust", "host replication replicator 127.0.0.1/32 scram-sha-256",
                       "host all all 127.0.0.1/32 scram-sha-256"],
        },
        "postgresql": {
            "listen": f"127.0.0.1:{node.pg_port}", "connect_address": f"127.0.0.1:{node.pg_port}",
            "use_unix_socket": True, "data_dir": str(node.data_dir), "bin_dir": PG_BIN,
            "pgpass": str(node.dir / "pgpass"),
            # without it pg_basebackup waits for the next spread checkpoint (minutes)
            "basebackup": [{"checkpoint": "fast"}],
            "authentication": {"superuser": {"username": "postgres", "password": "bench-su"},
                               "replication": {"username": "replicator", "password": "bench-rep"},
                               "rewind": {"username": "postgres", "password": "bench-su"}},
            "parameters": {"unix_socket_directories": str(node.socket_dir)},
        },
        "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False, "nosync": False},
    }
    return json.dumps(conf, indent=1)


class PatroniCluster:
    def __init__(self, root: Path, etcd: Etcd, ttl: int, loop_wait: int, retry: int) -> None:
        self.root = root
        self.scope = root.name
        self.etcd, self.timing = etcd, (ttl, loop_wait, retry)
        self.nodes = [PatroniNode(f"node{k}", root / f"node{k}", free_port(), free_port()) for k in (1, 2)]

    def _spawn(self, node: PatroniNode) -> None:
        uid, gid = _pg_ids()
        for d in (node.dir, node.socket_dir):
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o755 if d == node.dir else 0o700)
            os.chown(d, uid, gid)
        cfg = node.dir / "patroni.yml"
        cfg.write_text(patroni_yaml(node, self.scope, self.etcd.endpoint, *self.timing))
        os.chown(cfg, uid, gid)
        env = {**os.environ, "HOME": pwd.getpwnam("postgres").pw_dir, "USER": "postgres", "LOGNAME": "postgres",
               "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        env.pop("PGPASSWORD", None)
        with open(node.dir / "patroni.log", "ab") as log:
            node.proc = subprocess.Popen([PATRONI, str(cfg)], stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=str(node.dir), env=env,
                                         user=uid, group=gid, extra_groups=[], start_new_session=True)

    def _wait(self, what: str, check, timeout: float) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            for n in self.nodes:
                if n.proc is not None and n.proc.poll() is not None:
                    raise RuntimeError(f"patroni {n.name} exited ({n.proc.returncode}): " + self.log_tails())
            time.sleep(0.2)
        raise RuntimeError(f"patroni cluster: {what} not reached in {timeout:.0f}s; " + self.log_tails())

    def log_tails(self, lines: int = 4) -> str:
        out = []
        for n in self.nodes:
            try:
                tail = (n.dir / "patroni.log").read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                tail = ["(no log)"]
            out.append(f"[{n.name} patroni.log] " + " / ".join(tail))
        return " ".join(out)

    def start(self) -> tuple[PatroniNode, PatroniNode]:
        self.root.mkdir(parents=True)
        os.chmod(self.root, 0o755)
        first, second = self.nodes
        self._spawn(first)

        def leader_running() -> bool:
            st = first.api()
            return bool(st and st.get("role") in ("master", "primary") and st.get("state") == "running")

        self._wait("first node leader", leader_running, 120)
        with psycopg.connect(first.conninfo(), autocommit=True) as conn:
            conn.execute("create database app")
        schema = resources.files("pgdr.sandbox").joinpath("sample_schema.sql").read_text()
        with psycopg.connect(first.conninfo("app"), autocommit=True) as conn:
            conn.execute(schema)
        self._spawn(second)

        def replica_streaming() -> bool:
            st = second.api()
            if not (st and st.get("role") == "replica" and st.get("state") == "running"):
                return False
            try:
                with psycopg.connect(second.conninfo("app"), autocommit=True, connect_timeout=1) as conn:
                    row = conn.execute("select to_regclass('orders') is not null, "
                                       "(select status from pg_stat_wal_receiver)").fetchone()
                    return bool(row and row[0] and row[1] == "streaming")
            except psycopg.Error:
                return False

        self._wait("replica streaming", replica_streaming, 60)
        return first, second

    def stop(self) -> None:
        for n in self.nodes:
            if n.proc is not None and n.proc.poll() is None:
                n.proc.terminate()  # Patroni stops its PostgreSQL on SIGTERM
        for n in self.nodes:
            if n.proc is not None:
                try:
                    n.proc.wait(45)
                except subprocess.TimeoutExpired:
                    n.proc.kill()
                    n.proc.wait()
        for n in self.nodes:
            if n.postmaster_pid() is not None and n.data_dir.exists():
                subprocess.run([f"{PG_BIN}/pg_ctl", "-D", str(n.data_dir), "-m", "immediate", "-w", "stop"],
                               capture_output=True, user=_pg_ids()[0], group=_pg_ids()[1], extra_groups=[],
                               timeout=60, cwd="/")
            pid = n.postmaster_pid()
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)


def patroni_run(label: str, base: Path, i: int, etcd: Etcd, ttl: int, loop_wait: int, retry: int) -> Run:
    cluster = PatroniCluster(base / f"{label}-{i}", etcd, ttl, loop_wait, retry)
    writer: CommitLog | None = None
    try:
        primary, standby = cluster.start()
        CommitLog.create_table(primary.conninfo("app"))
        hosts = make_conninfo(host=",".join(str(n.socket_dir) for n in cluster.nodes),
                              port=",".join(str(n.pg_port) for n in cluster.nodes), dbname="app",
                              user="postgres", target_session_attrs="read-write")
        writer = CommitLog(hosts, 2).start()
        time.sleep(WARMUP)
        assert primary.proc is not None
        pm = primary.postmaster_pid()
        t0 = time.monotonic()
        os.kill(primary.proc.pid, signal.SIGKILL)
        if pm is not None:
            os.kill(pm, signal.SIGKILL)
        writable = wait_writable(standby.conninfo(), t0, 180)
        extra: dict[str, object] = dict(_client_times([writer], t0))
        writer.stop()
        primary.proc.wait(5)
        lost = _lost([writer], standby.conninfo("app")) if writable is not None else -1
        return Run(writable, lost, len(writer.acked), extra)
    finally:
        if writer is not None:
            writer.stop()
        cluster.stop()


# ---- report --------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--sync", action="store_true", help="pgdr methods on ANY 1 (standby1, standby2)")
    ap.add_argument("--methods", default="plain,guided,watch,patroni-default,patroni-tuned")
    args = ap.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]

    base = Path(tempfile.mkdtemp(prefix="pgdr-fb-", dir="/tmp"))
    os.chmod(base, 0o755)
    programs = Programs()
    results: dict[str, list[Run]] = {}
    failures: dict[str, str] = {}
    etcd: Etcd | None = None
    try:
        for method in methods:
            runs: list[Run] = []
            try:
                if method.startswith("patroni"):
                    if etcd is None:
                        etcd = Etcd(base)
                        etcd.start()
                    timing = (30, 10, 10) if method == "patroni-default" else (10, 2, 5)
                    for i in range(args.runs):
                        runs.append(patroni_run(method, base, i, etcd, *timing))
                        print(f"  {method} run {i + 1}: {fmt(runs[-1])}", flush=True)
                else:
                    for i in range(args.runs):
                        runs.append(pgdr_run(method, base, i, programs, args.sync))
                        print(f"  {method} run {i + 1}: {fmt(runs[-1])}", flush=True)
            except Exception as exc:  # report what failed, measure the others
                failures[method] = f"{type(exc).__name__}: {exc}"
                print(f"  {method} FAILED: {failures[method]}", flush=True)
            results[method] = runs
    finally:
        if etcd is not None:
            etcd.stop()
        shutil.rmtree(base, ignore_errors=True)

    print()
    print(f"kill -9 of the primary under one-commit-at-a-time writers; {args.runs} runs per method; "
          f"{'synchronous (ANY 1 of 2)' if args.sync else 'asynchronous'} replication for pgdr methods; "
          f"{os.cpu_count()} CPUs")
    lower = None
    if results.get("plain"):
        times = [r.writable_s for r in results["plain"] if r.writable_s is not None]
        lower = statistics.median(times) if times else None
    header = f"{'method':<16} {'median s':>9} {'max s':>7} {'x lower':>8} {'x lower(max)':>12}  lost per run"
    print(header)
    print("-" * len(header))
    plain_max = max((r.writable_s for r in results.get("plain", []) if r.writable_s is not None), default=None)
    for method in methods:
        runs = results.get(method, [])
        times = [r.writable_s for r in runs if r.writable_s is not None]
        if not times:
            print(f"{method:<16} {'-':>9} {'-':>7} {'-':>8} {'-':>12}  {failures.get(method, 'no run')}")
            continue
        med, mx = statistics.median(times), max(times)
        ratio = f"{med / lower:.1f}" if lower else "-"
        ratio_max = f"{mx / plain_max:.1f}" if plain_max else "-"
        lost = [r.lost for r in runs]
        timeouts = len(runs) - len(times)
        print(f"{method:<16} {med:>9.3f} {mx:>7.3f} {ratio:>8} {ratio_max:>12}  {lost}"
              + (f"  ({timeouts} never writable)" if timeouts else "")
              + (f"  FAILED after {len(runs)} runs: {failures[method]}" if method in failures else ""))
    for method in methods:
        runs = results.get(method, [])
        if runs:
            print(f"{method}: first acknowledged write after the kill through pgbouncer "
                  f"{[r.extra.get('pgbouncer_s') for r in runs]} s, through multi-host libpq "
                  f"{[r.extra.get('multihost_s') for r in runs]} s")
    for method in ("guided", "watch"):
        runs = results.get(method, [])
        rtos = [r.extra.get("rto_seconds") for r in runs]
        if runs:
            print(f"{method}: record rto_seconds {rtos}"
                  + (f"; command exited at {[r.extra.get('cmd_exit_s') for r in runs]} s" if method == "guided" else "")
                  + (f"; failover decided at {[r.extra.get('detected_s') for r in runs]} s after the kill"
                     if method == "watch" else ""))
            errors = [r.extra["error"] for r in runs if "error" in r.extra]
            if errors:
                print(f"{method}: errors {errors}")
    if "guided" in results:
        print(f"guided: RPO the record reported (commits) {[r.extra.get('record_rpo_commits') for r in results['guided']]}")


def fmt(run: Run) -> str:
    t = f"{run.writable_s:.3f}s" if run.writable_s is not None else "never"
    extra = "".join(f" {k}={v}" for k, v in run.extra.items())
    return f"writable after {t}, lost {run.lost} of {run.acknowledged} acknowledged{extra}"


if __name__ == "__main__":
    main()
