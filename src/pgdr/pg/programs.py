"""The one wrapper for PostgreSQL's programs (Barman's command_wrappers, smaller).

Every external program pgdr runs goes through here, so that all of them:
- resolve from the bindir of the server's own major version ([pg] bindir, else
  /usr/lib/postgresql/<major>/bin, else PATH; a mismatch is refused),
- run as the data directory's owner when pgdr itself runs as root (PostgreSQL
  refuses root),
- run with LANG=C so their output can be parsed,
- get the credentials pgdr was given (pg/credentials.py), never on the command
  line, and never prompt,
- fail with a PgdrError that carries the program's last stderr line,
- and run through pgdr.pg.process: own process group, tracked, ended with pgdr.
"""

from __future__ import annotations

import functools
import logging
import os
import pwd
import re
import shutil
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pgdr.errors import ConfigError, PgdrError, ProgramFailed
from pgdr.pg import credentials, process
from pgdr.pg.process import Completed, summarize_stderr

__all__ = ["Completed", "Programs", "Result", "RunAs", "bindir_major", "default_bindir", "major_of",
           "summarize_stderr"]

log = logging.getLogger(__name__)

SECRET_ENV = ("PGPASSWORD", "PGDR_SECRET")


DISTRIBUTION_BINDIRS = Path("/usr/lib/postgresql")


def _distribution_bindir(major: int | None) -> Path | None:
    """/usr/lib/postgresql/<major>/bin (Debian, Ubuntu); the newest one when major is None."""
    if not DISTRIBUTION_BINDIRS.is_dir():
        return None
    if major is not None:
        candidate = DISTRIBUTION_BINDIRS / str(major) / "bin"
        return candidate if (candidate / "pg_ctl").exists() else None
    versions = sorted((p for p in DISTRIBUTION_BINDIRS.iterdir()
                       if p.name.isdigit() and (p / "bin" / "pg_ctl").exists()), key=lambda p: int(p.name))
    return versions[-1] / "bin" if versions else None


def default_bindir(major: int | None = None) -> Path:
    """The bindir for a server of this major version (None: the newest installed):
    the distribution's per-version directory, else wherever pg_ctl is on PATH."""
    found_dir = _distribution_bindir(major)
    if found_dir is not None:
        return found_dir
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    raise ConfigError(
        "PostgreSQL programs not found" + (f" for version {major}" if major else ""),
        hint=f"install postgresql-client-{major or 15} (apt-get) or set [pg] bindir in pgdr.toml")


@functools.lru_cache(maxsize=16)
def bindir_major(bindir: Path) -> int | None:
    """The major version of the programs in bindir: from /usr/lib/postgresql/<N>/bin, else
    from `pg_ctl --version` (run once per bindir)."""
    if bindir.parent.parent == DISTRIBUTION_BINDIRS and bindir.parent.name.isdigit():
        return int(bindir.parent.name)
    tool = next((bindir / t for t in ("pg_ctl", "pg_basebackup", "pg_dump") if (bindir / t).exists()), None)
    if tool is None:
        return None
    try:
        out = process.run([str(tool), "--version"], env={"LANG": "C", "PATH": "/usr/bin:/bin"}).stdout
    except PgdrError:
        return None
    match = re.search(r"\) (\d+)(?:\.|devel|beta|rc)", out)
    return int(match.group(1)) if match else None


def major_of(*, version_num: int | str | None = None, data_dir: Path | None = None) -> int | None:
    """A server's major version: from server_version_num (150004 → 15) or PG_VERSION."""
    if version_num is not None:
        return int(version_num) // 10000
    if data_dir is not None:
        try:
            return int((data_dir / "PG_VERSION").read_text().strip().split(".")[0])
        except (OSError, ValueError):
            return None
    return None


@dataclass(frozen=True)
class RunAs:
    """Who server-side programs run as: only meaningful when pgdr runs as root."""

    user: str = "postgres"

    @property
    def active(self) -> bool:
        return os.geteuid() == 0

    def ids(self) -> tuple[int, int]:
        try:
            entry = pwd.getpwnam(self.user)
        except KeyError:
            raise ConfigError(
                f"operating-system user {self.user!r} does not exist",
                hint="PostgreSQL refuses to run as root; create the user or set pg.os_user",
            ) from None
        return entry.pw_uid, entry.pw_gid

    def chown(self, path: Path) -> None:
        """Give a path pgdr created to the server user, so its programs can write it."""
        if self.active:
            uid, gid = self.ids()
            os.chown(path, uid, gid)


Result = Completed


