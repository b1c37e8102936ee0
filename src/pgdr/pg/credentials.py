"""Credentials for the PostgreSQL programs pgdr runs, and errors that say which failed.

pgdr often runs as root while pg_basebackup, pg_receivewal, pg_dump… run as the
server user with HOME changed. Left alone they would see neither the PGPASSWORD
nor the root-only PGPASSFILE pgdr was given, and would prompt `Password:` forever.
So each child gets, in this order:

1. the password from the conninfo (callers split it out: never on argv),
2. PGPASSWORD from pgdr's own environment,
3. the entries of pgdr's passfile (passfile= in the conninfo, else PGPASSFILE, else
   ~/.pgpass) for the child's user: handed over as is when the child runs as pgdr's
   own user, else copied into a private passfile (0600 in a 0700 folder, both owned
   by the child's user) that is removed when the child is done (a passfile= the
   child could not read is dropped from its conninfo);

and `-w`, so a missing or wrong password fails at once instead of prompting.
An authentication failure becomes one line naming user@host:port and what to fix.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pgdr.errors import AuthenticationFailed, PgdrError, PrivilegeMissing
from pgdr.pg.conninfo import parse

if TYPE_CHECKING:  # psycopg is imported where used: programs.py (on the CLI's start-up path) imports this
    import psycopg

# Programs that connect to a server and would otherwise prompt for a password (-w)…
NO_PROMPT_PROGRAMS = frozenset({"pg_basebackup", "pg_receivewal", "pg_dump", "pg_dumpall",
                                "pg_restore", "psql", "pg_amcheck", "vacuumdb"})
# …and every program that logs in somewhere (pg_rewind --source-server never prompts).
CLIENT_PROGRAMS = NO_PROMPT_PROGRAMS | {"pg_rewind"}

AUTH_HINT = ("check the password pgdr is given: PGPASSWORD, PGPASSFILE (may be root-only 0600) "
             "or ~/.pgpass, or password= in the conninfo")


def no_prompt_args(program: str) -> list[str]:
    """`-w`: never prompt; a missing password is an error, not a hang."""
    return ["-w"] if program in NO_PROMPT_PROGRAMS else []


@dataclass
class ChildCredentials:
    """What to add to one child's environment, and the private folder to remove after."""

    env: dict[str, str] = field(default_factory=dict)
    private_dir: Path | None = None
    # the child's arguments when they had to change (a passfile= it cannot read, dropped)
    args: list[str] | None = None

    def close(self) -> None:
        if self.private_dir is not None:
            shutil.rmtree(self.private_dir, ignore_errors=True)
            self.private_dir = None


def target_of(args: Sequence[str]) -> dict[str, str]:
    """host, port, user a client program's arguments name (conninfo or -h/-p/-U)."""
    out: dict[str, str] = {}
    flags = {"-h": "host", "--host": "host", "-p": "port", "--port": "port",
             "-U": "user", "--username": "user"}
    items = list(args)
    for i, arg in enumerate(items):
        value = items[i + 1] if i + 1 < len(items) else ""
        if arg in ("-d", "--dbname", "--source-server"):
            try:
                out.update({k: v for k, v in parse(value).items() if k in ("host", "port", "user")})
            except PgdrError:
                pass
        elif arg.startswith(("--dbname=", "--source-server=")):
            try:
                conninfo = arg.split("=", 1)[1]
                out.update({k: v for k, v in parse(conninfo).items() if k in ("host", "port", "user")})
            except PgdrError:
                pass
        elif arg in flags:
            out[flags[arg]] = value
    return out


_CONNINFO_FLAGS = ("-d", "--dbname", "--source-server")


def _conninfo_passfile(args: Sequence[str]) -> Path | None:
    """passfile= in a conninfo argument: libpq prefers it to PGPASSFILE."""
    items = list(args)
    for i, arg in enumerate(items[:-1]):
        if arg in _CONNINFO_FLAGS:
            try:
                found = parse(items[i + 1]).get("passfile")
            except PgdrError:
                continue
            if found:
                return Path(found)
    return None


