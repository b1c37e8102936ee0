"""Redis beside PostgreSQL (issue #19), against real redis-servers started by the tests:
backup under writes, verify against damage, restore, refusals, and status."""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard

from pgdr.pg.instance import free_port
from tests.conftest import run_cli
from tests.redis_servers import RedisServer, stop_restored, write_config


@pytest.fixture(scope="module")
def rbase(base_dir: Path) -> Path:
    path = base_dir / "redis"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="module")
def server(rbase: Path) -> Iterator[RedisServer]:
    srv = RedisServer(rbase / "srv")
    c0, c2 = srv.client(0), srv.client(2)
    pipe = c0.pipeline()
    for i in range(500):
        pipe.set(f"s:{i}", "x" * 50)
    pipe.rpush("list", *range(2000))
    pipe.hset("hash", mapping={f"f{i}": i for i in range(600)})
    pipe.zadd("zset", {f"m{i}": i for i in range(300)})
    pipe.sadd("set", *range(700))
    for i in range(20):
        pipe.xadd("stream", {"n": i})
    pipe.execute()
    # a consumer group with pending entries: the RDB's stream PEL and consumers
    c0.xgroup_create("stream", "workers", id="0")
    c0.xreadgroup("workers", "w1", {"stream": ">"}, count=5)
    c2.set("other", "db")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def setup(rbase: Path, server: RedisServer) -> Path:
    repo = rbase / "repo"
    return write_config(rbase / "pgdr.toml", repo, f"""
[[redis]]
name = "local"
url = "{server.url()}"
data_dir = "{server.dir}"

[[redis]]
name = "remote"
url = "{server.url()}"
""", extra=f'[verify]\nscratch_dir = "{rbase / "scratch"}"\n')


def _repo(config: Path) -> Path:
    return config.parent / "repo"


def _snapshots(config: Path, name: str) -> list[Path]:
    root = _repo(config) / "redis" / name
    return sorted(p for p in root.iterdir() if (p / "snapshot.json").exists()) if root.is_dir() else []


class Writer(threading.Thread):
    """Sets PREFIX:0, PREFIX:1, … in db 0, one at a time; `acked` is how many the server confirmed."""

    def __init__(self, srv: RedisServer, prefix: str) -> None:
        super().__init__(daemon=True)
        self.prefix = prefix
        self.client = srv.client(0)
        self.acked = 0
        self.stop = threading.Event()
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.client.set(f"{self.prefix}:{self.acked}", self.acked)
                self.acked += 1
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


@pytest.mark.parametrize("name", ["local", "remote"])
def test_backup_under_writes_restores_a_consistent_prefix(setup: Path, server: RedisServer, rbase: Path,
                                                          name: str) -> None:
    writer = Writer(server, f"w{name}")
    writer.start()
    while writer.acked < 200 and writer.is_alive():
        threading.Event().wait(0.01)
    before = writer.acked
    done = run_cli("backup", "--redis", name, "--json", config=setup)
    after = writer.acked
    writer.stop.set()
    writer.join(10)
    assert writer.error is None
    assert done.returncode == 0, done.stderr
    meta = json.loads(done.stdout)[0]
    assert after > before  # the writes really ran through the backup

    verified = run_cli("verify", "--redis", name, "latest", config=setup)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    record = json.loads((_repo(setup) / "redis" / name / meta["id"] / "verify.json").read_text())
    assert record["passed"] is True

    target = rbase / f"restored-{name}"
    port = free_port()
    restored = run_cli("restore", "--redis", name, "--target-dir", str(target), "--port", str(port), "--json",
                       config=setup)
    try:
        assert restored.returncode == 0, restored.stderr
        import redis

        c0 = redis.Redis(port=port, db=0)
        # independent count: the writer's keys form one unbroken prefix w:0..w:m-1, with
        # everything acknowledged before the backup began and nothing after it ended
        ws = sorted(int(k.decode().split(":")[1]) for k in c0.scan_iter(f"w{name}:*", count=1000))
        assert ws == list(range(len(ws)))
        assert before <= len(ws) <= after
        assert c0.dbsize() == meta["databases"]["0"]["keys"]
        assert redis.Redis(port=port, db=2).get("other") == b"db"
        assert c0.llen("list") == 2000 and c0.xlen("stream") == 20 and c0.hlen("hash") == 600
        assert {db: c["keys"] for db, c in meta["databases"].items()} == {"0": c0.dbsize(), "2": 1}
    finally:
        stop_restored(target)


