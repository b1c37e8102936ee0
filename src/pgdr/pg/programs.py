"""The one wrapper for PostgreSQL's programs (Barman's command_wrappers, smaller).

Every external program pgdr runs goes through here, so that all of them:
- resolve from one bindir (configurable, default: the newest installed PostgreSQL),
- run as the data directory's owner when pgdr itself runs as root (PostgreSQL
  refuses root),
- run with LANG=C so their output can be parsed,
- get the credentials pgdr was given (pg/credentials.py), never on the command
  line, and never prompt,
- fail with a PgdrError that carries the program's last stderr line,
- and run through pgdr.pg.process: own process group, tracked, ended with pgdr.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pgdr.errors import ConfigError, ProgramFailed
from pgdr.pg import credentials, process
from pgdr.pg.process import Completed, summarize_stderr

__all__ = ["Completed", "Programs", "Result", "RunAs", "default_bindir", "summarize_stderr"]

log = logging.getLogger(__name__)

SECRET_ENV = ("PGPASSWORD", "PGDR_SECRET")


def default_bindir() -> Path:
    """The newest /usr/lib/postgresql/N/bin, else wherever pg_ctl is on PATH."""
    base = Path("/usr/lib/postgresql")
    if base.is_dir():
        versions = sorted(
            (p for p in base.iterdir() if (p / "bin" / "pg_ctl").exists()),
            key=lambda p: int(p.name) if p.name.isdigit() else 0,
        )
        if versions:
            return versions[-1] / "bin"
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    raise ConfigError(
        "PostgreSQL programs not found",
        hint="install PostgreSQL (apt-get install postgresql-15) or set pg.bindir in pgdr.toml",
    )


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
    """Runs PostgreSQL programs from one bindir as one user, through pgdr.pg.process."""

    def __init__(self, bindir: Path | None = None, run_as: RunAs | None = None) -> None:
        self.bindir = bindir or default_bindir()
        self.run_as = run_as or RunAs()

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
    ) -> Completed:
        """Run to completion; raise ProgramFailed (with stderr's gist) on a bad exit code,
        Stalled when stall_timeout passes without progress, Cancelled on shutdown."""
        creds = self._credentials(program, args, password, as_server_user)
        try:
            return process.run(
                [self.path(program), *credentials.no_prompt_args(program), *args], name=program,
                env={**self.env(None, env), **creds.env},
                user_kwargs=self.user_kwargs(as_server_user), ok_codes=ok_codes, timeout=timeout,
                stdout_path=stdout_path, input_bytes=input_text.encode() if input_text is not None else None,
                stall_timeout=stall_timeout, progress=progress, stalled_what=stalled_what, cancel=cancel,
                feed=feed)
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
            child = process.spawn([self.path(program), *credentials.no_prompt_args(program), *args],
                                  name=program, env={**self.env(None, None), **creds.env},
                                  user_kwargs=self.user_kwargs(as_server_user), log_path=log_path)
        except BaseException:
            creds.close()
            raise
        weakref.finalize(child, creds.close)  # the private passfile goes with the child
        return child
