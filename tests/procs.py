"""An independent look at /proc for the tests: which processes run, and from where
(never pgdr's own records of what it started)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def processes(*needles: str) -> list[int]:
    """Live pids (zombies excluded, this one too) whose command line holds every needle."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and all(n in cmdline for n in needles):
            found.append(int(entry.name))
    return found


def running_from(folder: Path) -> list[int]:
    """pids whose working directory is folder or below it (a postmaster chdirs to its data dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if cwd == str(folder) or cwd.startswith(str(folder) + "/"):
            found.append(int(entry.name))
    return found


def basebackups(folder: Path) -> list[int]:
    """pids of live pg_basebackup processes (the binary itself, argv[0], not the guard shell
    whose command line carries the same words) with folder in their arguments: a
    repository, or one copy's `-D`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and argv and argv[0].endswith(b"/pg_basebackup") and any(
                str(folder).encode() in a for a in argv):
            found.append(int(entry.name))
    return found


def wait_for(what: str, check: Callable[[], object], timeout: float = 30) -> Any:
    """check()'s first true value, looked for every 5 ms (tests that signal a process at a
    given moment of its run); fails naming `what` after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"no {what} within {timeout:.0f}s"
        time.sleep(0.005)
    return value
