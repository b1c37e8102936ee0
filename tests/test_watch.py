"""`pgdr watch`: automatic failover, exactly once, and never from a watcher that is cut off."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

from pgdr.config import load_config
from pgdr.failover.watch import Watcher
from pgdr.pg.connect import session
from pgdr.pg.conninfo import with_params
from pgdr.repo.layout import Repository
from pgdr.repo.records import list_records
from tests.fo_helpers import Etcd, UnixProxy


def _watch_events(repo: Repository) -> list[dict[str, object]]:
    path = repo.root / "records" / "watch.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_two_watchers_with_etcd_promote_exactly_once(make_sandbox, programs, base_dir) -> None:  # type: ignore[no-untyped-def]
    sandbox = make_sandbox("watch-etcd", standbys=1)
    etcd = Etcd(make_sandbox.base)
    watchers: list[subprocess.Popen[bytes]] = []
    try:
        with open(sandbox.config_path, "a") as conf:
            conf.write(f'\n[watch]\nfailures = 3\n\n[watch.etcd]\nendpoints = ["{etcd.url}"]\n')
        env = {**os.environ, "PGDR_CONFIG": str(sandbox.config_path)}
        for _ in range(2):
            watchers.append(subprocess.Popen([sys.executable, "-m", "pgdr", "watch"], env=env,
                                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            events = _watch_events(sandbox.repo)
            if sum(e["event"] == "lease" for e in events) >= 2:
                break
            time.sleep(0.1)
        leases = [e["reason"] for e in _watch_events(sandbox.repo) if e["event"] == "lease"]
        assert sum("acquired" in r for r in leases) == 1 and sum("another watcher" in r for r in leases) == 1

        killed_at = time.monotonic()
        sandbox.instance(sandbox.primary, programs).kill9()
        standby = sandbox.conninfo(next(n for n in sandbox.nodes if n.name == "standby1"))
        while time.monotonic() - killed_at < 30:
            try:
                with session(standby, timeout=1) as conn:
                    if not conn.execute("select pg_is_in_recovery() as r").fetchone()["r"]:  # type: ignore[index]
                        conn.execute("select txid_current()")
                        break
            except Exception:
                pass
            time.sleep(0.05)
        else:
            raise AssertionError("no watcher failed over")
        time.sleep(6)  # let the follower see the dead primary, take the lease and decide
        promoted = [r for r in list_records(sandbox.repo, "failover") if r.get("outcome") == "promoted"]
        assert len(promoted) == 1 and promoted[0]["trigger"] == "watch"
        with session(standby) as conn:
            tli = conn.execute("select substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) as t").fetchone()
        assert tli == {"t": "00000002"}
        reasons = [e["reason"] for e in _watch_events(sandbox.repo) if e["event"] == "failover"]
        assert reasons and "no standby hears from it" in str(reasons[0])
    finally:
        for w in watchers:
            w.send_signal(signal.SIGTERM)
        for w in watchers:
            try:
                w.wait(15)
            except subprocess.TimeoutExpired:
                w.kill()
        etcd.stop()


def test_watcher_cut_off_from_primary_does_not_fail_over(make_sandbox, programs) -> None:  # type: ignore[no-untyped-def]
    sandbox = make_sandbox("watch-cut", standbys=1)
    config = load_config(sandbox.config_path)
    proxy_dir = make_sandbox.base / "proxy"
    proxy = UnixProxy(sandbox.socket_dir / f".s.PGSQL.{sandbox.primary.port}", proxy_dir,
                      sandbox.primary.port, programs)
    nodes = [n.model_copy(update={"conninfo": with_params(n.conninfo, host=str(proxy_dir))})
             if n.name == "primary" else n for n in config.nodes]
    watch_cfg = config.watch.model_copy(update={"interval": 0.3, "failures": 3})
    config = config.model_copy(update={"nodes": nodes, "watch": watch_cfg})
    repo = Repository(config.repository.path)
    watcher = Watcher(config, programs, repo)
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    try:
        time.sleep(1.0)
        proxy.cut()  # the watcher loses the primary; the standby keeps streaming from it
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if any(e["event"] == "no-failover" for e in _watch_events(repo)):
                break
            time.sleep(0.1)
        time.sleep(1.0)
    finally:
        watcher.stop()
        thread.join(10)
    events = _watch_events(repo)
    refusals = [e["reason"] for e in events if e["event"] == "no-failover"]
    assert refusals and "still receive WAL from it" in str(refusals[0]) and "cut off" in str(refusals[0])
    assert not [e for e in events if e["event"] == "failover"]
    with session(sandbox.conninfo(sandbox.primary)) as conn:
        assert conn.execute("select pg_is_in_recovery() as r").fetchone() == {"r": False}
    assert list_records(repo, "failover") == []
