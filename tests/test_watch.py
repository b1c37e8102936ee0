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
from pgdr.failover.lease import EtcdClient
from pgdr.failover.watch import Watcher
from pgdr.pg.connect import session
from pgdr.pg.conninfo import with_params
from pgdr.repo.layout import Repository
from pgdr.repo.records import list_records
from tests.conftest import run_cli
from tests.fo_helpers import CommitLog, Etcd, UnixProxy, multi_host, writable_nodes


def _watch_events(repo: Repository) -> list[dict[str, object]]:
    path = repo.root / "records" / "watch.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _start_watchers(sandbox, etcd: Etcd, n: int = 2) -> list[subprocess.Popen[bytes]]:  # type: ignore[no-untyped-def]
    with open(sandbox.config_path, "a") as conf:
        conf.write(f'\n[watch]\ninterval = "0.5s"\nfailures = 3\nlease_ttl = 3\n\n'
                   f'[watch.etcd]\nendpoints = ["{etcd.url}"]\n')
    env = {**os.environ, "PGDR_CONFIG": str(sandbox.config_path)}
    watchers = [subprocess.Popen([sys.executable, "-m", "pgdr", "watch"], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(n)]
    _wait_for(lambda: sum(e["event"] == "lease" for e in _watch_events(sandbox.repo)) >= n, "both watchers decide")
    leases = [e["reason"] for e in _watch_events(sandbox.repo) if e["event"] == "lease"]
    assert sum("acquired" in r for r in leases) == 1 and sum("another watcher" in r for r in leases) == 1
    return watchers


def _stop_watchers(watchers: list[subprocess.Popen[bytes]]) -> None:
    for w in watchers:
        os.kill(w.pid, signal.SIGCONT)
        w.send_signal(signal.SIGTERM)
    for w in watchers:
        try:
            w.wait(15)
        except subprocess.TimeoutExpired:
            w.kill()


def _wait_for(condition, what: str, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}: " + json.dumps(_LAST_EVENTS[-15:], default=str))
        time.sleep(0.01)


_LAST_EVENTS: list[dict[str, object]] = []


def _pid(event: dict[str, object]) -> int:
    return int(str(event["watcher"]).rsplit(":", 1)[1])


def test_leader_sigstopped_mid_failover_promotes_exactly_once(make_sandbox, programs) -> None:  # type: ignore[no-untyped-def]
    sandbox = make_sandbox("watch-stop", standbys=1, sync=True)
    etcd = Etcd(make_sandbox.base)
    watchers: list[subprocess.Popen[bytes]] = []
    CommitLog.create_table(sandbox.conninfo(sandbox.primary))
    writer = CommitLog(multi_host(sandbox), 1).start()
    try:
        watchers = _start_watchers(sandbox, etcd)
        leader = next(_pid(e) for e in _watch_events(sandbox.repo)
                      if e["event"] == "lease" and "acquired" in str(e["reason"]))
        writer.wait_progress()
        sandbox.instance(sandbox.primary, programs).kill9()

        def events() -> list[dict[str, object]]:
            _LAST_EVENTS[:] = _watch_events(sandbox.repo)
            return _LAST_EVENTS

        _wait_for(lambda: any(e["event"] == "failover" and _pid(e) == leader for e in events()),
                  "the leader starts failing over")
        os.kill(leader, signal.SIGSTOP)  # mid-failover: its lease expires while it cannot renew it
        stopped_at = len(events())
        _wait_for(lambda: any(e["event"] == "lease" and "acquired" in str(e["reason"]) and _pid(e) != leader
                              for e in events()[stopped_at:]), "the other watcher takes the lease")
        os.kill(leader, signal.SIGCONT)
        resumed_at = len(events())

        def follows(pid: int) -> bool:
            return any(_pid(e) == pid and (e["event"] == "failover-done" or
                                           (e["event"] == "primary" and "standby1" in str(e["reason"])))
                       for e in events()[stopped_at:])

        _wait_for(lambda: all(follows(w.pid) for w in watchers), "both watchers follow the new primary")
        writer.wait_progress()
        promoted = [r for r in list_records(sandbox.repo, "failover") if r.get("outcome") == "promoted"]
        assert len(promoted) == 1, [r.get("outcome") for r in list_records(sandbox.repo, "failover")]
        assert writable_nodes(sandbox) == ["standby1"]
        assert writer.missing(sandbox.conninfo(next(n for n in sandbox.nodes if n.name == "standby1"))) == set()
        mine = [e for e in events()[resumed_at:] if _pid(e) == leader and e["event"] in ("failover-done",
                                                                                       "failover-refused")]
        # the resumed leader either finished (it had promoted before it was stopped) or did not
        # promote at all (lease gone before pg_promote, or its stale preflight refused)
        assert mine, events()[stopped_at:]
        promoter = _pid({"watcher": promoted[0]["actor"]})
        assert (promoter == leader) == (mine[0]["event"] == "failover-done"), (promoter, leader, mine)
        # watchers on other hosts read the same topology from etcd
        shared = json.loads(EtcdClient([etcd.url]).get("/pgdr/sandbox/topology") or "{}")
        assert shared["primary"] == "standby1" and shared["timeline"] == 2
    finally:
        writer.stop()
        _stop_watchers(watchers)
        etcd.stop()


def test_no_watcher_fails_over_while_etcd_is_down(make_sandbox, programs) -> None:  # type: ignore[no-untyped-def]
    sandbox = make_sandbox("watch-etcd-down", standbys=1)
    etcd = Etcd(make_sandbox.base)
    watchers: list[subprocess.Popen[bytes]] = []
    try:
        watchers = _start_watchers(sandbox, etcd)
        etcd.stop()
        sandbox.instance(sandbox.primary, programs).kill9()

        def refused_by_both() -> bool:
            _LAST_EVENTS[:] = _watch_events(sandbox.repo)
            return {_pid(e) for e in _LAST_EVENTS if e["event"] == "no-failover"
                    and "does not hold the lease" in str(e["reason"])} == {w.pid for w in watchers}

        _wait_for(refused_by_both, "both watchers decline for want of the lease")
        assert [r for r in list_records(sandbox.repo, "failover") if r.get("outcome") == "promoted"] == []
        with session(sandbox.conninfo(next(n for n in sandbox.nodes if n.name == "standby1"))) as conn:
            assert conn.execute("select pg_is_in_recovery() as r").fetchone() == {"r": True}
    finally:
        _stop_watchers(watchers)
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
    # An idle primary: the standby hears it only when its WAL receiver asks, after
    # wal_receiver_timeout/2 of silence — the watcher must wait for that, not assume death.
    with session(sandbox.conninfo(next(n for n in sandbox.nodes if n.name == "standby1"))) as conn:
        conn.execute("alter system set wal_receiver_timeout = '2s'")
        conn.execute("select pg_reload_conf()")
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


def test_watcher_follows_a_switchover_and_never_fails_over(make_sandbox, programs) -> None:  # type: ignore[no-untyped-def]
    sandbox = make_sandbox("watch-switch", standbys=1)
    config = load_config(sandbox.config_path)
    config = config.model_copy(update={"watch": config.watch.model_copy(update={"interval": 0.3, "failures": 3})})
    repo = Repository(config.repository.path)
    watcher = Watcher(config, programs, repo)
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    try:
        _wait_for(lambda: any(e["event"] == "primary" for e in _watch_events(repo)), "the watcher finds the primary")
        switched = run_cli("switchover", "--yes", config=sandbox.config_path)
        assert switched.returncode == 0, switched.stderr
        _wait_for(lambda: any(e["event"] == "primary" and "standby1 is the primary now" in str(e["reason"])
                              for e in _watch_events(repo)), "the watcher follows standby1")
    finally:
        watcher.stop()
        thread.join(10)
    assert [r for r in list_records(repo, "failover") if r.get("outcome") == "promoted"] == []
    assert writable_nodes(sandbox) == ["standby1"]
