"""pgdr's own way into the instances it restores: a first pg_hba.conf line for it.

A restored or scratch instance keeps the source's pg_hba.conf, and operators' rules
(`peer` on the socket, passwords over TCP) would lock pgdr out: it runs as root and
has no password for the restored roles. So the instance's first rule trusts local
(unix socket) connections, and its socket lives in a private folder that only the
server user and root can enter (mode 0700): nobody else can reach that socket, and
the source's rules still apply to everyone else, unchanged, below it.

Debian keeps pg_hba.conf and postgresql.conf outside the data directory, so a backup
may have neither: they are created (empty apart from this rule) when missing, and
hba_file is pointed at the data directory's copy.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from pgdr.errors import PgdrError
from pgdr.pg.programs import RunAs

# The files this module writes (after pg_verifybackup has seen them as backed up).
TOUCHED_FILES = ("pg_hba.conf", "pg_ident.conf", "postgresql.conf")

ACCESS_RULE = "local all all trust  # pgdr: private socket folder (0700), added on restore\n"


def grant_pgdr_access(data_dir: Path, socket_dir: Path, run_as: RunAs) -> dict[str, str]:
    """Prepend pgdr's rule to data_dir/pg_hba.conf; returns the settings to apply
    (hba_file) so a source's hba_file elsewhere does not win."""
    if socket_dir.exists():
        mode = stat.S_IMODE(socket_dir.stat().st_mode)
        if mode & 0o077:
            raise PgdrError(f"refusing to trust the socket in {socket_dir}: mode {oct(mode)} lets others in",
                            hint="the socket folder must be mode 0700")
    hba = data_dir / "pg_hba.conf"
    try:
        current = hba.read_text()
    except FileNotFoundError:
        current = ""
    if not current.startswith(ACCESS_RULE):
        hba.write_text(ACCESS_RULE + current)
    os.chmod(hba, 0o600)
    run_as.chown(hba)
    for name in TOUCHED_FILES[1:]:
        path = data_dir / name
        if not path.exists():
            path.touch(mode=0o600)
            run_as.chown(path)
    return {"hba_file": str(hba), "ident_file": str(data_dir / "pg_ident.conf")}
