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
import struct
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


# ---- who to connect as ------------------------------------------------------------------
PG_AUTHID = 1260          # pg_authid's OID; its file is named in global/pg_filenode.map
BOOTSTRAP_SUPERUSER = 10  # the role initdb creates (-U), whatever it is called
_HEAP_XMAX_INVALID = 0x0800


def bootstrap_superuser(data_dir: Path, default: str = "postgres") -> str:
    """The name of role 10 in a (stopped) data directory, read from pg_authid's heap.

    A restored copy of a cluster initdb'd with -U admin has no role "postgres", and
    pgdr must connect before anything else can be asked; so the name is read from the
    files, the way pg_filedump would. Anything unexpected falls back to `default`.
    """
    try:
        mapping = (data_dir / "global" / "pg_filenode.map").read_bytes()
        count = struct.unpack_from("<i", mapping, 4)[0]
        filenode = next(node for oid, node in (struct.unpack_from("<II", mapping, 8 + 8 * i)
                                               for i in range(max(0, min(count, 64))))
                        if oid == PG_AUTHID)
        heap = (data_dir / "global" / str(filenode)).read_bytes()
    except (OSError, struct.error, StopIteration):
        return default
    live: list[str] = []
    dead: list[str] = []
    for start in range(0, len(heap) - 8191, 8192):
        page = heap[start:start + 8192]
        lower = struct.unpack_from("<H", page, 12)[0]
        for lp in range(24, min(lower, 8192), 4):
            word = struct.unpack_from("<I", page, lp)[0]
            off, flags, length = word & 0x7FFF, (word >> 15) & 3, word >> 17
            if flags != 1 or off + length > 8192 or length < 23 + 68:
                continue
            xmax = struct.unpack_from("<I", page, off + 4)[0]
            infomask, hoff = struct.unpack_from("<HB", page, off + 20)
            data = off + hoff
            if data + 68 > off + length or struct.unpack_from("<I", page, data)[0] != BOOTSTRAP_SUPERUSER:
                continue
            name = page[data + 4:data + 68].split(b"\0", 1)[0].decode(errors="replace")
            (live if xmax == 0 or infomask & _HEAP_XMAX_INVALID else dead).append(name)
    found = live or dead
    return found[-1] if found else default