def _stored(config: Path, name: str) -> tuple[Path, dict[str, Any]]:
    latest = _snapshots(config, name)[-1]
    return latest / "dump.rdb.zst", json.loads((latest / "snapshot.json").read_text())


def test_verify_catches_a_flipped_byte_a_truncation_and_a_bad_rdb_behind_good_checksums(
        setup: Path, server: RedisServer) -> None:
    import time

    # a key whose TTL passes between backup and verify: redis drops it when loading,
    # and verify must not call that a loss
    server.client(0).set("short-lived", 1, px=1500)
    assert run_cli("backup", "--redis", "local", config=setup).returncode == 0
    deadline = time.monotonic() + 20
    while server.client(0).exists("short-lived") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not server.client(0).exists("short-lived")
    assert run_cli("verify", "--redis", "local", config=setup).returncode == 0
    data, meta = _stored(setup, "local")
    good = data.read_bytes()
    try:
        flipped = bytearray(good)
        flipped[len(flipped) // 2] ^= 0x01
        data.write_bytes(bytes(flipped))
        res = run_cli("verify", "--redis", "local", config=setup)
        assert res.returncode == 1
        assert "checksum" in res.stderr and "does not match" in res.stderr and "Traceback" not in res.stderr
        # restore refuses the damaged snapshot before starting anything
        target, port = setup.parent / "from-damaged", free_port()
        res = run_cli("restore", "--redis", "local", "--target-dir", str(target), "--port", str(port),
                      config=setup)
        assert res.returncode == 1 and "does not match" in res.stderr
        assert not target.exists()

        data.write_bytes(good[: len(good) // 2])
        res = run_cli("verify", "--redis", "local", meta["id"], config=setup)
        assert res.returncode == 1 and "checksum" in res.stderr
        record = json.loads((data.parent / "verify.json").read_text())
        assert record["passed"] is False

        # Damage that happened before the checksums were taken (the checksums are then
        # "right"): redis-check-rdb's own CRC64 must still catch it.
        raw = bytearray(zstandard.ZstdDecompressor().decompressobj().decompress(good))
        raw[len(raw) // 2] ^= 0x01
        import hashlib

        bad = zstandard.ZstdCompressor().compress(bytes(raw))
        data.write_bytes(bad)
        forged = {**meta, "rdb_sha256": hashlib.sha256(raw).hexdigest(),
                  "stored": {**meta["stored"], "sha256": hashlib.sha256(bad).hexdigest(), "bytes": len(bad)}}
        (data.parent / "snapshot.json").write_text(json.dumps(forged))
        res = run_cli("verify", "--redis", "local", config=setup)
        assert res.returncode == 1, res.stdout
        assert "redis-check-rdb" in res.stderr
    finally:
        data.write_bytes(good)
        (data.parent / "snapshot.json").write_text(json.dumps(meta))
    assert run_cli("verify", "--redis", "local", config=setup).returncode == 0


def test_restore_never_starts_over_a_running_redis(setup: Path, server: RedisServer, rbase: Path) -> None:
    if not _snapshots(setup, "local"):
        assert run_cli("backup", "--redis", "local", config=setup).returncode == 0
    target = rbase / "never-created"
    res = run_cli("restore", "--redis", "local", "--target-dir", str(target), "--port", str(server.port),
                  config=setup)
    assert res.returncode == 2 and "already answers" in res.stderr
    assert not target.exists()
    # the live server's own folder, on a free port: refused, its files untouched
    before = {p.name: p.stat().st_mtime_ns for p in server.dir.iterdir()}
    res = run_cli("restore", "--redis", "local", "--target-dir", str(server.dir), "--port", str(free_port()),
                  config=setup)
    assert res.returncode == 2 and "is running in" in res.stderr
    assert {p.name: p.stat().st_mtime_ns for p in server.dir.iterdir()} == before
    assert len(res.stderr.strip().splitlines()) == 1


def test_status_fails_when_the_newest_snapshot_is_older_than_its_limit(setup: Path, server: RedisServer) -> None:
    assert run_cli("backup", "--redis", "remote", config=setup).returncode == 0
    ok = run_cli("status", "--redis", "remote", "--json", config=setup)
    assert ok.returncode == 0, ok.stdout
    folder = _snapshots(setup, "remote")[-1]
    meta = json.loads((folder / "snapshot.json").read_text())
    from datetime import UTC, datetime, timedelta

    old = dict(meta, finished_at=(datetime.now(UTC) - timedelta(hours=3)).isoformat())
    for other in _snapshots(setup, "remote"):
        m = json.loads((other / "snapshot.json").read_text())
        (other / "snapshot.json").write_text(json.dumps(dict(m, finished_at=old["finished_at"])))
    res = run_cli("status", "--redis", "remote", "--json", config=setup)
    assert res.returncode == 1
    report = json.loads(res.stdout)
    snap = next(c for c in report["checks"] if c["name"] == "redis remote snapshot")
    assert snap["status"] == "fail" and "limit 2.0h" in snap["summary"]
    assert report["redis"][0]["reachable"] is True and report["redis"][0]["role"] == "master"
    # the full status carries the same check
    full = json.loads(run_cli("status", "--json", config=setup).stdout)
    assert any(c["name"] == "redis remote snapshot" and c["status"] == "fail" for c in full["checks"])
    # and /metrics says how old
    from pgdr.config import load_config
    from pgdr.rdb.metrics import collect
    from pgdr.repo.layout import Repository

    config = load_config(setup)
    metrics = {m.name: m for m in collect(config, Repository(config.repository.path))}
    ages = {s.labels["redis"]: s.value for s in metrics["pgdr_redis_newest_snapshot_age_seconds"].samples}
    assert ages["remote"] > 3 * 3600 - 60
    assert {s.labels["redis"]: s.value for s in metrics["pgdr_redis_up"].samples} == {"local": 1.0, "remote": 1.0}
    # diagnose reports it too, as a critical finding
    diag = json.loads(run_cli("diagnose", "--json", config=setup).stdout)
    assert any(f["concern"] == "redis" and f["node"] == "remote" and f["severity"] == "critical"
               and "snapshot" in f["summary"] for f in diag["findings"])
    assert run_cli("backup", "--redis", "remote", config=setup).returncode == 0
    assert run_cli("status", "--redis", "remote", config=setup).returncode == 0


def test_a_redis_that_cannot_bgsave_gives_one_line_and_exit_1(rbase: Path) -> None:
    srv = RedisServer(rbase / "nosave", extra=["--stop-writes-on-bgsave-error", "yes"])
    try:
        srv.client().set("k", "v")
        os.chmod(srv.dir, 0o555)  # the server (postgres user) can no longer write its RDB there
        config = write_config(rbase / "nosave.toml", rbase / "nosave-repo", f"""
[[redis]]
name = "nosave"
url = "{srv.url()}"
data_dir = "{srv.dir}"
""")
        res = run_cli("backup", "--redis", "nosave", config=config)
        assert res.returncode == 1
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "BGSAVE failed" in lines[0] and "rdb_last_bgsave_status:err" in lines[0]
        assert not (rbase / "nosave-repo" / "redis" / "nosave").exists() or \
            not any((rbase / "nosave-repo" / "redis" / "nosave").iterdir())
        status = run_cli("status", "--redis", "nosave", "--json", config=config)
        assert status.returncode == 1
        names = {c["name"]: c["status"] for c in json.loads(status.stdout)["checks"]}
        assert names["redis nosave bgsave"] == "fail"
    finally:
        os.chmod(srv.dir, 0o755)
        srv.stop()


def test_a_password_never_reaches_output_argv_or_the_repository(rbase: Path) -> None:
    secret = "Sup3r-s3cret-pw"
    srv = RedisServer(rbase / "pw", password=secret)
    try:
        srv.client().set("k", "v")
        # a redis-cli first on PATH that records its argv and whether REDISCLI_AUTH was set
        bindir = rbase / "pw-bin"
        bindir.mkdir(exist_ok=True)
        spy = bindir / "redis-cli"
        seen = rbase / "pw-argv.txt"
        spy.write_text(f'#!/bin/sh\necho "$@" >> {seen}\n'
                       f'[ -n "$REDISCLI_AUTH" ] && echo AUTH-SET >> {seen}\nexec /usr/bin/redis-cli "$@"\n')
        spy.chmod(0o755)
        config = write_config(rbase / "pw.toml", rbase / "pw-repo", f"""
[[redis]]
name = "pwlocal"
url = "${{REDIS_URL}}"
data_dir = "{srv.dir}"

[[redis]]
name = "pwremote"
url = "${{REDIS_URL}}"
""", extra=f'[verify]\nscratch_dir = "{rbase / "pw-scratch"}"\n')
        env = {**os.environ, "REDIS_URL": srv.url(), "PATH": f"{bindir}:{os.environ['PATH']}"}
        outputs = []
        for args in (["backup", "--redis"], ["backup", "--redis", "pwremote", "--json"],
                     ["verify", "--redis", "pwremote"], ["status", "--redis", "all", "--json"],
                     ["status", "--json"], ["diagnose", "--json"],
                     ["restore", "--redis", "pwlocal", "--target-dir", str(rbase / "pw-restored"),
                      "--port", str(free_port())]):
            res = run_cli(*args, config=config, env=env)
            outputs.append(res.stdout + res.stderr)
        stop_restored(rbase / "pw-restored")
        assert all(secret not in text for text in outputs)
        assert "redis://127.0.0.1:" in outputs[1]  # the source is named, without the password
        files = [p for root in (rbase / "pw-repo", rbase / "pw-restored") for p in root.rglob("*") if p.is_file()]
        assert files and not [p for p in files if secret.encode() in p.read_bytes()]
        argv = seen.read_text()
        assert "--rdb" in argv and "AUTH-SET" in argv and secret not in argv
        # a wrong password: one line, exit 1, and neither password shown
        bad_env = {**env, "REDIS_URL": srv.url(password="wrong-pw-123")}
        res = run_cli("backup", "--redis", "pwremote", config=config, env=bad_env)
        assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1
        assert "wrong-pw-123" not in res.stderr + res.stdout and secret not in res.stderr
    finally:
        srv.stop()


def test_retention_keeps_count_or_age_and_the_newest_verified(setup: Path, rbase: Path, server: RedisServer) -> None:
    from datetime import UTC, datetime, timedelta

    config = write_config(rbase / "ret.toml", rbase / "ret-repo", f"""
[[redis]]
name = "ret"
url = "{server.url()}"
data_dir = "{server.dir}"
keep_last = 2
keep_within = "1h"
""", extra=f'[verify]\nscratch_dir = "{rbase / "scratch"}"\n')
    for _ in range(4):
        assert run_cli("backup", "--redis", "ret", config=config).returncode == 0
    folders = sorted((rbase / "ret-repo" / "redis" / "ret").iterdir())
    assert len(folders) == 4
    for age_h, folder in zip((5, 4, 3, 2), folders, strict=True):
        meta = json.loads((folder / "snapshot.json").read_text())
        meta["finished_at"] = (datetime.now(UTC) - timedelta(hours=age_h)).isoformat()
        (folder / "snapshot.json").write_text(json.dumps(meta))
    assert run_cli("verify", "--redis", "ret", folders[1].name, config=config).returncode == 0
    # a snapshot killed before it was published: data without metadata
    debris = folders[0].parent / "20200101T000000000Z"
    debris.mkdir()
    (debris / "dump.rdb.zst").write_bytes(b"partial")
    assert run_cli("backup", "--redis", "ret", config=config).returncode == 0
    left = sorted(p.name for p in (rbase / "ret-repo" / "redis" / "ret").iterdir())
    listed = json.loads(run_cli("list", "--redis", "ret", "--json", config=config).stdout)
    assert [r["id"] for r in listed] == left
    assert [r["verified"] for r in listed] == ["verified", "never", "never"]
    # newest two (one of them new, under 1h) + the newest verified; 5h and 3h old ones gone; debris gone
    assert folders[1].name in left and folders[3].name in left
    assert folders[0].name not in left and folders[2].name not in left and debris.name not in left
    assert len(left) == 3


def test_a_full_repository_disk_publishes_nothing(rbase: Path, server: RedisServer) -> None:
    if os.geteuid() != 0:
        pytest.fail("mounting a tmpfs needs root")
    import subprocess

    mount = rbase / "small"
    mount.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", str(mount)], check=True)
    try:
        c = server.client(5)
        c.set("incompressible", os.urandom(2 * 1024 * 1024))
        config = write_config(rbase / "small.toml", mount / "repo", f"""
[[redis]]
name = "full"
url = "{server.url()}"
data_dir = "{server.dir}"
""", extra=f'[verify]\nscratch_dir = "{rbase / "scratch"}"\n')
        res = run_cli("backup", "--redis", "full", config=config)
        assert res.returncode == 1 and "No space left on device" in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
        root = mount / "repo" / "redis" / "full"
        assert not root.exists() or not [p for p in root.rglob("*") if p.is_file()]
    finally:
        server.client(5).delete("incompressible")
        subprocess.run(["umount", str(mount)], check=True)
        shutil.rmtree(mount, ignore_errors=True)


def test_bad_redis_config_is_one_line_and_exit_2(rbase: Path, setup: Path) -> None:
    config = write_config(rbase / "bad.toml", rbase / "bad-repo", """
[[redis]]
name = "x"
url = "http://127.0.0.1:6379/0"
""")
    res = run_cli("backup", "--redis", "x", config=config)
    assert res.returncode == 2 and "redis.0.url" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    config.write_text(config.read_text().replace("http://127.0.0.1:6379/0", "${NOT_SET_ANYWHERE_19}"))
    res = run_cli("backup", "--redis", "x", config=config, env={k: v for k, v in os.environ.items()
                                                              if k != "NOT_SET_ANYWHERE_19"})
    assert res.returncode == 2 and "NOT_SET_ANYWHERE_19" in res.stderr
    res = run_cli("backup", "--redis", "nope", config=setup)
    assert res.returncode == 2 and "no [[redis]] named 'nope'" in res.stderr


def _pgdr(config: Path, *args: str) -> Any:
    import subprocess
    import sys

    env = {**os.environ, "PGDR_CONFIG": str(config)}
    return subprocess.Popen([sys.executable, "-m", "pgdr", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def _kill_when(proc: Any, seen: Any, what: str) -> bool:
    """SIGKILL proc the moment seen() is true; False when it finished first."""
    import signal

    while proc.poll() is None:
        if seen():
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            return True
    return False


def _cwd_users(folder: Path) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if Path(os.readlink(p / "cwd")) == folder:
                    out.append(int(p.name))
            except OSError:
                continue
    return out


def _describe(pid: int) -> str:
    """A survivor's command line, state and parent (one CI run under load saw a process
    left in a killed verify's folder 20 s after the kill, and could not say which)."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        # which signals it has pending/blocked/caught and where it sleeps in the kernel: a
        # process in D state (wchan) delays its SIGKILL; a blocked or pending SIGKILL/USR2
        # (bits 9 and 12) names a guard that never fired
        status = {k: v.strip() for k, _, v in (ln.partition(":") for ln in
                  Path(f"/proc/{pid}/status").read_text().splitlines())}
        sig = ", ".join(f"{k} {status.get(k)}" for k in ("SigPnd", "ShdPnd", "SigBlk", "SigCgt"))
        wchan = Path(f"/proc/{pid}/wchan").read_text().strip() or "-"
        try:
            parent = Path(f"/proc/{fields[1]}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            parent = "gone"
        return (f"{cmd.strip()} (state {fields[0]}, parent {fields[1]} [{parent.strip()}], group {fields[2]}, "
                f"session {fields[3]}, wchan {wchan}, {sig})")
    except OSError:
        return "gone"


def test_sigkill_during_backup_and_verify_publishes_nothing_and_leaves_no_server(rbase: Path) -> None:
    srv = RedisServer(rbase / "kill")
    try:
        pipe = srv.client(7).pipeline()
        for i in range(40):
            pipe.set(f"big:{i}", os.urandom(1024 * 1024))  # incompressible: storing takes a while
        pipe.execute()
        scratch = rbase / "kill-scratch"
        config = write_config(rbase / "kill.toml", rbase / "kill-repo", f"""
[[redis]]
name = "k"
url = "{srv.url()}"
data_dir = "{srv.dir}"
""", extra=f'[verify]\nscratch_dir = "{scratch}"\n')
        root = rbase / "kill-repo" / "redis" / "k"
        moments = {
            "copying the RDB": lambda: any(scratch.glob("redis/k-*.rdb")),
            "storing the object": lambda: any(root.glob("*/.dump.rdb.zst.tmp*")),
        }
        hit = []
        for what, seen in moments.items():
            for _attempt in range(5):
                if _kill_when(_pgdr(config, "backup", "--redis", "k"), seen, what):
                    hit.append(what)
                    break
                for folder in list(root.iterdir()) if root.exists() else []:  # finished first: again
                    shutil.rmtree(folder)
            # killed: nothing is published
            assert not list(root.glob("*/snapshot.json"))
        assert hit == list(moments), f"caught a backup only while {hit}"
        res = run_cli("backup", "--redis", "k", "--json", config=config)
        assert res.returncode == 0, res.stderr
        new_id = json.loads(res.stdout)[0]["id"]
        assert sorted(p.name for p in root.iterdir()) == [new_id]  # debris removed
        assert not list(scratch.glob("redis/k-*.rdb"))
        # SIGKILL verify while its scratch redis-server runs: the server dies with pgdr
        folders: list[Path] = []

        def scratch_up() -> bool:
            folders[:] = [f for f in scratch.glob("redis/verify-k-*") if (f / "redis.log").exists()]
            return bool(folders)

        assert _kill_when(_pgdr(config, "verify", "--redis", "k"), scratch_up, "scratch server running")
        import time

        deadline = time.monotonic() + 20
        while _cwd_users(folders[0]) and time.monotonic() < deadline:
            time.sleep(0.05)
        survivors = {pid: _describe(pid) for pid in _cwd_users(folders[0])}
        assert survivors == {}, "still running in the killed verify's folder"
        assert not (root / new_id / "verify.json").exists()  # no verdict from a killed run
        res = run_cli("verify", "--redis", "k", config=config)
        assert res.returncode == 0, res.stdout + res.stderr
        assert not folders[0].exists()
    finally:
        srv.stop()


def test_schedule_redis_backup_job_takes_a_snapshot_and_is_due_after_the_newest(rbase: Path,
                                                                                 server: RedisServer) -> None:
    import time

    from pgdr.config import ScheduleConfig, load_config
    from pgdr.repo.layout import Repository
    from pgdr.server.scheduler import Scheduler

    path = write_config(rbase / "sched.toml", rbase / "sched-repo", f"""
[[redis]]
name = "sched"
url = "{server.url()}"
data_dir = "{server.dir}"

[[schedule]]
job = "redis-backup"
every = "1h"
redis = "sched"
""", extra=f'[verify]\nscratch_dir = "{rbase / "scratch"}"\n')
    config = load_config(path)
    sched = Scheduler(config, None, Repository(config.repository.path))  # type: ignore[arg-type]
    job: ScheduleConfig = config.schedule[0]
    assert sched._first_due(job) <= time.time()  # no snapshot yet: due now
    snapshot_id = sched._run_job(job)
    assert (rbase / "sched-repo" / "redis" / "sched" / snapshot_id / "snapshot.json").is_file()
    assert sched._first_due(job) > time.time() + 3500  # due an hour after the newest
    # a schedule naming an unknown Redis is a config error (one line, exit 2)
    path.write_text(path.read_text().replace('redis = "sched"', 'redis = "nope"'))
    res = run_cli("status", "--redis", "all", config=path)
    assert res.returncode == 2 and "nope" in res.stderr


def test_status_fails_when_a_replica_loses_its_master(rbase: Path) -> None:
    import time

    master = RedisServer(rbase / "master")
    replica = RedisServer(rbase / "replica", extra=["--replicaof", "127.0.0.1", str(master.port)])
    try:
        master.client().set("k", "v")
        deadline = time.monotonic() + 20
        while replica.client().get("k") != b"v" and time.monotonic() < deadline:
            time.sleep(0.05)
        config = write_config(rbase / "repl.toml", rbase / "repl-repo", f"""
[[redis]]
name = "replica"
url = "{replica.url()}"
""")
        assert run_cli("backup", "--redis", "replica", config=config).returncode == 0
        up = run_cli("status", "--redis", "replica", "--json", config=config)
        assert up.returncode == 0, up.stdout
        row = json.loads(up.stdout)["redis"][0]
        assert row["role"] == "slave" and row["master_link_status"] == "up"
        master.stop()
        deadline = time.monotonic() + 20
        while replica.client().info("replication")["master_link_status"] == "up" and time.monotonic() < deadline:
            time.sleep(0.05)
        down = run_cli("status", "--redis", "replica", "--json", config=config)
        assert down.returncode == 1
        check = next(c for c in json.loads(down.stdout)["checks"] if c["name"] == "redis replica")
        assert check["status"] == "fail" and "replication link down" in check["summary"]
    finally:
        replica.stop()
        master.stop()
