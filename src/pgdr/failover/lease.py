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
import urllib.error
import urllib.request
from typing import Any, Protocol

from pgdr.errors import PgdrError
from pgdr.repo.layout import Repository


class Lease(Protocol):
    holder: str

    def acquire_or_renew(self) -> bool: ...

    def release(self) -> None: ...


class LocalLease:
    def __init__(self, repo: Repository, name: str = "watch-leader") -> None:
        self.path = repo.lock_path(name)
        self.holder = f"{socket.gethostname()}:{os.getpid()}"
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

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class EtcdLease:
    def __init__(self, endpoints: list[str], key: str, ttl: int) -> None:
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.key = key
        self.ttl = ttl
        self.holder = f"{socket.gethostname()}:{os.getpid()}"
        self.lease_id: str | None = None

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        last: Exception | None = None
        for endpoint in self.endpoints:
            request = urllib.request.Request(endpoint + path, data=json.dumps(body).encode(),
                                             headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=2) as resp:
                    return dict(json.loads(resp.read() or b"{}"))
            except (urllib.error.URLError, OSError, ValueError) as exc:
                last = exc
        raise PgdrError(f"etcd unreachable at {', '.join(self.endpoints)}: {last}")

    def acquire_or_renew(self) -> bool:
        try:
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
        except PgdrError:
            self.lease_id = None
            return False

    def release(self) -> None:
        if self.lease_id is not None:
            try:
                self._post("/v3/lease/revoke", {"ID": self.lease_id})
            except PgdrError:
                pass
            self.lease_id = None
