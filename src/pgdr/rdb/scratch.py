"""A throwaway redis-server loading one RDB: verify's proof that the snapshot loads.

127.0.0.1 on a random free port, no persistence (save "" and no AOF, so it never
writes the file it loaded), its own folder, tracked like every child of pgdr and
shut down when done. Every wait is bounded and says what it waited for.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgdr.errors import PgdrError
from pgdr.pg.instance import free_port
from pgdr.pg.process import Child
from pgdr.rdb import programs
from pgdr.rdb.target import make_client

_POLL = 0.1


class ScratchFailed(PgdrError):
    """The scratch redis-server did not load the snapshot."""


@dataclass
class Scratch:
    port: int
    folder: Path
    child: Child

    def client(self, timeout: float = 5.0) -> Any:
        return make_client(host="127.0.0.1", port=self.port, timeout=timeout)


def log_tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    found = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # redis marks warnings with '#'; the last one usually names the cause
    warnings = [ln for ln in found if " # " in ln]
    return " | ".join((warnings or found)[-lines:])


def wait_loaded(port: int, deadline: float, alive: Any, log: Path, what: str) -> dict[str, Any]:
    """Until the server on port answers with loading:0; ScratchFailed when it exits or the
    deadline passes. Returns INFO."""
    import redis

    last_error = "no answer yet"
    while True:
        if not alive():
            raise ScratchFailed(f"{what} exited while loading the snapshot: {log_tail(log) or 'no log'}")
        try:
            client = make_client(host="127.0.0.1", port=port, timeout=2)
            try:
                info = dict(client.info())
            finally:
                client.close()
            if not int(info.get("loading") or 0):
                return info
            last_error = "still loading"
        except redis.BusyLoadingError:
            last_error = "still loading"
        except redis.RedisError as exc:
            last_error = str(exc)
        if time.monotonic() > deadline:
            raise ScratchFailed(f"{what} did not finish loading the snapshot in time ({last_error})",
                                hint="raise bgsave_timeout in [[redis]] for a large dataset")
        time.sleep(_POLL)


@contextmanager
def scratch_server(folder: Path, rdb_name: str, timeout: float,
                   databases: int = 16) -> Iterator[tuple[Scratch, dict[str, Any]]]:
    """Start redis-server on folder/rdb_name; yield it once loaded; always stop it.
    databases: at least one more than the highest database number in the snapshot."""
    port = free_port()
    log = folder / "redis.log"
    child = programs.spawn("redis-server", [
        "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--dbfilename", rdb_name,
        "--save", "", "--appendonly", "no", "--daemonize", "no", "--protected-mode", "yes",
        "--databases", str(max(16, databases))], log_path=log, cwd=str(folder))
    scratch = Scratch(port, folder, child)
    try:
        info = wait_loaded(port, time.monotonic() + timeout, lambda: child.poll() is None, log,
                           f"scratch redis-server (port {port})")
        yield scratch, info
    finally:
        try:
            if child.poll() is None:
                client = scratch.client(2)
                try:
                    client.shutdown(nosave=True)
                except Exception:  # noqa: BLE001 - it went away: the point
                    pass
                finally:
                    client.close()
        finally:
            child.stop(grace=10)