def _readable_by(path: Path, uid: int, gid: int) -> bool:
    """Whether uid/gid can read path (permission bits of the file and every parent)."""
    import stat as st

    def allowed(p: Path, user_bit: int, group_bit: int, other_bit: int) -> bool:
        mode = p.stat()
        if mode.st_uid == uid:
            return bool(mode.st_mode & user_bit)
        if mode.st_gid == gid:
            return bool(mode.st_mode & group_bit)
        return bool(mode.st_mode & other_bit)
    try:
        return allowed(path, st.S_IRUSR, st.S_IRGRP, st.S_IROTH) and all(
            allowed(parent, st.S_IXUSR, st.S_IXGRP, st.S_IXOTH) for parent in path.absolute().parents)
    except OSError:
        return False


def _without_passfile(args: Sequence[str]) -> list[str]:
    from pgdr.pg.conninfo import with_params

    items = list(args)
    for i, arg in enumerate(items[:-1]):
        if arg in _CONNINFO_FLAGS:
            try:
                items[i + 1] = with_params(items[i + 1], passfile=None)
            except PgdrError:
                continue
    return items


def _passfile_of_pgdr() -> Path | None:
    env = os.environ.get("PGPASSFILE")
    path = Path(env) if env else Path(os.path.expanduser("~")) / ".pgpass"
    return path if os.access(path, os.R_OK) else None


def _split_pgpass(line: str) -> list[str]:
    """host:port:db:user:password with libpq's \\: and \\\\ escapes."""
    fields: list[str] = []
    cur: list[str] = []
    escaped = False
    for ch in line:
        if escaped:
            cur.append(ch)
            escaped = False
        elif ch == "\\":
            cur.append(ch)
            escaped = True
        elif ch == ":" and len(fields) < 4:
            fields.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    fields.append("".join(cur))
    return fields


def _entries_for(passfile: Path, user: str) -> list[str]:
    try:
        lines = passfile.read_text().splitlines()
    except OSError:
        return []
    keep = []
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = _split_pgpass(line)
        if len(fields) == 5 and fields[3] in (user, "*"):
            keep.append(line)
    return keep


PRIVATE_PREFIX = "pgdr-pass-"


def sweep_stale(root: Path | None = None) -> list[Path]:
    """Remove private passfile folders whose pgdr process is gone (SIGKILLed before its
    cleanup ran), so a copied password does not outlive the run that needed it."""
    removed = []
    base = root or Path(tempfile.gettempdir())
    for folder in base.glob(f"{PRIVATE_PREFIX}*-*"):
        pid_text = folder.name.removeprefix(PRIVATE_PREFIX).split("-", 1)[0]
        if not pid_text.isdigit():
            continue
        try:
            os.kill(int(pid_text), 0)
            continue  # its owner still runs
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def prepare(program: str, args: Sequence[str], password: str | None, *,
            child_user: str | None, child_ids: tuple[int, int] | None) -> ChildCredentials:
    """The credentials one child gets. child_ids is (uid, gid) when the child runs as
    another user than pgdr (root running programs as postgres), else None."""
    if password:
        return ChildCredentials({"PGPASSWORD": password})
    if program not in CLIENT_PROGRAMS:
        return ChildCredentials()
    from_env = os.environ.get("PGPASSWORD")
    if from_env:
        return ChildCredentials({"PGPASSWORD": from_env})
    named = _conninfo_passfile(args)
    if named is not None and (child_ids is None or _readable_by(named, *child_ids)):
        # the child reads it itself; and pg_basebackup -R must write it into the standby's
        # primary_conninfo unchanged (a standby's own passfile)
        return ChildCredentials()
    passfile = named if named is not None else _passfile_of_pgdr()
    if passfile is None or not os.access(passfile, os.R_OK):
        return ChildCredentials()
    if child_ids is None:
        return ChildCredentials({"PGPASSFILE": str(passfile)})
    user = target_of(args).get("user") or os.environ.get("PGUSER") or child_user or "postgres"
    entries = _entries_for(passfile, user)
    if not entries:
        return ChildCredentials()
    # a passfile= the child may not read is replaced by the private copy
    new_args = _without_passfile(args) if named is not None else None
    sweep_stale()
    private = Path(tempfile.mkdtemp(prefix=f"{PRIVATE_PREFIX}{os.getpid()}-"))
    try:
        os.chmod(private, 0o700)
        target = private / "pgpass"
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("\n".join(entries) + "\n")
        for path in (private, target):
            os.chown(path, *child_ids)
    except BaseException:
        shutil.rmtree(private, ignore_errors=True)
        raise
    return ChildCredentials({"PGPASSFILE": str(target)}, private, new_args)


