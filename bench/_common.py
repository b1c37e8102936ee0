"""What more than one benchmark needs, said once."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from pgdr.pg.lsn import format_lsn
from pgdr.pg.programs import Programs
from pgdr.repo.layout import Repository
from pgdr.repo.wal import WalArchive


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
