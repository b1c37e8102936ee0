"""The process layer under faults, on real servers: SIGKILLed pgdr commands leave no
program, walsender, server or scratch folder behind; a full repository disk is
survived and reported; a SIGSTOPped peer fails a bounded SQL call naming the peer.

Every outcome is counted independently of pgdr: /proc (cmdline, cwd) for processes,
pg_stat_activity for walsenders, the file system for folders and archived segments.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pgdr.config import load_config
from pgdr.errors import ConnectionFailed
from pgdr.pg.connect import session
from pgdr.sandbox import sandbox as sb
from tests.conftest import run_cli
from tests.procs import processes as _processes
from tests.procs import running_from as _running_from


@pytest.fixture(autouse=True)
def _private_run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every pgdr these tests start records its children in a folder of its own: any other
    pgdr starting on this machine would otherwise reap what a killed one left, and the
    tests could not tell the guards' work from that."""
    run = tmp_path / "pgdr-run"
    run.mkdir(mode=0o700)
    monkeypatch.setenv("PGDR_RUN_DIR", str(run))


def _pgdr(config: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PGDR_CONFIG": str(config)}
    return subprocess.Popen([sys.executable, "-m", "pgdr", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)




def _wait_for(what: str, cond: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def _walsenders(sandbox: sb.Sandbox, app: str) -> int:
    with session(sandbox.conninfo(sandbox.primary, "postgres")) as conn:
        row = conn.execute("select count(*) as n from pg_stat_activity where backend_type = 'walsender' "
                           "and application_name = %s", (app,)).fetchone()
    assert row is not None
    return int(row["n"])


def _fill(sandbox: sb.Sandbox, rows: int, table: str = "fill") -> None:
    """Poorly compressible rows: a slower backup, more WAL to archive and replay."""
    with session(sandbox.conninfo(sandbox.primary), statement_timeout=0) as conn:
        conn.execute(f"create table if not exists {table} (id bigint, payload text)")
        conn.execute(f"insert into {table} select g, md5(g::text) || md5((g * 7)::text) || "
                     f"md5(random()::text) from generate_series(1, %s) g", (rows,))


def test_sigkilled_backup_leaves_no_pg_basebackup_and_no_walsender(make_sandbox) -> None:  # type: ignore[no-untyped-def]
    sandbox = make_sandbox("killbackup", standbys=0)
    _fill(sandbox, 600_000)
    # zstd level 19 on the server: a backup that takes long enough to be killed mid-way
    with open(sandbox.config_path, "a") as fh:
        fh.write('\n[backup]\ncompression = "server-zstd:19"\n')
    backups = sandbox.repo.backups_dir
    repo = str(backups)
    killed_while_running = 0
    for delay in (0.0, 0.3, 1.0, 2.0):
        # by time, not name: two tries within one second reuse the same backup id
        started = time.time() - 0.01
        proc = _pgdr(sandbox.config_path, "backup")
        _wait_for("pg_basebackup to start", lambda p=proc: bool(_processes("pg_basebackup", repo))  # type: ignore[misc]
                  or p.poll() is not None)
        time.sleep(delay)
        running = _processes("pg_basebackup", repo)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if not running or proc.returncode != -signal.SIGKILL:
            continue
        killed_while_running += 1
        # pg_basebackup and its -X stream child die with pgdr (the guard), before any other pgdr runs
        _wait_for("pg_basebackup to end", lambda: not _processes("pg_basebackup", repo), 30)
        partial = {p for p in backups.glob("*.partial") if p.stat().st_mtime >= started}
        assert len(partial) == 1
        assert not (partial.pop() / "backup_manifest").exists(), "pg_basebackup finished instead of dying with pgdr"
        _wait_for("its walsenders to go", lambda: _walsenders(sandbox, "pgdr_backup") == 0, 10)
        listed = run_cli("list", "--json", config=sandbox.config_path)
        assert listed.returncode == 0, listed.stderr
        assert not _processes("pg_basebackup", repo)
    assert killed_while_running >= 3, f"only {killed_while_running} kills hit a running pg_basebackup"

    # A walsender that stops answering (SIGSTOP): pg_basebackup would wait forever; the stall
    # timeout ends it and the error names what stalled.
    with open(sandbox.config_path, "a") as fh:
        fh.write('\n[pg]\nstall_timeout = "3s"\n')
    before = {b.name for b in backups.iterdir()}
    stopped: list[int] = []
    # One session opened beforehand: a stopped backend may hold locks new connections need.
    with session(sandbox.conninfo(sandbox.primary, "postgres")) as watcher:
        proc = subprocess.Popen([sys.executable, "-m", "pgdr", "backup"], env={**os.environ, "PGDR_CONFIG": str(
            sandbox.config_path)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            def streaming() -> bool:  # past connection start-up and backup start: data flows
                sizes = [f.stat().st_size for p in backups.glob("*.partial") if p.name not in before
                         for f in p.iterdir()]
                return sum(sizes) > 1 << 20 or proc.poll() is not None
            _wait_for("the backup's data to flow", streaming, 60)
            pids = [r["pid"] for r in watcher.execute(
                "select pid from pg_stat_activity where backend_type = 'walsender' "
                "and application_name = 'pgdr_backup'")]
            for pid in pids:
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
            assert stopped, "no walsender to stop"
            _out, err = proc.communicate(timeout=120)
        finally:
            for pid in stopped:
                os.kill(pid, signal.SIGCONT)
    assert proc.returncode == 1, err
    assert "pg_basebackup made no progress for 3s" in err and "primary" in err
    assert not _processes("pg_basebackup", repo)
    assert {b.name for b in backups.iterdir() if not b.name.endswith(".partial")} == \
        {n for n in before if not n.endswith(".partial")}


def test_sigkilled_restore_leaves_no_server_and_says_incomplete(make_sandbox, base_dir: Path) -> None:  # type: ignore[no-untyped-def]
    sandbox = make_sandbox("killrestore", standbys=0)
    assert run_cli("backup", config=sandbox.config_path).returncode == 0
    _fill(sandbox, 1_500_000)  # ~250 MB of WAL to replay: recovery takes seconds
    with session(sandbox.conninfo(sandbox.primary, "postgres")) as conn:
        row = conn.execute("select pg_walfile_name(pg_switch_wal()) as w").fetchone()
    assert row is not None
    last_full = sandbox.repo.wal_dir / f"{row['w']}.zst"
    _wait_for("the archive to catch up", last_full.exists, 120)
    interrupted = 0
    for i, delay in enumerate((0.0, 0.3, 1.0)):
        target = base_dir / f"killrestore-target-{i}"
        proc = _pgdr(sandbox.config_path, "restore", "--latest", "--target-dir", str(target))
        _wait_for("the recovering server", lambda t=target, p=proc: (t / "postmaster.pid").exists()  # type: ignore[misc]
                  or p.poll() is not None, 180)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if not (target / "PGDR_RESTORE_INCOMPLETE").exists():  # it finished first: stop the handed-over server
            sandbox_programs().run("pg_ctl", ["-D", str(target), "-m", "immediate", "-w", "stop"], ok_codes=(0, 1))
            continue
        interrupted += 1
        # the watchdog stops the server as pgdr dies, before any other pgdr runs
        _wait_for("the recovering server to stop with pgdr", lambda t=target: not _running_from(t), 30)  # type: ignore[misc]
        status = run_cli("status", "--json", config=sandbox.config_path)  # the next pgdr start
        assert not _running_from(target), "a server still runs from the killed restore's folder"
        checks = json.loads(status.stdout)["checks"]
        assert any(c["name"] == "restore" and str(target) in c["summary"] and "incomplete" in c["summary"]
                   for c in checks), checks
        again = run_cli("restore", "--latest", "--target-dir", str(target), config=sandbox.config_path)
        assert again.returncode == 2 and "interrupted restore" in again.stderr
    assert interrupted >= 2, f"only {interrupted} kills hit a restore in recovery"

    # SIGTERM (systemd, a CI timeout) unwinds like Ctrl-C: server stopped, folder removed, record kept
    target = base_dir / "killrestore-target-term"
    env = {**os.environ, "PGDR_CONFIG": str(sandbox.config_path)}
    proc = subprocess.Popen([sys.executable, "-m", "pgdr", "restore", "--latest", "--target-dir", str(target)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for("the recovering server", lambda: (target / "postmaster.pid").exists() or proc.poll() is not None, 180)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=120)
    if proc.returncode != 0:  # 0: it had finished recovery just before the signal
        assert proc.returncode == 128 + signal.SIGTERM, err
        assert "interrupted" in err and "Traceback" not in err
        assert not target.exists() and not _running_from(target)
        assert not [p for p in (sandbox.repo.root / "unfinished").glob("*.json")
                    if str(target) in p.read_text()], "a cleanly undone restore is not 'interrupted'"


def sandbox_programs():  # type: ignore[no-untyped-def]
    from pgdr.pg.programs import Programs

    return Programs()


def test_sigkilled_verify_scratch_is_removed_by_the_next_verify(make_sandbox) -> None:  # type: ignore[no-untyped-def]
    sandbox = make_sandbox("killverify", standbys=0)
    assert run_cli("backup", config=sandbox.config_path).returncode == 0
    scratch_root = sandbox.repo.root.parent / "scratch"
    left: list[Path] = []
    for delay in (0.0, 0.5, 1.5):
        proc = _pgdr(sandbox.config_path, "verify")
        _wait_for("a scratch folder", lambda p=proc: scratch_root.is_dir() and any(scratch_root.iterdir())  # type: ignore[misc]
                  or p.poll() is not None, 60)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        left = list(scratch_root.iterdir()) if scratch_root.is_dir() else []
        if not left:
            continue
        result = run_cli("verify", config=sandbox.config_path)
        assert result.returncode == 0, result.stderr
        for folder in left:
            assert not folder.exists(), f"{folder} survived the next verify"
            assert not _running_from(folder)
    assert scratch_root.is_dir() and not any(scratch_root.iterdir())


def test_sigstopped_primary_fails_a_bounded_call_naming_the_peer(make_sandbox) -> None:  # type: ignore[no-untyped-def]
    sandbox = make_sandbox("sigstop", standbys=0)
    conninfo = sandbox.conninfo(sandbox.primary, "postgres")
    pid = sandbox.instance(sandbox.primary, sandbox_programs()).pid()
    assert pid is not None
    with session(conninfo, statement_timeout=1, what="the test query") as conn:
        backend = conn.execute("select pg_backend_pid() as p").fetchone()
        assert backend is not None
        os.kill(backend["p"], signal.SIGSTOP)
        os.kill(pid, signal.SIGSTOP)
        t0 = time.monotonic()
        try:
            with pytest.raises(ConnectionFailed) as err:
                conn.execute("select 1")
            waited = time.monotonic() - t0
        finally:
            os.kill(pid, signal.SIGCONT)
            os.kill(backend["p"], signal.SIGCONT)
    assert str(sandbox.socket_dir) in err.value.message and "the test query" in err.value.message
    assert waited < 30  # bounded: statement_timeout 1 s + the 2 s client margin, never minutes

    # the same through the CLI: `status` against a stopped primary ends within its bounds
    config = sandbox.root / "pgdr-short.toml"
    config.write_text(sandbox.config_path.read_text() + '\n[pg]\nconnect_timeout = "2s"\nstatement_timeout = "2s"\n')
    os.kill(pid, signal.SIGSTOP)
    try:
        status = run_cli("status", "--json", config=config, timeout=60)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert status.returncode == 1
    primary = [c for c in json.loads(status.stdout)["checks"] if c["name"] == "primary"][0]
    assert primary["status"] == "fail" and "primary" in primary["summary"] and "timed out" in primary["summary"]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_archiver_survives_a_full_repository_disk(make_sandbox) -> None:  # type: ignore[no-untyped-def]
    root = make_sandbox.base / "diskfull"
    repo_dir = root / "repo"
    repo_dir.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400m,mode=0755", "tmpfs", str(repo_dir)], check=True)
    try:
        sandbox = make_sandbox("diskfull", standbys=0)
        used = os.statvfs(repo_dir)
        used_mb = (used.f_blocks - used.f_bfree) * used.f_frsize // 1048576
        subprocess.run(["mount", "-o", f"remount,size={used_mb + 24}m", str(repo_dir)], check=True)
        _fill(sandbox, 600_000)
        _wait_for("the archiver to report the full disk", lambda: "disk full" in str(
            json.loads((sandbox.repo.archiver_dir / "state.json").read_text()).get("problem")), 120)
        status = run_cli("status", "--json", config=sandbox.config_path)
        assert status.returncode == 1
        blocked = [c for c in json.loads(status.stdout)["checks"] if c["name"] == "archiver"]
        assert blocked and "repository disk full" in blocked[0]["summary"] and "bytes free" in blocked[0]["summary"]

        subprocess.run(["mount", "-o", "remount,size=1g", str(repo_dir)], check=True)
        with session(sandbox.conninfo(sandbox.primary, "postgres")) as conn:
            conn.execute("select pg_switch_wal()")
            conn.execute("create table after_space as select 1")
            row = conn.execute("select pg_walfile_name(pg_current_wal_lsn()) as w").fetchone()
            conn.execute("select pg_switch_wal()")
        assert row is not None
        wanted = row["w"]
        # the archive catches up by itself: no restart, counted on the archive's segment list
        _wait_for(f"segment {wanted} in the archive",
                  lambda: (sandbox.repo.wal_dir / f"{wanted}.zst").exists(), 120)
        names = sorted(p.name[:24] for p in sandbox.repo.wal_dir.glob("0*.zst") if len(p.name) == 28)
        nums = [int(n[8:16], 16) * 256 + int(n[16:], 16) for n in names]
        assert nums == list(range(nums[0], nums[-1] + 1)), "a gap in the archive"
        state = json.loads((sandbox.repo.archiver_dir / "state.json").read_text())
        assert state["problem"] is None and state["failures"] >= 1
    finally:
        sb.down(root, sandbox_programs())
        subprocess.run(["umount", "-l", str(repo_dir)], check=False)


_DRIVER = """
import sys
from pgdr.pg import process
if sys.argv[1] == "unguarded":
    process.guard_prefix = lambda: []   # as on a machine without setpriv
process.run(["/bin/sh", "-c", "sleep 300 & sleep 301; wait", sys.argv[2]])
"""


def _driver(mode: str, marker: str, env: dict[str, str] | None = None
            ) -> tuple[subprocess.Popen[bytes], list[int]]:
    """A pgdr-like process running a program whose own child lives on; returns the
    driver and the program's processes (all in one group, not the driver's)."""
    proc = subprocess.Popen([sys.executable, "-c", _DRIVER, mode, marker], env=env)
    try:
        program: list[int] = []

        def started() -> bool:
            program[:] = [p for p in _processes("sleep 301; wait", marker) if p != proc.pid]
            return bool(program) and len(_group(os.getpgid(program[-1]))) >= 3
        _wait_for("the program and its children", started, 20)
        members = _group(os.getpgid(program[-1]))
        assert os.getpgid(proc.pid) not in {os.getpgid(p) for p in members}
    except BaseException:
        proc.kill()
        raise
    return proc, members


def _group(pgid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[2]) == pgid:
                    found.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    return found


def _alive(pids: list[int]) -> list[int]:
    return [p for p in pids if Path(f"/proc/{p}").exists()
            and Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"]


def test_grandchildren_die_with_a_sigkilled_pgdr(tmp_path: Path) -> None:
    """Like pg_basebackup's -X stream child: a grandchild that writes nothing, waits forever."""
    marker = f"pgdr-test-marker-{os.getpid()}-guarded"
    # a run dir of its own, so that only the guard (no other pgdr's reaping) can end them
    proc, members = _driver("guarded", marker, {**os.environ, "PGDR_RUN_DIR": str(tmp_path / "run")})
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _wait_for("the program's group to die with its parent", lambda: not _alive(members), 10)


def test_the_next_pgdr_ends_what_an_unguarded_killed_pgdr_left(tmp_path: Path) -> None:
    marker = f"pgdr-test-marker-{os.getpid()}-unguarded"
    # a run dir of its own: any pgdr starting elsewhere on this machine would reap them first
    env = {**os.environ, "PGDR_RUN_DIR": str(tmp_path / "run")}
    proc, members = _driver("unguarded", marker, env)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)
    assert _alive(members) == members, "nothing should have ended them yet"
    # the next start of any pgdr command (here one that then fails on its config) reaps them
    result = subprocess.run([sys.executable, "-m", "pgdr", "--config", str(tmp_path / "missing.toml"), "list"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    _wait_for("the orphans to be ended", lambda: not _alive(members), 10)


def test_programs_of_another_major_version_are_refused(shared_sandbox: sb.Sandbox) -> None:
    """[pg] bindir pointing at version-18 programs against the PostgreSQL 15 sandbox: one line, exit 2."""
    fake = shared_sandbox.root / "fake-bin-18"
    fake.mkdir(exist_ok=True)
    for tool in ("pg_ctl", "pg_basebackup"):
        (fake / tool).write_text(f"#!/bin/sh\necho '{tool} (PostgreSQL) 18.1'\n")
        (fake / tool).chmod(0o755)
    config = shared_sandbox.root / "pgdr-bindir18.toml"
    config.write_text(shared_sandbox.config_path.read_text() + f'\n[pg]\nbindir = "{fake}"\n')
    before = set(shared_sandbox.repo.backups_dir.iterdir())
    result = run_cli("backup", config=config)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert "runs PostgreSQL 15" in lines[0] and "version 18" in lines[0] and str(fake) in lines[0]
    assert "Traceback" not in result.stderr
    assert set(shared_sandbox.repo.backups_dir.iterdir()) == before


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_verify_on_a_full_scratch_disk_could_not_run_and_the_backup_keeps_its_status(make_sandbox) -> None:  # type: ignore[no-untyped-def]
    sandbox = make_sandbox("scratchfull", standbys=0)
    taken = run_cli("backup", "--json", config=sandbox.config_path)
    assert taken.returncode == 0, taken.stderr
    backup = json.loads(taken.stdout)["id"]
    record = sandbox.repo.backups_dir / backup / "verify.json"
    logical = json.loads((sandbox.repo.backups_dir / backup / "pgdr.json").read_text())["bytes_logical"]
    scratch = sandbox.root / "small-scratch"
    scratch.mkdir()
    config = sandbox.root / "pgdr-small-scratch.toml"
    config.write_text(sandbox.config_path.read_text() + f'\n[verify]\nscratch_dir = "{scratch}"\n')
    try:
        # too small from the start: refused before anything is written
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0755", "tmpfs", str(scratch)], check=True)
        result = run_cli("verify", config=config)
        assert result.returncode == 3, result.stderr
        assert "could not run" in result.stderr and "scratch disk" in result.stderr and "bytes free" in result.stderr
        assert not record.exists()
        # big enough to start, too small to finish (the WAL and the server's own files)
        size_mb = logical // 1048576 + 2
        subprocess.run(["mount", "-o", f"remount,size={size_mb}m", str(scratch)], check=True)
        result = run_cli("verify", config=config)
        assert result.returncode == 3, result.stderr
        assert "scratch disk full" in result.stderr and "keeps its status" in result.stderr
        assert not record.exists()
        assert not [p for p in scratch.iterdir()], "the scratch folder was not cleaned up"
        listed = json.loads(run_cli("list", "--json", config=sandbox.config_path).stdout)
        assert [b for b in listed if b["id"] == backup][0]["verified"] == "never"
    finally:
        subprocess.run(["umount", "-l", str(scratch)], check=False)
    ok = run_cli("verify", config=sandbox.config_path)
    assert ok.returncode == 0, ok.stderr


def test_archiver_ends_a_stalled_pg_receivewal_and_catches_up(make_sandbox) -> None:  # type: ignore[no-untyped-def]
    """Its walsender stops answering (SIGSTOP): pg_receivewal would wait forever."""
    sandbox = make_sandbox("stalledreceiver", standbys=0)
    with open(sandbox.config_path, "a") as fh:
        fh.write('\n[pg]\nstall_timeout = "3s"\n')
    assert run_cli("archiver", "stop", config=sandbox.config_path).returncode == 0
    assert run_cli("archiver", "start", config=sandbox.config_path).returncode == 0
    app = load_config(sandbox.config_path).archive.application_name
    with session(sandbox.conninfo(sandbox.primary, "postgres")) as conn:
        row = conn.execute("select pid from pg_stat_activity where backend_type = 'walsender' "
                           "and application_name = %s", (app,)).fetchone()
    assert row is not None
    walsender = row["pid"]
    os.kill(walsender, signal.SIGSTOP)
    try:
        _fill(sandbox, 50_000)
        state = sandbox.repo.archiver_dir / "state.json"
        _wait_for("the archiver to call pg_receivewal stalled", lambda: "received nothing for 3s" in str(
            json.loads(state.read_text()).get("last_failure")), 60)
        assert "has WAL to send" in json.loads(state.read_text())["last_failure"]
    finally:
        os.kill(walsender, signal.SIGCONT)
    with session(sandbox.conninfo(sandbox.primary, "postgres")) as conn:
        row = conn.execute("select pg_walfile_name(pg_switch_wal()) as w").fetchone()
    assert row is not None
    wanted = sandbox.repo.wal_dir / f"{row['w']}.zst"
    _wait_for(f"{wanted.name} in the archive without a restart", wanted.exists, 90)


def test_pgdr_help_imports_no_heavy_module() -> None:
    """`pgdr --help` stays fast by not importing what only commands need (bench_startup measures
    the CPU; this guards the cause): psycopg, pydantic, Rich, FastAPI, zstandard."""
    probe = ("import sys\nfrom pgdr.cli.main import app\n"
             "try:\n    app(['--help'], standalone_mode=False)\nexcept SystemExit:\n    pass\n"
             "heavy = ('psycopg', 'pydantic', 'rich', 'fastapi', 'zstandard', 'uvicorn')\n"
             "print(sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0] in heavy}))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("stage", ["creating", "removing"])
def test_half_created_scratch_folder_of_a_dead_verify_is_reaped_and_a_live_ones_kept(tmp_path: Path,
                                                                                     stage: str) -> None:
    """A verify SIGKILLed while writing its owner marker leaves `.creating-…` with the
    marker's temporary file inside; one SIGKILLed while removing its folder leaves
    `.removing-…` whose marker rmtree may already have taken (the test_process SIGKILL
    test left such a folder, unowned, before the rename): the owner in the folder's name
    proves it dead."""
    from pgdr.pg.children import start_time
    from pgdr.restore.scratch import CREATING as creating_prefix
    from pgdr.restore.scratch import REMOVING, reap_stale

    CREATING = creating_prefix if stage == "creating" else REMOVING  # noqa: N806

    dead = subprocess.Popen(["sleep", "30"])
    dead_start = start_time(dead.pid)
    dead.kill()
    dead.wait()
    orphan = tmp_path / f"{CREATING}{dead.pid}.{dead_start}-verify-20261124T1-abc123"
    orphan.mkdir()
    (orphan / ".pgdr-owner.json.tmp").write_text('{"owner": {"pi')  # cut mid-write
    live = tmp_path / f"{CREATING}{os.getpid()}.{start_time(os.getpid())}-verify-20261124T2-def456"
    live.mkdir()
    (live / ".pgdr-owner.json.tmp").write_text("{}")
    removed = reap_stale(tmp_path)
    assert removed == [orphan] and not orphan.exists()
    assert live.exists(), "a live verify's folder must never be removed"


def test_a_failing_tar_is_summarized_by_its_first_error_not_its_last_line(tmp_path: Path) -> None:
    """GNU tar ends a failed extraction with "Exiting with failure status due to previous
    errors", which names nothing: the one line pgdr reports must be the error itself."""
    import tarfile

    from pgdr.errors import ProgramFailed
    from pgdr.pg.programs import Programs

    member = tmp_path / "000000010000000000000001"
    member.write_bytes(b"x" * 1024)
    archive = tmp_path / "wal.tar"
    with tarfile.open(archive, "w") as tar:  # the file alone: no entry for its folder
        tar.add(member, arcname=f"pg_wal/{member.name}")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "pg_wal").write_text("a file where the archive needs a folder\n")
    with pytest.raises(ProgramFailed) as failed:
        Programs().run("tar", ["-xf", str(archive), "-C", str(dest)], as_server_user=False)
    message = failed.value.message
    assert "pg_wal" in message and "Cannot" in message, message
    assert "previous errors" not in message, message
