"""Who may act: a leader lease, so two watchers never both promote.

LocalLease: an flock in the repository — enough when every watcher runs on one host.
EtcdLease: a key created only if absent (a transaction on create_revision = 0) and
bound to an etcd lease with a TTL; the holder keeps it alive, and a watcher that
cannot renew it stops acting. Spoken over etcd's v3 JSON gateway (/v3/...), so no
gRPC client library is needed.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import socket
import threading
import urllib.error
import urllib.request
from typing import Any, Protocol

from pgdr.errors import PgdrError
from pgdr.repo.layout import Repository


class Lease(Protocol):
    holder: str
    error: str | None  # why the lease store did not answer, when it did not

    def acquire_or_renew(self) -> bool: ...

    def renew(self) -> bool:
        """Keep a lease already held; False when it was lost (never re-acquires)."""
        ...

    def release(self) -> None: ...


class LocalLease:
    def __init__(self, repo: Repository, name: str = "watch-leader") -> None:
        self.path = repo.lock_path(name)
        self.holder = f"{socket.gethostname()}:{os.getpid()}"
        self.error: str | None = None
        self._fh: Any = None

    def acquire_or_renew(self) -> bool:
        if self._fh is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")  # noqa: SIM115
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            return False
        fh.seek(0)
        fh.truncate()
        fh.write(self.holder)
        fh.flush()
        self._fh = fh
        return True

    def renew(self) -> bool:
        return self._fh is not None

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class EtcdClient:
    """The few etcd v3 JSON-gateway calls pgdr needs, tried on each endpoint in turn."""

    def __init__(self, endpoints: list[str], timeout: float = 2) -> None:
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.timeout = timeout

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        last: Exception | None = None
        for endpoint in self.endpoints:
            request = urllib.request.Request(endpoint + path, data=json.dumps(body).encode(),
                                             headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                    return dict(json.loads(resp.read() or b"{}"))
            except (urllib.error.URLError, OSError, ValueError) as exc:
                last = exc
        raise PgdrError(f"etcd unreachable at {', '.join(self.endpoints)}: {last}")

    def get(self, key: str) -> str | None:
        kvs = self.post("/v3/kv/range", {"key": _b64(key)}).get("kvs") or []
        return base64.b64decode(kvs[0]["value"]).decode() if kvs and kvs[0].get("value") else None

    def put(self, key: str, value: str) -> None:
        self.post("/v3/kv/put", {"key": _b64(key), "value": _b64(value)})


class EtcdLease:
    def __init__(self, endpoints: list[str], key: str, ttl: int) -> None:
        self.client = EtcdClient(endpoints, timeout=max(0.5, ttl / 4))
        self.key = key
        self.ttl = ttl
        self.holder = f"{socket.gethostname()}:{os.getpid()}"
        self.lease_id: str | None = None
        self.error: str | None = None  # why the last acquire failed, when etcd did not answer

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.client.post(path, body)

    def acquire_or_renew(self) -> bool:
        try:
            self.error = None
            if self.lease_id is not None:
                alive = self._post("/v3/lease/keepalive", {"ID": self.lease_id})
                if int(alive.get("result", {}).get("TTL", 0)) > 0:
                    return True
                self.lease_id = None  # expired: someone else may hold the key now
            granted = self._post("/v3/lease/grant", {"TTL": self.ttl})
            lease_id = str(granted["ID"])
            txn = self._post("/v3/kv/txn", {
                "compare": [{"target": "CREATE", "key": _b64(self.key), "createRevision": "0"}],
                "success": [{"requestPut": {"key": _b64(self.key), "value": _b64(self.holder), "lease": lease_id}}],
            })
            if txn.get("succeeded"):
                self.lease_id = lease_id
                return True
            self._post("/v3/lease/revoke", {"ID": lease_id})
            return False
        except PgdrError as exc:
            self.lease_id = None
            self.error = exc.message
            return False

    def renew(self) -> bool:
        if self.lease_id is None:
            return False
        try:
            alive = self._post("/v3/lease/keepalive", {"ID": self.lease_id})
        except PgdrError:
            return False
        if int(alive.get("result", {}).get("TTL", 0)) > 0:
            return True
        self.lease_id = None
        return False

    def release(self) -> None:
        if self.lease_id is not None:
            try:
                self._post("/v3/lease/revoke", {"ID": self.lease_id})
            except PgdrError:
                pass
            self.lease_id = None


class LeaseKeeper:
    """Renews a lease in the background for as long as the watcher runs — including
    through a failover that lasts longer than the lease's TTL — so `held` is current
    when the main loop (busy failing over) cannot renew it itself."""

    def __init__(self, lease: Lease, period: float) -> None:
        self.lease = lease
        self.period = period
        self.held = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pgdr-lease", daemon=True)

    def start(self) -> LeaseKeeper:
        self.tick()
        self._thread.start()
        return self

    def tick(self) -> bool:
        with self._lock:
            self.held = self.lease.acquire_or_renew()
            return self.held

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            self.tick()

    def still_ours(self) -> str | None:
        """Asked right before pg_promote: None while the lease is still ours, else why not."""
        with self._lock:
            self.held = self.lease.renew()
            if self.held:
                return None
        return "this watcher lost the leader lease during the failover; another watcher may act"

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.period + 5)
        with self._lock:
            self.lease.release()
