"""What more than one benchmark needs, said once."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pgdr.pg.connect import session
from pgdr.pg.lsn import format_lsn
from pgdr.pg.programs import Programs
from pgdr.repo.layout import Repository
from pgdr.repo.wal import WalArchive
from pgdr.sandbox import sandbox as sb


def waldump_alone(base: Path, repo: Repository, programs: Programs) -> tuple[float, int]:
    """pg_waldump over the decompressed archive in one process, output discarded."""
    folder = base / "waldump"
    folder.mkdir()
    segs = WalArchive(repo).segments()
    size = repo.wal_segment_size
    for seg in segs:
        (folder / seg.name(size)).write_bytes(WalArchive(repo).read(seg.name(size)))
    t0 = time.monotonic()
    programs.run("pg_waldump", ["-p", str(folder), "-t", str(segs[0].timeline),
                                "-s", format_lsn(segs[0].start_lsn(size)),
                                "-e", format_lsn(segs[-1].start_lsn(size) + size)],
                 ok_codes=(0, 1), as_server_user=False, stdout_path=Path(os.devnull), timeout=3600)
    seconds = time.monotonic() - t0
    shutil.rmtree(folder)
    return seconds, len(segs) * size


def wait_archived(sandbox: sb.Sandbox, repo: Repository, timeout: float = 300) -> None:
    """Switch WAL and wait until the archive holds the segment that was current."""
    with session(sandbox.conninfo(sandbox.primary)) as conn:
        row = conn.execute("select pg_walfile_name(pg_current_wal_lsn()) as f").fetchone()
        conn.execute("select pg_switch_wal()")
    assert row is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        names = [f.name for f in WalArchive(repo).files()]
        if names and max(names) >= row["f"]:
            return
        time.sleep(0.2)
    raise SystemExit(f"the archive did not reach {row['f']} within {timeout:.0f}s")


@contextmanager
def pgbench_sandbox(prefix: str, scale: int, programs: Programs) -> Iterator[tuple[Path, sb.Sandbox, list[str]]]:
    """A fresh sandbox (no standby) holding `pgbench -i -s scale` in database app, in a
    new folder under /tmp the server user can traverse; yields (folder, sandbox, the
    connection options for pgbench/psql) and removes both afterwards."""
    base = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(base, 0o755)
    sandbox = None
    try:
        sandbox = sb.up(base / "sb", programs, standbys=0)
        pg = ["-h", str(sandbox.socket_dir), "-p", str(sandbox.primary.port), "-U", "postgres"]
        programs.run("pgbench", ["-i", "-q", "-s", str(scale), *pg, "app"], timeout=3600)
        yield base, sandbox, pg
    finally:
        if sandbox is not None:
            sb.down(sandbox.root, programs, purge=True)
        shutil.rmtree(base, ignore_errors=True)
