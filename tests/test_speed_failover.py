"""Failover fast path: fencing a dead primary is instant — a zombie postmaster counts as dead.

A SIGKILLed postmaster stays a zombie until its parent reaps it (late under load, or never
in a container whose init does not reap). kill(pid, 0) succeeds on a zombie, so treating it
as running made `pg_ctl stop -w` wait for it. Injected for sure here: postmaster.pid names a
zombie of ours. The witness is independent of pgdr's report: [pg] bindir points at a copy of
the programs whose pg_ctl records every call.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

from pgdr.pg.connect import session
from pgdr.pg.programs import default_bindir
from tests.conftest import run_cli


def _recording_bindir(folder: Path, log: Path) -> Path:
    """A bindir of links to the real programs, except pg_ctl, which appends its arguments
    to `log` before running the real one."""
    real = default_bindir(15)
    folder.mkdir()
    for program in real.iterdir():
        if program.name != "pg_ctl":
            (folder / program.name).symlink_to(program)
    wrapper = folder / "pg_ctl"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec {real / "pg_ctl"} "$@"\n')
    wrapper.chmod(0o755)
    log.touch()
    log.chmod(0o666)
    return folder


def _wait_no_server_process(data_dir: Path) -> None:
    """Until the killed postmaster's children have exited (they run in the data directory),
    so the files compared below are the ones the crash left."""
    deadline = time.monotonic() + 30
    while True:
        left = []
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and Path(os.readlink(entry / "cwd")) == data_dir.resolve() \
                        and (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    left.append(entry.name)
            except OSError:
                continue
        if not left:
            return
        assert time.monotonic() < deadline, f"server processes {left} outlived their postmaster by 30s"
        time.sleep(0.05)


def _zombie_owned_by(uid: int) -> subprocess.Popen[bytes]:
    zombie = subprocess.Popen(["true"], user=uid)
    while Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        time.sleep(0.01)
    return zombie


def test_failover_does_not_stop_or_wait_for_a_zombie_primary(make_sandbox, programs) -> None:  # type: ignore[no-untyped-def]
    sandbox = make_sandbox("speedfo", standbys=1)
    calls = sandbox.root / "pg_ctl-calls.log"
    bindir = _recording_bindir(sandbox.root / "bin", calls)
    with open(sandbox.config_path, "a") as conf:
        conf.write(f'\n[pg]\nbindir = "{bindir}"\n')
    old = sandbox.primary.data_dir
    with session(sandbox.conninfo(sandbox.primary)) as conn:
        conn.execute("create table before_kill (n int)")
        conn.execute("insert into before_kill values (1)")
        conn.execute("checkpoint")
    with session(sandbox.conninfo(next(n for n in sandbox.nodes if n.role == "standby"))) as conn:
        deadline = time.monotonic() + 30
        while conn.execute("select to_regclass('before_kill') is null as missing").fetchone() == {"missing": True}:
            assert time.monotonic() < deadline, "the standby never replayed the table"
            time.sleep(0.05)

    sandbox.instance(sandbox.primary, programs).kill9()
    _wait_no_server_process(old)
    # the postmaster is now a zombie for as long as nobody reaps it: make that certain
    zombie = _zombie_owned_by(old.stat().st_uid)
    try:
        pidfile = old / "postmaster.pid"
        lines = pidfile.read_text().splitlines()
        started = Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
        boot = next(float(x.split()[1]) for x in Path("/proc/stat").read_text().splitlines() if x.startswith("btime"))
        start_time = int(boot + int(started) / os.sysconf("SC_CLK_TCK"))
        pidfile.write_text("\n".join([str(zombie.pid), lines[1], str(start_time), *lines[3:]]) + "\n")
        before = {p.relative_to(old): hashlib.sha256(p.read_bytes()).hexdigest()
                  for p in old.rglob("*") if p.is_file() and p.name != "postmaster.pid"}
        calls.write_text("")

        result = run_cli("failover", "--yes", "--json", config=sandbox.config_path)
        assert result.returncode == 0, result.stderr
        record = json.loads(result.stdout)
    finally:
        zombie.wait()

    # no pg_ctl stop on a dead postmaster (pg_ctl would have waited for the zombie)
    assert [c for c in calls.read_text().splitlines() if "stop" in c.split()] == []
    fence_step = next(s for s in record["timeline"] if s["name"] == "fence old primary")
    assert f"pid {zombie.pid} is a zombie" in fence_step["detail"], fence_step
    # fenced, and otherwise untouched: every file as it was, plus standby.signal
    assert (old / "standby.signal").exists()
    after = {p.relative_to(old): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in old.rglob("*") if p.is_file() and p.name not in ("postmaster.pid", "standby.signal")}
    assert after == before
    # the new primary takes writes (checked by a session of our own)
    new = next(n for n in sandbox.nodes if n.name == record["new_primary"])
    with session(sandbox.conninfo(new)) as conn:
        conn.execute("insert into before_kill values (2)")
        assert conn.execute("select count(*) as c from before_kill").fetchone() == {"c": 2}
        assert conn.execute("select pg_is_in_recovery() as r").fetchone() == {"r": False}

