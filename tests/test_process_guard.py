"""The program guard's window between fork and its parent check, made deterministic.

One CI run (tests/test_redis.py, SIGKILL of `pgdr verify --redis` while its scratch
redis-server started) found a process in the killed verify's scratch folder 20 s after
the kill. Reproduced here: a guard whose pgdr dies before the guard has looked at its
parent (under load it can wait seconds for a CPU) exits 125 without starting anything,
but it used to wait in the program's folder (Popen's cwd), so it showed up as a process
running there. The guard now starts in / and enters the folder only after its checks.

The window is held open with a `setpriv` earlier on PATH that stops itself (SIGSTOP)
before exec'ing the real one; pgdr is SIGKILLed while it is stopped, then it is
continued. Counted from /proc, independently of pgdr."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.procs import running_from

CHILD = """
import sys, time
from pathlib import Path
from pgdr.pg import process
folder = Path(sys.argv[1])
process.spawn(["/bin/sleep", "300"], name="sleep", log_path=folder / "log", cwd=str(folder))
(folder / "spawned").write_text("")
time.sleep(300)
"""


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def _wait(what: str, done: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not done():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"waited {timeout:.0f}s for {what}"
        time.sleep(0.01)


def test_a_guard_whose_pgdr_died_before_its_check_never_runs_in_the_programs_folder(tmp_path: Path) -> None:
    real = shutil.which("setpriv")
    assert real is not None
    shim = tmp_path / "bin"
    shim.mkdir()
    marker = tmp_path / "stopped-pid"
    (shim / "setpriv").write_text(f'#!/bin/sh\necho $$ > {marker}\nkill -STOP $$\nexec {real} "$@"\n')
    (shim / "setpriv").chmod(0o755)
    folder = tmp_path / "scratch"
    folder.mkdir()
    env = {**os.environ, "PATH": f"{shim}:{os.environ['PATH']}", "PGDR_RUN_DIR": str(tmp_path)}
    pgdr = subprocess.Popen([sys.executable, "-c", CHILD, str(folder)], env=env, start_new_session=True)
    try:
        _wait("the guard to stop before its parent check",
              lambda: marker.exists() and marker.read_text().strip() and _state(int(marker.read_text())) == "T")
        guard = int(marker.read_text())
        os.kill(pgdr.pid, signal.SIGKILL)     # pgdr dies inside the window
        pgdr.wait(10)
        # the guard is still there, stopped, and has not started the program: it must not
        # be in the program's folder (it was, before the fix: Popen's cwd)
        assert _state(guard) == "T"
        assert running_from(folder) == [], "a guard that has not checked its parent waits in the folder"
        os.kill(guard, signal.SIGCONT)
        _wait("the guard to exit", lambda: _state(guard) in ("gone", "Z"))
        time.sleep(0.5)      # had it started the program, sleep would now run there
        assert running_from(folder) == []
    finally:
        if pgdr.poll() is None:
            os.kill(pgdr.pid, signal.SIGKILL)
            pgdr.wait(10)
        if marker.exists() and marker.read_text().strip():
            try:
                os.kill(int(marker.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass
