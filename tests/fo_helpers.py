"""Real peers for failover tests: pgbouncer, etcd, and a proxy that can cut a network path."""

from __future__ import annotations

import os
import shutil
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

    def __init__(self, sandbox: sb.Sandbox, programs: Programs) -> None:
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
server_login_retry = 0
query_wait_timeout = 30
logfile = {self.dir / 'pgbouncer.log'}
pidfile = {self.dir / 'pgbouncer.pid'}
""")
        (self.dir / "users.txt").write_text('"postgres" ""\n')
        for f in (self.ini, self.dir / "users.txt"):
            programs.run_as.chown(f)
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