class Programs:
    """Runs PostgreSQL programs from one bindir as one user, through pgdr.pg.process.

    `Programs(configured_bindir)` is for work that has no server yet; for a server,
    `programs.for_server(version_num=…)` or `for_server(data_dir=…)` gives the programs
    of that server's own major version, and refuses a mismatch with one line.
    """

    def __init__(self, bindir: Path | None = None, run_as: RunAs | None = None) -> None:
        self.configured = bindir
        self.bindir = bindir or default_bindir()
        self.run_as = run_as or RunAs()

    def for_server(self, *, version_num: int | str | None = None, data_dir: Path | None = None,
                   what: str = "the server") -> Programs:
        """The programs for a server of this version: [pg] bindir if set (checked), else
        /usr/lib/postgresql/<major>/bin, else PATH (checked). Raises ConfigError on a mismatch."""
        major = major_of(version_num=version_num, data_dir=data_dir)
        if major is None:
            return self
        bindir = self.configured or default_bindir(major)
        have = bindir_major(bindir)
        if have is not None and have != major:
            source = "[pg] bindir" if self.configured else "PATH"
            raise ConfigError(
                f"{what} runs PostgreSQL {major}, but the programs in {bindir} ({source}) are version {have}",
                hint=f"install postgresql-client-{major} (or the server package) or set [pg] bindir "
                     f"to its bin folder")
        clone = Programs(bindir, self.run_as)
        clone.configured = self.configured
        return clone

    def path(self, program: str) -> str:
        candidate = self.bindir / program
        if candidate.exists():
            return str(candidate)
        found = shutil.which(program)
        if found:
            return found
        raise ConfigError(f"program {program} not found in {self.bindir}")

    def env(self, password: str | None = None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment for a child: secrets removed, LANG=C, the server user's HOME."""
        env = {k: v for k, v in os.environ.items() if k not in SECRET_ENV}
        env.update({"LANG": "C", "LC_ALL": "C", "LC_MESSAGES": "C"})
        if self.run_as.active:
            env["HOME"] = pwd.getpwnam(self.run_as.user).pw_dir
            env["USER"] = env["LOGNAME"] = self.run_as.user
        if password:
            env["PGPASSWORD"] = password
        if extra:
            env.update(extra)
        return env

    def user_kwargs(self, as_server_user: bool) -> dict[str, Any]:
        if as_server_user and self.run_as.active:
            uid, gid = self.run_as.ids()
            return {"user": uid, "group": gid, "extra_groups": []}
        return {}

    def run(
        self,
        program: str,
        args: Sequence[str],
        *,
        ok_codes: Sequence[int] = (0,),
        password: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        as_server_user: bool = True,
        stdout_path: Path | None = None,
        input_text: str | None = None,
        stall_timeout: float | None = None,
        progress: Callable[[], object] | None = None,
        stalled_what: str | None = None,
        cancel: threading.Event | None = None,
        feed: Callable[[IO[bytes]], None] | None = None,
        stdin_fd: int | None = None,
        stdout_fd: int | None = None,
        on_start: Callable[[], object] | None = None,
    ) -> Completed:
        """Run to completion; raise ProgramFailed (with stderr's gist) on a bad exit code,
        Stalled when stall_timeout passes without progress, Cancelled on shutdown."""
        creds = self._credentials(program, args, password, as_server_user)
        try:
            return process.run(
                [self.path(program), *credentials.no_prompt_args(program),
                 *(creds.args if creds.args is not None else args)], name=program,
                env={**self.env(None, env), **creds.env},
                user_kwargs=self.user_kwargs(as_server_user), ok_codes=ok_codes, timeout=timeout,
                stdout_path=stdout_path, input_bytes=input_text.encode() if input_text is not None else None,
                stall_timeout=stall_timeout, progress=progress, stalled_what=stalled_what, cancel=cancel,
                feed=feed, stdin_fd=stdin_fd, stdout_fd=stdout_fd, on_start=on_start)
        except ProgramFailed as exc:
            refused = credentials.auth_error(exc.message, credentials.target_of(args))
            if refused is not None:
                raise refused from None
            raise
        finally:
            creds.close()

    def _credentials(self, program: str, args: Sequence[str], password: str | None,
                     as_server_user: bool) -> credentials.ChildCredentials:
        """pg/credentials.py: what the child needs to log in without a prompt."""
        other_user = as_server_user and self.run_as.active
        return credentials.prepare(program, args, password, child_user=self.run_as.user,
                                   child_ids=self.run_as.ids() if other_user else None)

    def spawn(
        self,
        program: str,
        args: Sequence[str],
        *,
        password: str | None = None,
        log_path: Path | None = None,
        as_server_user: bool = True,
    ) -> process.Child:
        """Start a long-running program (pg_receivewal) in its own registered group."""
        creds = self._credentials(program, args, password, as_server_user)
        try:
            child = process.spawn([self.path(program), *credentials.no_prompt_args(program),
                                   *(creds.args if creds.args is not None else args)],
                                  name=program, env={**self.env(None, None), **creds.env},
                                  user_kwargs=self.user_kwargs(as_server_user), log_path=log_path)
        except BaseException:
            creds.close()
            raise
        weakref.finalize(child, creds.close)  # the private passfile goes with the child
        return child
