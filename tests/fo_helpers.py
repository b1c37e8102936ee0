"""Real peers for failover tests: pgbouncer, etcd, and a proxy that can cut a network path."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

from psycopg.conninfo import make_conninfo

from pgdr.pg.instance import free_port
from pgdr.pg.programs import Programs
from pgdr.sandbox import sandbox as sb


class Pgbouncer:
    """pgbouncer (as the postgres user) in transaction mode in front of the sandbox primary."""

    def __init__(self, sandbox: sb.Sandbox, programs: Programs, login_retry: int | None = None) -> None:
        """login_retry None keeps pgbouncer's default server_login_retry (15 s), as clusters run it."""
        self.dir = sandbox.root / "pgbouncer"
        self.dir.mkdir(exist_ok=True)
        programs.run_as.chown(self.dir)
        self.port = free_port()
        self.socket_dir = self.dir
        self.ini = self.dir / "pgbouncer.ini"
        primary = sandbox.primary
        self.ini.write_text(f"""[databases]
app = host={sandbox.socket_dir} port={primary.port} dbname=app user=postgres

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir = {self.socket_dir}
auth_type = trust
auth_file = {self.dir / 'users.txt'}
admin_users = postgres
pool_mode = transaction
server_connect_timeout = 2
{"" if login_retry is None else f"server_login_retry = {login_retry}"}
query_wait_timeout = 30
logfile = {self.dir / 'pgbouncer.log'}
pidfile = {self.dir / 'pgbouncer.pid'}
""")
        (self.dir / "users.txt").write_text('"postgres" ""\n')
        for f in (self.ini, self.dir / "users.txt"):
            programs.run_as.chown(f)
        os.chmod(self.ini, 0o640)  # it may hold passwords: a repoint must keep this mode
        self.proc = programs.spawn("pgbouncer", [str(self.ini)], log_path=self.dir / "stdout.log")
        deadline = time.monotonic() + 10
        while not (self.dir / f".s.PGSQL.{self.port}").exists():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("pgbouncer did not start: " + (self.dir / "stdout.log").read_text()[-500:])
            time.sleep(0.05)

    def conninfo(self, dbname: str = "app") -> str:
        return make_conninfo(host=str(self.socket_dir), port=self.port, dbname=dbname, user="postgres")

    def repoint_toml(self) -> str:
        return (f'\n[[failover.repoint]]\nkind = "pgbouncer"\nini_file = "{self.ini}"\n'
                f'admin_conninfo = "{self.conninfo("pgbouncer")}"\ndatabase = "app"\n')

    def stop(self) -> None:
        self.proc.stop()


