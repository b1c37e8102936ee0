"""What more than one benchmark needs, said once."""

from __future__ import annotations

import os
import shutil
import time
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
