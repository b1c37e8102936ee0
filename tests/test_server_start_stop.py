"""Starting and stopping servers without pg_ctl's 100 ms polls, on real servers.

Instance.start waits for the server itself (pg_ctl -W, then postmaster.pid), so each way
a start can fail must end the wait at once with the cause, never at the timeout, and a
pid file left by a crashed server must not pass for the new one: a bad setting, a port
someone else holds, a postmaster SIGKILLed while it recovers, a stale "ready" pid file,
and a standby, which is ready when it says "standby". children.stop_server is woken by
the postmaster's exit (a pidfd) and still escalates to SIGKILL, in bounded time, for a
SIGSTOPped postmaster that cannot act on SIGQUIT. A zombie postmaster is not running.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgdr.errors import SandboxError
from pgdr.pg.children import stop_server, wait_gone
from pgdr.pg.connect import query_one
from pgdr.pg.instance import Instance, free_port
from pgdr.pg.programs import Programs

_SERIAL = itertools.count()
# A generous timeout: each failure below must end the wait long before it.
TIMEOUT = 120
FAST = TIMEOUT / 4


@pytest.fixture(scope="module")
def template(base_dir: Path, programs: Programs) -> Path:
    inst = Instance("template", base_dir / "start-template" / "data", free_port(),
                    base_dir / "start-template", programs)
    inst.initdb()
    return inst.data_dir


@pytest.fixture
def instance(template: Path, base_dir: Path, programs: Programs) -> Iterator[Instance]:
    root = base_dir / f"ss-{next(_SERIAL)}"  # short: the socket path must fit in 107 bytes
    root.mkdir()
    programs.run_as.chown(root)
    data = root / "data"
    programs.run("cp", ["-a", str(template), str(data)])
    inst = Instance("s", data, free_port(), root, programs, log_file=root / "server.log")
    inst.configure(inst.local_settings())
    yield inst
    if inst.pid():
        os.kill(inst.pid() or 0, signal.SIGKILL)
    _kill_matching(str(root))


def _kill_matching(token: str) -> None:
    """Whatever a test left running in its folder: a postmaster's orphaned children and the
    restore_command's shell and sleep (their working directory is the data directory)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            here = os.readlink(proc / "cwd").startswith(token)
            if here or token in (proc / "cmdline").read_bytes().decode(errors="replace"):
                os.kill(int(proc.name), signal.SIGKILL)
        except OSError:
            continue


def _answers(inst: Instance) -> bool:
    row = query_one(inst.conninfo(), "select pg_is_in_recovery() as r", timeout=5)
    return bool(row is not None)


def test_start_returns_when_the_server_answers(instance: Instance) -> None:
    instance.start(timeout=TIMEOUT)
    assert _answers(instance)  # at once: no retry
    instance.stop()
    instance.start(timeout=TIMEOUT)
    assert _answers(instance)


def test_a_bad_setting_fails_at_once_with_the_cause(instance: Instance) -> None:
    instance.configure({"shared_buffers": "lots"})
    t0 = time.monotonic()
    with pytest.raises(SandboxError) as err:
        instance.start(timeout=TIMEOUT)
    assert time.monotonic() - t0 < FAST, "waited for the timeout instead of the log's FATAL"
    assert "shared_buffers" in err.value.message or "configuration file" in err.value.message, err.value.message
    assert not instance.is_running()


def test_a_port_in_use_fails_at_once_with_the_cause(instance: Instance) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", instance.port))
        taken.listen()
        t0 = time.monotonic()
        with pytest.raises(SandboxError) as err:
            instance.start(timeout=TIMEOUT)
        assert time.monotonic() - t0 < FAST, "waited for the timeout instead of the log's FATAL"
    assert "could not" in err.value.message, err.value.message
    assert not instance.is_running()


def test_a_postmaster_killed_while_it_recovers_ends_the_wait(instance: Instance) -> None:
    # recovery that waits on its restore_command: the server stays "starting"
    root = instance.data_dir.parent
    instance.configure({"restore_command": f"sleep 60 # {root}", "hot_standby": "on"})
    (instance.data_dir / "recovery.signal").touch()
    instance.programs.run_as.chown(instance.data_dir / "recovery.signal")
    killed: list[int] = []

    def kill_when_starting() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not killed:
            try:
                lines = (instance.data_dir / "postmaster.pid").read_text().splitlines()
            except OSError:
                lines = []
            if len(lines) >= 8 and lines[7].strip() == "starting":
                time.sleep(0.3)  # well into the wait
                os.kill(int(lines[0]), signal.SIGKILL)
                killed.append(int(lines[0]))
            time.sleep(0.01)

    killer = threading.Thread(target=kill_when_starting)
    killer.start()
    t0 = time.monotonic()
    with pytest.raises(SandboxError) as err:
        instance.start(timeout=TIMEOUT)
    killer.join()
    assert killed, "the server never said 'starting'"
    assert time.monotonic() - t0 < FAST, "waited for the timeout after the postmaster died"
    assert "exited while starting" in err.value.message, err.value.message


