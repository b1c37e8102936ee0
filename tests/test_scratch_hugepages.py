"""verify's scratch server mallocs on transparent huge pages; a restored server never does.

Why it matters: bt_index_check(heapallindexed) of the largest index is verify's critical
path, and it is bound by random probes of a Bloom filter that PostgreSQL mallocs
(restore/scratch.py, scratch_server_env). A restored server belongs to its user, whose
memory policy pgdr leaves alone, and a GLIBC_TUNABLES the user set is kept and wins.

Independent checker: the kernel, never pgdr's report: AnonHugePages in
/proc/PID/smaps_rollup of a backend holding one 48 MB allocation (repeat() pallocs its
result in one piece). Not /proc/PID/environ: the postmaster writes its process title
over its original environment.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from pathlib import Path

from pgdr.pg.connect import session
from pgdr.pg.programs import Programs
from pgdr.restore.pitr import stop_restored
from pgdr.sandbox import sandbox as sb
from tests.conftest import SandboxFactory, run_cli

MB = 1024 * 1024


def _thp_mode() -> str:
    """The kernel's transparent huge page mode: always, madvise or never."""
    text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    found = re.search(r"\[(\w+)\]", text)
    assert found is not None, text
    return found.group(1)


def _huge_pages_of_a_big_allocation(conninfo: str) -> int:
    """The most AnonHugePages (bytes) a backend shows while it holds 48 MB in one palloc."""
    with session(conninfo, statement_timeout=0) as conn:
        pid = int(conn.execute("select pg_backend_pid() as p").fetchone()["p"])
        query = threading.Thread(target=conn.execute, args=(
            f"select length(r), pg_sleep(2) from (select repeat('x', {48 * MB}) r offset 0) s",))
        query.start()
        most = 0
        deadline = time.monotonic() + 1.8
        while time.monotonic() < deadline:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
            found = re.search(r"^AnonHugePages:\s+(\d+) kB", rollup, re.M)
            assert found is not None, rollup
            most = max(most, int(found.group(1)) * 1024)
            time.sleep(0.1)
        query.join(timeout=30)
    return most


def _kept_copy_huge_pages(sandbox: sb.Sandbox, programs: Programs, env: dict[str, str]) -> int:
    result = run_cli("verify", "latest", "--keep", "--json", config=sandbox.config_path, env=env)
    assert result.returncode == 0, result.stderr
    kept = json.loads(result.stdout)["kept"]
    try:
        return _huge_pages_of_a_big_allocation(kept["conninfo"])
    finally:
        programs.run("pg_ctl", ["-D", kept["data_dir"], "-m", "immediate", "-w", "stop"], ok_codes=(0, 1))
        shutil.rmtree(kept["folder"], ignore_errors=True)


def test_scratch_server_mallocs_on_huge_pages_and_a_restored_server_does_not(
        make_sandbox: SandboxFactory, programs: Programs) -> None:
    sandbox: sb.Sandbox = make_sandbox("huge", standbys=0)
    mode = _thp_mode()
    result = run_cli("backup", "--json", config=sandbox.config_path)
    assert result.returncode == 0, result.stderr
    plain = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}

    huge = _kept_copy_huge_pages(sandbox, programs, plain)
    assert (huge >= 2 * MB) is (mode != "never"), (mode, huge)
    # the user's own setting comes last and wins
    huge = _kept_copy_huge_pages(sandbox, programs, {**plain, "GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})
    if mode != "always":  # under "always" every large malloc gets them, asked or not
        assert huge == 0, (mode, huge)

    target = sandbox.root / "restored-huge"
    result = run_cli("restore", "--immediate", "--target-dir", str(target), "--json",
                     config=sandbox.config_path, env=plain)
    assert result.returncode == 0, result.stderr
    try:
        huge = _huge_pages_of_a_big_allocation(json.loads(result.stdout)["conninfo"])
        if mode != "always":
            assert huge == 0, (mode, huge)
    finally:
        stop_restored(target, programs)
        shutil.rmtree(target, ignore_errors=True)