# ---- errors that name what failed -----------------------------------------------------

_AUTH_RE = re.compile(r'(password|Peer|Ident|SCRAM|scram|md5) authentication failed for user "([^"]+)"')
_NO_PASSWORD = "no password supplied"
_PRIVILEGE_RE = re.compile(r"must be superuser or (have the )?(replication|REPLICATION)|permission denied to "
                           r"start WAL sender|must be superuser or replication role")


_DENIED_RE = re.compile(r'permission denied for (table|sequence|schema|view|materialized view|function|'
                        r'large object|database) "?([^"\s]+)"?')


def _where(target: dict[str, str]) -> str:
    host = target.get("host") or "the local socket"
    return f"{host}:{target['port']}" if target.get("port") else host


def auth_error(text: str, target: dict[str, str]) -> PgdrError | None:
    """An AuthenticationFailed / PrivilegeMissing for a program's stderr or libpq's message."""
    match = _AUTH_RE.search(text)
    if match:
        kind, user = match.group(1), match.group(2)
        how = "password" if kind in ("password", "SCRAM", "scram", "md5") else kind.lower()
        return AuthenticationFailed(f"{how} authentication failed for user {user} at {_where(target)}",
                                    hint=AUTH_HINT if how == "password" else
                                    f"pg_hba.conf uses {how} authentication for this connection: connect "
                                    "over TCP with a password, or run pgdr as that operating-system user")
    if _NO_PASSWORD in text:
        user = target.get("user") or "(default user)"
        return AuthenticationFailed(f"no password for user {user} at {_where(target)}", hint=AUTH_HINT)
    denied = _DENIED_RE.search(text)
    if denied:
        kind, name = denied.group(1), denied.group(2)
        user = target.get("user")
        who = f"role {user}" if user else "the role pgdr connects as"
        return PrivilegeMissing(
            f"{who} may not read {kind} {name}"
            + (f" at {_where(target)}" if target.get("port") else ""),
            hint=f"GRANT pg_read_all_data TO {user or '<role>'} (every table, PostgreSQL 14+), or grant "
                 f"{'USAGE' if kind == 'schema' else 'SELECT'} on {name}; on a managed database, "
                 "back up as its admin role")
    if _PRIVILEGE_RE.search(text):
        user = target.get("user") or "(default user)"
        return PrivilegeMissing(
            f"role {user} at {_where(target)} may not stream WAL: it has neither REPLICATION nor superuser",
            hint=f"ALTER ROLE {user} REPLICATION, or set mode = \"logical\" for a managed database "
                 "(logical backups only)")
    return None


def connect_error(conninfo: str, exc: psycopg.Error) -> PgdrError | None:
    """AuthenticationFailed for a psycopg connection error, by SQLSTATE or libpq's text."""
    from psycopg import errors as pgerrors

    try:
        target = {k: v for k, v in parse(conninfo).items() if k in ("host", "port", "user")}
    except PgdrError:
        target = {}
    text = str(exc)
    found = auth_error(text, target)
    if found is not None:
        return found
    if isinstance(exc, pgerrors.InvalidPassword | pgerrors.InvalidAuthorizationSpecification):
        user = target.get("user") or "(default user)"
        first = text.strip().splitlines()[0] if text.strip() else "authentication failed"
        return AuthenticationFailed(f"authentication failed for user {user} at {_where(target)}: {first}",
                                    hint=AUTH_HINT)
    return None
