"""The fast extraction path (`zstd -dc | tar -x` fed from the buffer pgdr hashes) under the
faults the slower `tar --use-compress-program` path guarded against: a byte flipped in the
tar, a truncated tar, damage the decompressor meets only after tar has read a whole
archive, and pgdr SIGKILLed while the pipeline runs.

Witnesses are independent of pgdr's report: the target folder's existence, /proc (which
processes still run from the target), and the next pgdr's refusal.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from pgdr.errors import ProgramFailed, RepositoryError
from pgdr.pg.connect import session
from pgdr.pg.programs import Programs
from pgdr.repo.manifest import read_manifest
from pgdr.restore.extract import BackupDamaged, extract_physical
from pgdr.sandbox import sandbox as sb
from tests.conftest import run_cli


def _cmdlines() -> dict[int, str]:
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                out[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
    return out


def _wait_for(what: str, predicate, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)


@pytest.fixture(scope="module")
def backed_up(base_dir: Path, programs: Programs) -> Iterator[sb.Sandbox]:
    """A stopped sandbox with one backup of ~40 MB of barely compressible text (the
    extraction then runs long enough to be caught in the middle)."""
    sandbox = sb.up(base_dir / "rspeed", programs, standbys=0)
    try:
        with session(sandbox.conninfo(sandbox.primary)) as conn:
            conn.execute("create table noise (id int primary key, t text)")
            conn.execute("insert into noise select g, (select encode(decode(string_agg(md5(random()::text "
                         "|| k::text || g::text), ''), 'hex'), 'base64') from generate_series(1, 32) k) "
                         "from generate_series(1, 60000) g")
        assert run_cli("backup", config=sandbox.config_path).returncode == 0
        sb.down(sandbox.root, programs, purge=False)
        yield sandbox
    finally:
        sb.down(sandbox.root, programs, purge=True)


def _copy_of_backup(sandbox: sb.Sandbox, where: Path) -> Path:
    [source] = [p for p in sandbox.repo.backups_dir.iterdir() if (p / "base.tar.zst").exists()]
    if where.exists():
        shutil.rmtree(where)
    shutil.copytree(source, where)
    os.chmod(where, 0o755)
    return where


@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_flipped_byte_in_base_tar_is_named_and_nothing_is_left(backed_up: sb.Sandbox, base_dir: Path,
                                                              programs: Programs, where: str) -> None:
    folder = _copy_of_backup(backed_up, base_dir / "rspeed-flip")
    tar = folder / "base.tar.zst"
    size = tar.stat().st_size
    offset = {"start": 64, "middle": size // 2, "end": size - 16}[where]
    with open(tar, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x5A]))
    target = base_dir / f"rspeed-flip-target-{where}"
    with pytest.raises(BackupDamaged) as caught:
        extract_physical(folder, target, programs, manifest=read_manifest(folder))
    assert "base.tar.zst" in caught.value.message and "blake3" in caught.value.message
    assert not target.exists()


def test_truncated_base_tar_is_named_and_nothing_is_left(backed_up: sb.Sandbox, base_dir: Path,
                                                        programs: Programs) -> None:
    folder = _copy_of_backup(backed_up, base_dir / "rspeed-trunc")
    tar = folder / "base.tar.zst"
    os.truncate(tar, tar.stat().st_size // 2)
    target = base_dir / "rspeed-trunc-target"
    with pytest.raises(BackupDamaged) as caught:
        extract_physical(folder, target, programs, manifest=read_manifest(folder))
    assert "base.tar.zst" in caught.value.message and "size" in caught.value.message
    assert not target.exists()


def test_damage_after_a_complete_tar_fails_the_extraction(base_dir: Path, programs: Programs) -> None:
    """zstd fails on bytes after the frame, after tar has read a whole archive and exited
    0: only the decompressor's own exit status reports it (no manifest here, so no sha256
    either), as pipefail would."""
    shell = "pipe"
    folder = base_dir / f"rspeed-trailing-{shell}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(mode=0o755)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("PG_VERSION")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"15\n"))
    (folder / "base.tar.zst").write_bytes(zstandard.ZstdCompressor().compress(raw.getvalue())
                                          + b"damage after the frame")
    empty = io.BytesIO()
    tarfile.open(fileobj=empty, mode="w").close()
    (folder / "pg_wal.tar").write_bytes(empty.getvalue())
    for path in folder.iterdir():
        os.chmod(path, 0o644)
    target = base_dir / f"rspeed-trailing-target-{shell}"
    with pytest.raises(RepositoryError) as caught:
        extract_physical(folder, target, programs)
    assert "cannot extract base.tar.zst" in caught.value.message
    assert not target.exists()


def test_sigkill_mid_extract_leaves_no_pipeline_and_nothing_complete(backed_up: sb.Sandbox,
                                                                     base_dir: Path) -> None:
    target = base_dir / "rspeed-killed-target"
    env = {**os.environ, "PGDR_CONFIG": str(backed_up.config_path)}
    proc = subprocess.Popen([sys.executable, "-m", "pgdr", "restore", "--immediate", "--target-dir", str(target)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # the moment: the decompress-and-extract pipeline for this target is running
        _wait_for("the extraction pipeline", lambda: any(c.split(" ", 1)[0].endswith("tar") and str(target) in c
                                                         for c in _cmdlines().values()) or proc.poll() is not None,
                  120)
        assert proc.poll() is None, "the restore ended before its extraction could be interrupted"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    # zstd and tar die with pgdr (the process guard), within a bounded wait
    deadline = time.monotonic() + 30
    while (left := [c for c in _cmdlines().values() if str(target) in c]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, left
    assert not (target / "postmaster.pid").exists()
    # the next pgdr reports it interrupted and refuses to restore over it
    status = run_cli("status", "--json", config=backed_up.config_path)
    assert str(target) in status.stdout and "incomplete" in status.stdout, status.stdout[-2000:]
    again = run_cli("restore", "--immediate", "--target-dir", str(target), config=backed_up.config_path)
    assert again.returncode == 2, again.stderr
    shutil.rmtree(target, ignore_errors=True)


def test_waiting_on_a_program_still_ends_it_on_timeout_and_cancel() -> None:
    """process.run wakes on the child's exit (pidfd) instead of polling; the bounds it
    guarded still hold: a timeout and a cancel end the program, an exit code is reported."""
    from pgdr.pg import process

    with pytest.raises(ProgramFailed) as caught:
        process.run(["/bin/sleep", "30"], timeout=0.5)
    assert "did not finish within" in caught.value.message
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    with pytest.raises(process.Cancelled):  # run to its end, it would return, not raise
        process.run(["/bin/sleep", "30"], cancel=cancel)
    with pytest.raises(ProgramFailed) as failed:
        process.run(["/bin/sh", "-c", "echo gone >&2; exit 3"])
    assert "gone" in failed.value.message
    assert process.run(["/bin/true"]).returncode == 0
