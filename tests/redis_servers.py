"""Real redis-servers for the Redis tests: Debian's redis-server, started by the tests on
free ports as the postgres user (so an unwritable dir really is unwritable), never the
system service. Each is stopped by the pid the test started."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import redis

from pgdr.pg.instance import free_port


class RedisServer:
    def __init__(self, root: Path, password: str | None = None, extra: list[str] | None = None) -> None:
        self.dir = root
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chown(self.dir, *_postgres_ids())
        self.port = free_port()
        self.password = password
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                "--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0",
                "--logfile", str(self.dir / "redis.log"), *(extra or [])]
        if password:
            args += ["--requirepass", password]
        uid, gid = _postgres_ids()
        self.proc = subprocess.Popen(args, user=uid, group=gid, extra_groups=[], cwd=str(self.dir),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        wait_ping(self.port, password)

    def client(self, db: int = 0) -> Any:
        return redis.Redis(port=self.port, db=db, password=self.password, socket_timeout=10)

    def url(self, password: str | None = None, db: int = 0) -> str:
        pw = password if password is not None else self.password
        return f"redis://{':' + pw + '@' if pw else ''}127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _postgres_ids() -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam("postgres")
    return entry.pw_uid, entry.pw_gid


def wait_ping(port: int, password: str | None = None, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if redis.Redis(port=port, password=password, socket_timeout=2).ping():
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"redis-server on port {port} did not answer PING within {timeout}s")
        time.sleep(0.05)


def stop_restored(target_dir: Path) -> None:
    """Stop the redis-server `pgdr restore --redis` started there (by its pid file)."""
    try:
        pid = int((target_dir / "redis.pid").read_text().strip())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 20
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def write_config(path: Path, repo: Path, redis_entries: str, extra: str = "") -> Path:
    """A pgdr.toml with a PostgreSQL node nobody listens on (these tests are about Redis)."""
    path.write_text(f"""
[[nodes]]
name = "pg"
conninfo = "host=127.0.0.1 port=1 user=postgres connect_timeout=1"
role = "primary"

[repository]
path = "{repo}"
{extra}
{redis_entries}
""")
    return path