def test_a_stale_ready_pid_file_is_not_the_new_server(instance: Instance) -> None:
    # What a crashed server leaves: its postmaster.pid, saying "ready", naming a dead pid.
    # (A real SIGKILL is not used: where nothing reaps the orphaned postmaster, as in
    # this container, its zombie keeps the lock and PostgreSQL itself refuses to start.)
    instance.start(timeout=TIMEOUT)
    lines = (instance.data_dir / "postmaster.pid").read_text().splitlines()
    instance.stop()
    dead = _reaped_pid()
    lines[0], lines[2] = str(dead), str(int(time.time()) - 60)
    assert lines[7].strip() == "ready"
    pidfile = instance.data_dir / "postmaster.pid"
    pidfile.write_text("\n".join(lines) + "\n")
    instance.programs.run_as.chown(pidfile)
    instance.start(timeout=TIMEOUT)
    assert instance.pid() not in (None, dead), "start() took the stale pid file for the new server"
    assert _answers(instance)


def _reaped_pid() -> int:
    """The pid of a process that has exited and been reaped: nothing runs under it."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_standby_is_started_when_it_says_standby(instance: Instance) -> None:
    # a standby of nothing: it never leaves recovery, and is ready for reads
    instance.configure({"primary_conninfo": "host=/nonexistent", "hot_standby": "on"})
    (instance.data_dir / "standby.signal").touch()
    instance.programs.run_as.chown(instance.data_dir / "standby.signal")
    instance.start(timeout=TIMEOUT)
    row = query_one(instance.conninfo(), "select pg_is_in_recovery() as r", timeout=5)
    assert row is not None and row["r"] is True


def test_stop_server_returns_when_the_postmaster_exits(instance: Instance) -> None:
    instance.start(timeout=TIMEOUT)
    pid = instance.pid()
    assert pid is not None
    assert stop_server(instance.data_dir) is True
    assert not instance.is_running()
    assert stop_server(instance.data_dir) is False  # nothing left to stop


def test_stop_server_kills_a_sigstopped_postmaster_within_its_bound(instance: Instance) -> None:
    instance.start(timeout=TIMEOUT)
    pid = instance.pid()
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # SIGQUIT stays pending: only SIGKILL can end it
    t0 = time.monotonic()
    assert stop_server(instance.data_dir, grace=1.0) is True
    elapsed = time.monotonic() - t0
    assert not instance.is_running()
    assert 1.0 <= elapsed < 1.0 + 5.0 + 1.0, elapsed  # the grace, then SIGKILL's bounded wait


def test_wait_gone_is_bounded_and_woken_by_the_exit() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    try:
        t0 = time.monotonic()
        assert wait_gone(proc.pid, None, 0.3) is False  # still running: gives up at the bound
        assert time.monotonic() - t0 >= 0.3
        proc.kill()
        assert wait_gone(proc.pid, None, 5.0) is True  # a zombie of ours counts as gone
    finally:
        proc.kill()
        proc.wait()


def test_a_zombie_or_vanished_postmaster_is_not_running(tmp_path: Path) -> None:
    """Instance.pid reads postmaster.pid: a live process is running; a SIGKILLed postmaster
    that nobody reaped yet (a zombie, as in a container whose init never reaps) is not, and
    neither is a pid that is gone."""
    instance = Instance("zombie", tmp_path / "data", free_port(), tmp_path)
    instance.data_dir.mkdir()
    pidfile = instance.data_dir / "postmaster.pid"
    live = subprocess.Popen(["sleep", "30"])
    try:
        pidfile.write_text(f"{live.pid}\n{instance.data_dir}\n")
        assert instance.pid() == live.pid and instance.is_running()
        live.kill()
        deadline = time.monotonic() + 10
        while Path(f"/proc/{live.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline, "the killed sleep did not become a zombie within 10 s"
            time.sleep(0.01)
        assert instance.pid() is None and not instance.is_running()  # a zombie of ours
    finally:
        live.kill()
        live.wait()
    assert instance.pid() is None  # reaped: the pid is gone
