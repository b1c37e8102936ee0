"""The faster `pgdr verify` (checks side by side, data checksums proven online) under faults,
on real servers: every fault the serial verify caught still fails it, all in one run, and a
failing or SIGKILLed concurrent run leaves no server, no scratch folder and no verdict.

Faults are injected into the SOURCE cluster's files while it is stopped, so the backup
carries them past its own sha256 and pg_verifybackup (both describe the damaged bytes
faithfully). Independent checkers: pg_checksums on the stopped source (which pages really
have a bad checksum), /proc (processes), the file system (folders, verify.json).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgdr.pg.connect import session
from pgdr.pg.programs import Programs
from pgdr.sandbox import sandbox as sb
from tests.conftest import run_cli
from tests.procs import processes as _processes
from tests.procs import running_from as _running_from

PAGE = 8192




def _wait_until(what: str, cond: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def _scratch_is_clean(scratch: Path) -> None:
    assert not scratch.exists() or list(scratch.iterdir()) == [], list(scratch.iterdir())
    assert not _running_from(scratch), "a server still runs from the scratch folder"
    assert not _processes(str(scratch)), "a process still names the scratch folder"


def _patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)


def _item_offset(page: bytes, item: int) -> int:
    """lp_off of line pointer `item` (1-based) of a heap or B-tree page."""
    (lp,) = struct.unpack_from("<I", page, 24 + 4 * (item - 1))
    return int(lp & 0x7FFF)


@pytest.fixture(scope="module")
def damaged(base_dir: Path, programs: Programs) -> Iterator[dict[str, object]]:
    """A source with four damaged pages, each caught by a different reader:
    - heap_bad block 0: a tuple's xmin in the future, checksum valid (verify_heapam);
    - idx_bad_v (B-tree) leaf: two keys swapped, checksum valid (bt_index_check);
    - sum_bad block 0 (heap main fork): bad checksum (read by pg_amcheck and the scans);
    - hash_bad_h (hash index) block 1: bad checksum (read by nothing but the checksum sweep);
    - btree_bad_i (B-tree) block 1: bad checksum (bt_index_check and the sweep read it).
    The two bad-checksum pages carry an LSN past the backup's start, which pg_basebackup
    takes as "may be torn, WAL will fix it" and so sends unchecked."""
    sandbox = sb.up(base_dir / "vspeed", programs, standbys=0)
    files: dict[str, Path] = {}
    with session(sandbox.conninfo(sandbox.primary), statement_timeout=0) as conn:
        for table in ("heap_bad", "idx_bad", "sum_bad", "hash_bad"):
            conn.execute(f"create table {table} (id int, v int, pad text) with (autovacuum_enabled = off)")
            conn.execute(f"insert into {table} select g, g, repeat('x', 200) from generate_series(1, 300) g")
        conn.execute("create index idx_bad_v on idx_bad (v)")
        conn.execute("create index hash_bad_h on hash_bad using hash (id)")
        conn.execute("create index btree_bad_i on hash_bad (v)")
        conn.execute("checkpoint")
        for rel in ("heap_bad", "idx_bad_v", "sum_bad", "hash_bad_h", "btree_bad_i"):
            row = conn.execute("select pg_relation_filepath(%s) as p", (rel,)).fetchone()
            assert row is not None
            files[rel] = Path(row["p"])
    data = sandbox.primary.data_dir
    primary = sandbox.instance(sandbox.primary, programs)
    primary.stop()
    # logical damage, then every checksum recomputed over it: only amcheck can tell
    programs.run("pg_checksums", ["--disable", "-D", str(data)])
    heap = data / files["heap_bad"]
    page = heap.read_bytes()[:PAGE]
    _patch(heap, _item_offset(page, 1), struct.pack("<I", 0xFFFFFF00))  # t_xmin
    index = data / files["idx_bad_v"]
    leaf = index.read_bytes()[PAGE:2 * PAGE]  # block 1: the only leaf, rightmost (no high key)
    first, second = _item_offset(leaf, 1), _item_offset(leaf, 2)
    k1, k2 = leaf[first + 8:first + 12], leaf[second + 8:second + 12]
    assert struct.unpack("<i", k1)[0] == 1 and struct.unpack("<i", k2)[0] == 2
    _patch(index, PAGE + first + 8, k2)
    _patch(index, PAGE + second + 8, k1)
    programs.run("pg_checksums", ["--enable", "-D", str(data)])
    # checksum damage: pd_lsn far ahead (so the checksum no longer matches) and a flipped byte
    for rel, block in (("sum_bad", 0), ("hash_bad_h", 1), ("btree_bad_i", 1)):
        _patch(data / files[rel], block * PAGE, struct.pack("<II", 0xFF, 0xFFFF0000))
        _patch(data / files[rel], block * PAGE + PAGE - 100, b"\xa5")
    check = programs.run("pg_checksums", ["--check", "-D", str(data)], ok_codes=(0, 1))
    bad = {(f, int(b)) for f, b in __import__("re").findall(
        r'checksum verification failed in file "[^"]*?/((?:base|global)/[^"]+)", block (\d+)', check.stderr)}
    assert bad == {(str(files["sum_bad"]), 0), (str(files["hash_bad_h"]), 1),
                   (str(files["btree_bad_i"]), 1)}, check.stderr
    primary.start()
    try:
        yield {"sandbox": sandbox, "files": files}
    finally:
        sb.down(sandbox.root, programs, purge=True)


def _verify_json(sandbox: sb.Sandbox, backup_id: str) -> tuple[int, dict[str, object]]:
    result = run_cli("verify", backup_id, "--json", config=sandbox.config_path)
    assert "Traceback" not in result.stderr
    return result.returncode, json.loads(result.stdout)


def test_corrupt_index_heap_and_checksums_all_reported_in_one_run(damaged: dict[str, object]) -> None:
    sandbox = damaged["sandbox"]
    files = damaged["files"]
    assert isinstance(sandbox, sb.Sandbox) and isinstance(files, dict)
    backup = run_cli("backup", "--json", config=sandbox.config_path)
    assert backup.returncode == 0, backup.stderr
    backup_id = json.loads(backup.stdout)["id"]

    code, record = _verify_json(sandbox, backup_id)
    assert code == 1
    checks = {c["name"]: c for c in record["checks"]}  # type: ignore[attr-defined]
    # the backup's files themselves are intact copies of what the server sent
    assert checks["files"]["status"] == "ok" and checks["pg_verifybackup"]["status"] == "ok"
    assert checks["restore"]["status"] == "ok"
    amcheck = checks["amcheck"]
    assert amcheck["status"] == "fail"
    objects = " ".join(amcheck["evidence"]["corrupt_objects"]) + " ".join(amcheck["evidence"]["output"])
    assert "idx_bad_v" in objects, amcheck
    assert "heap_bad" in objects, amcheck
    sums = checks["data checksums"]
    assert sums["status"] == "fail"
    found = {(p["file"], p["block"]) for p in sums["evidence"]["bad_pages"]}
    assert (str(files["sum_bad"]), 0) in found, sums
    # read by nothing but the sweep: the coverage pg_checksums gave, kept
    assert (str(files["hash_bad_h"]), 1) in found, sums
    assert (str(files["btree_bad_i"]), 1) in found, sums
    by = {p["file"]: p["found_by"] for p in sums["evidence"]["bad_pages"]}
    assert by[str(files["hash_bad_h"])] == ["sweep"]
    # a bad page never enters shared buffers: every reader meets it, the sweep too
    assert "sweep" in by[str(files["btree_bad_i"])], by
    assert "pg_amcheck" in by[str(files["sum_bad"])], by  # verify_heapam's reads count
    assert record["passed"] is False
    # the verdict on disk says failed; no scratch server or folder is left
    on_disk = json.loads((sandbox.repo.backups_dir / backup_id / "verify.json").read_text())
    assert on_disk["passed"] is False
    listed = run_cli("list", "--json", config=sandbox.config_path)
    assert {r["id"]: r["verified"] for r in json.loads(listed.stdout)}[backup_id] == "failed"
    _scratch_is_clean(sandbox.root / "scratch")


def test_sigkill_while_checks_run_side_by_side_leaves_no_server_and_no_verdict(
        damaged: dict[str, object]) -> None:
    sandbox = damaged["sandbox"]
    assert isinstance(sandbox, sb.Sandbox)
    scratch = sandbox.root / "scratch"
    killed_in_checks = 0
    for _ in range(3):
        backup = run_cli("backup", "--json", config=sandbox.config_path)
        assert backup.returncode == 0, backup.stderr
        backup_id = json.loads(backup.stdout)["id"]
        env = {**os.environ, "PGDR_CONFIG": str(sandbox.config_path)}
        proc = subprocess.Popen([sys.executable, "-m", "pgdr", "verify", backup_id], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # the moment pg_amcheck runs against the scratch server, the SQL scans and the
        # checksum sweep run beside it
        _wait_until("pg_amcheck on the scratch server",
                    lambda p=proc: p.poll() is not None or bool(_processes("pg_amcheck", str(scratch))), 120)
        if proc.poll() is None:
            killed_in_checks += 1
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # independent of pgdr: within a bound, no postmaster runs from the scratch folder
        _wait_until("the scratch server to stop", lambda: not _running_from(scratch), 60)
        _wait_until("pg_amcheck to end", lambda: not _processes("pg_amcheck", str(scratch)), 60)
        assert not (sandbox.repo.backups_dir / backup_id / "verify.json").exists()
        listed = run_cli("list", "--json", config=sandbox.config_path)
        assert {r["id"]: r["verified"] for r in json.loads(listed.stdout)}[backup_id] != "verified"
    assert killed_in_checks >= 2, f"only {killed_in_checks} kills hit verify while pg_amcheck ran"
    # the next verify removes what the killed ones left (and fails on the damage)
    code, _ = _verify_json(sandbox, "latest")
    assert code == 1
    _scratch_is_clean(scratch)


def test_keep_restarts_the_copy_stopped_immediately_with_template0_closed_again(
        damaged: dict[str, object], programs: Programs) -> None:
    """verify stops the scratch server at once (no shutdown checkpoint) and opens template0
    while checking it: a kept copy must still start, as restored."""
    from pgdr.restore.pitr import stop_restored

    sandbox = damaged["sandbox"]
    assert isinstance(sandbox, sb.Sandbox)
    assert run_cli("backup", config=sandbox.config_path).returncode == 0
    result = run_cli("verify", "latest", "--keep", "--json", config=sandbox.config_path)
    assert result.returncode == 1, result.stderr  # the damage is still there
    info = json.loads(result.stdout)["kept"]
    try:
        with session(info["conninfo"]) as conn:
            row = conn.execute("select datallowconn from pg_database where datname = 'template0'").fetchone()
            assert row is not None and row["datallowconn"] is False
        with session(info["conninfo"].replace("dbname=postgres", "dbname=app")) as conn:
            row = conn.execute("select count(*) as n from idx_bad").fetchone()
            assert row is not None and row["n"] == 300
    finally:
        stop_restored(Path(info["data_dir"]), programs)
        shutil.rmtree(info["folder"], ignore_errors=True)
    assert not _running_from(Path(info["folder"]))