class Etcd:
    def __init__(self, base: Path) -> None:
        self.dir = base / "etcd"
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self.port, peer = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            ["etcd", "--name", "t", "--data-dir", str(self.dir / "data"),
             "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             "--listen-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-cluster", f"t=http://127.0.0.1:{peer}"],
            stdout=open(self.dir / "etcd.log", "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(self.url + "/health", timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("etcd did not start") from None
                time.sleep(0.1)

    def stop(self) -> None:
        """Idempotent: tests stop etcd mid-test (a lease store that is down) and again at the end."""
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class UnixProxy:
    """Forwards a unix socket to PostgreSQL's; cut() drops every connection and refuses new ones."""

    def __init__(self, target: Path, directory: Path, port: int, programs: Programs) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.path = directory / f".s.PGSQL.{port}"
        self.target = target
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if self.path.exists():
            self.path.unlink()
        self.server.bind(str(self.path))
        os.chmod(self.path, 0o777)
        self.server.listen(64)
        self.conns: list[socket.socket] = []
        self.cut_event = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.cut_event.is_set():
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(str(self.target))
            except OSError:
                client.close()
                continue
            self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def cut(self) -> None:
        self.cut_event.set()
        self.server.close()
        self.path.unlink(missing_ok=True)
        for conn in self.conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            except OSError:
                pass


class CommitLog:
    """A Jepsen-style client: commits (writer, n) rows one at a time and logs n only once
    COMMIT returned. The ground truth is this log, never pgdr's own report; the longest
    time any one write (attempt) was in flight shows whether writes blocked."""

    TABLE = "jepsen"

    def __init__(self, conninfo: str, writer: int) -> None:
        self.conninfo = make_conninfo(conninfo, connect_timeout=2, application_name=f"jepsen{writer}")
        self.writer = writer
        self.acked: list[int] = []
        self.acked_at: list[float] = []  # time.monotonic() of each acknowledgement
        self.failed_at: list[float] = []  # time.monotonic() of each failed attempt
        self.errors = 0
        self.longest_block = 0.0
        self._inflight_since: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    @classmethod
    def create_table(cls, conninfo: str) -> None:
        import psycopg

        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f"create table if not exists {cls.TABLE} (writer int, n int, primary key (writer, n))")

    def _loop(self) -> None:
        import psycopg

        n, conn = 0, None
        while not self._stop.is_set():
            self._inflight_since = time.monotonic()
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.conninfo, autocommit=True, prepare_threshold=None)
                n += 1  # an attempt that fails may or may not have committed: its n is never reused
                conn.execute(f"insert into {self.TABLE} values (%s, %s)", (self.writer, n))
                self.acked_at.append(time.monotonic())
                self.acked.append(n)
            except psycopg.Error:
                self.errors += 1
                self.failed_at.append(time.monotonic())
                if conn is not None:
                    conn.close()
                conn = None
                self._stop.wait(0.02)
            finally:
                self.longest_block = max(self.longest_block, time.monotonic() - self._inflight_since)
                self._inflight_since = None
        if conn is not None:
            conn.close()

    STALL = 0.25  # seconds without an acknowledgement that count as an outage (commits take ms)

    def first_ack_after(self, t0: float) -> float | None:
        """Seconds from a fault at t0 (time.monotonic()) until this client writes again.

        After a failure since t0: its first acknowledgement after that failure. Without one
        (pgbouncer holds the query while the server is away, so the client only waits): the
        first acknowledgement that ends a stall of STALL seconds or more. Acknowledgements
        right after t0 from a SIGKILLed postmaster's surviving backends are not the recovery.
        """
        acks = list(self.acked_at)
        failed = next((t for t in list(self.failed_at) if t > t0), None)
        if failed is not None:
            return next((t - t0 for t in acks if t > failed), None)
        prev = max((t for t in acks if t <= t0), default=t0)
        for t in acks:
            if t > t0:
                if t - prev >= self.STALL:
                    return t - t0
                prev = t
        return None

    def blocked_now(self) -> float:
        since = self._inflight_since
        return 0.0 if since is None else time.monotonic() - since

    def start(self) -> CommitLog:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)

    def wait_progress(self, more: int = 20, timeout: float = 30) -> None:
        target = len(self.acked) + more
        deadline = time.monotonic() + timeout
        while len(self.acked) < target:
            if time.monotonic() > deadline:
                raise AssertionError(f"writer {self.writer} made no progress ({len(self.acked)} acknowledged; "
                                     f"in flight for {self.blocked_now():.1f}s)")
            time.sleep(0.02)

    def missing(self, conninfo: str) -> set[int]:
        """Acknowledged commits that the server at conninfo does not have."""
        import psycopg

        acked = list(self.acked)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            rows = conn.execute(f"select n from {self.TABLE} where writer = %s", (self.writer,)).fetchall()
        return set(acked) - {r[0] for r in rows}


def writable_nodes(sandbox: sb.Sandbox) -> list[str]:
    """Every node that accepts connections and is not in recovery: must be exactly one."""
    import psycopg

    out = []
    for node in sandbox.nodes:
        try:
            with psycopg.connect(sandbox.conninfo(node, "postgres"), autocommit=True, connect_timeout=2) as conn:
                row = conn.execute("select pg_is_in_recovery()").fetchone()
                if row is not None and row[0] is False:
                    out.append(node.name)
        except psycopg.Error:
            continue
    return out


def multi_host(sandbox: sb.Sandbox, dbname: str = "app") -> str:
    """A libpq multi-host string over every node, landing on the writable one."""
    nodes = sandbox.nodes
    return make_conninfo(host=",".join(str(sandbox.socket_dir) for _ in nodes),
                         port=",".join(str(n.port) for n in nodes), dbname=dbname, user="postgres",
                         target_session_attrs="read-write")


def sigstop(pid: int) -> None:
    os.kill(pid, signal.SIGSTOP)


def sigcont(pid: int) -> None:
    os.kill(pid, signal.SIGCONT)
