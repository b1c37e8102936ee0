"""Rebuilding a full data directory from a chain of native incremental backups.

pg_combinebackup (PostgreSQL 17+) reads plain-format backup directories only, and
pgdr keeps its backups as tars; so every backup of the chain (the full one first, the
incremental one asked for last) is extracted into a private work folder beside the
target with extract.py's usual checks (each tar hashed against its own pgdr.json, so
a damaged file anywhere in the chain fails here and names its backup), then combined
into the target. pg_combinebackup writes a backup_manifest for the result, which
pg_verifybackup (restore/prove.py) then checks like that of any backup. The work
folder is removed whatever happens; the target exists only when the combine succeeded.

Called from one place: extract.extract_physical, when the manifest has a parent.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from pgdr.errors import RepositoryError
from pgdr.pg.programs import Programs, bindir_major
from pgdr.repo.manifest import BackupManifest, chain_of
from pgdr.restore.extract import Extracted, ExtractMethod, extract_physical

WORK_SUFFIX = ".chain"


def work_folder(target: Path) -> Path:
    """Where the chain's backups are unpacked: beside the target, so on the same disk."""
    return target.with_name(f".{target.name}{WORK_SUFFIX}")


def extract_combined(backup_dir: Path, target: Path, programs: Programs, method: ExtractMethod, *,
                     manifest: BackupManifest, checks: bool = True) -> Extracted:
    """Unpack every backup of manifest's chain, then pg_combinebackup them into target."""
    if target.exists():
        raise RepositoryError(f"refusing to restore into existing {target}",
                              hint="restores always go to a new, empty folder")
    t0 = time.monotonic()
    chain = chain_of(backup_dir.parent, manifest)
    work = work_folder(target)
    shutil.rmtree(work, ignore_errors=True)  # debris of a killed restore into the same target
    work.mkdir(mode=0o700)
    programs.run_as.chown(work)
    files_checked = 0
    try:
        parts = []
        for folder, part in chain:
            dest = work / part.id
            done = extract_physical(folder, dest, programs, method, manifest=part, tablespaces={},
                                    checks=checks, combine=False, writeback=False)
            files_checked += done.files_checked
            # -Ft keeps backup_manifest beside the tars; pg_combinebackup wants it inside
            # (its digest was just checked with the rest of the backup's files).
            shutil.copy2(folder / "backup_manifest", dest / "backup_manifest")
            programs.run_as.chown(dest / "backup_manifest")
            parts.append(dest)
        # Combined inside the work folder (the server user owns it; the target's parent
        # may be root's), then renamed into place: the target appears only when whole.
        combined = work / "combined"
        # --link (18+): hard links instead of copies for files taken whole from one part;
        # the parts are private, checked and removed right after, so nothing else sees them.
        link = ["--link"] if (bindir_major(programs.bindir) or 0) >= 18 else []
        programs.run("pg_combinebackup", [*map(str, parts), *link, "-o", str(combined)], timeout=3600)
        # Recovery needs the last backup's streamed WAL to reach consistency, and
        # pg_verifybackup checks it: carry over whatever pg_combinebackup did not.
        wal = combined / "pg_wal"
        for segment in sorted((parts[-1] / "pg_wal").iterdir()):
            if segment.is_file() and not (wal / segment.name).exists():
                shutil.copy2(segment, wal / segment.name)
                programs.run_as.chown(wal / segment.name)
        combined.rename(target)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    os.chmod(target, 0o700)
    return Extracted(time.monotonic() - t0, {}, files_checked)
