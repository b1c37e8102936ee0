"""The one wrapper for PostgreSQL's programs (Barman's command_wrappers, smaller).

Every external program pgdr runs goes through here, so that all of them:
- resolve from one bindir (configurable, default: the newest installed PostgreSQL),
- run as the data directory's owner when pgdr itself runs as root (PostgreSQL
  refuses root),
- run with LANG=C so their output can be parsed,
- get the credentials pgdr was given, never on the command line, and never prompt
  (pg/credentials.py),
- fail with a PgdrError that carries the program's last stderr line.
"""

from __future__ import annotations

import ctypes
import logging
import os
import pwd
import shutil
import signal
import subprocess
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgdr.errors import ConfigError, ProgramFailed
from pgdr.pg import credentials
from pgdr.pg.conninfo import mask_text

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


def _die_with_parent() -> None:
    """Children (pg_receivewal, servers' pg_ctl) must not outlive a killed pgdr parent."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


@dataclass
class Result:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str


class Programs:
    """Runs PostgreSQL programs from one bindir as one user."""

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

    def _env(self, password: str | None, extra: Mapping[str, str] | None) -> dict[str, str]:
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

    def _credentials(self, program: str, args: Sequence[str], password: str | None,
                     as_server_user: bool) -> credentials.ChildCredentials:
        other_user = as_server_user and self.run_as.active
        return credentials.prepare(program, args, password, child_user=self.run_as.user,
                                   child_ids=self.run_as.ids() if other_user else None)

    def _user_kwargs(self, as_server_user: bool) -> dict[str, Any]:
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
    ) -> Result:
        """Run to completion; raise ProgramFailed (with stderr's gist) on a bad exit code."""
        argv = [self.path(program), *credentials.no_prompt_args(program), *args]
        log.debug("run: %s", mask_text(" ".join(argv)))
        creds = self._credentials(program, args, password, as_server_user)
        stdout_file = open(stdout_path, "wb") if stdout_path else None  # noqa: SIM115
        try:
            proc = subprocess.run(
                argv,
                stdout=stdout_file or subprocess.PIPE,
                stderr=subprocess.PIPE,
                input=input_text.encode() if input_text is not None else None,
                env={**self._env(None, env), **creds.env},
                cwd="/",
                timeout=timeout,
                preexec_fn=_die_with_parent,
                **self._user_kwargs(as_server_user),
            )
        except subprocess.TimeoutExpired:
            raise ProgramFailed(f"{program} did not finish within {timeout:.0f}s") from None
        finally:
            creds.close()
            if stdout_file:
                stdout_file.close()
        stdout = proc.stdout.decode(errors="replace") if proc.stdout else ""
        stderr = proc.stderr.decode(errors="replace")
        for line in stderr.splitlines():
            log.debug("%s: %s", program, mask_text(line))
        if proc.returncode not in ok_codes:
            refused = credentials.auth_error(stderr, credentials.target_of(args))
            if refused is not None:
                raise refused
            raise ProgramFailed(f"{program} failed: {summarize_stderr(stderr, proc.returncode)}")
        return Result(argv, proc.returncode, stdout, stderr)

    def spawn(
        self,
        program: str,
        args: Sequence[str],
        *,
        password: str | None = None,
        log_path: Path | None = None,
        as_server_user: bool = True,
        new_session: bool = False,
        die_with_parent: bool = True,
    ) -> subprocess.Popen[bytes]:
        """Start a long-running program (pg_receivewal, pgbench) and return its handle.
        A private passfile it was given is removed when the handle is dropped."""
        argv = [self.path(program), *credentials.no_prompt_args(program), *args]
        log.debug("spawn: %s", mask_text(" ".join(argv)))
        creds = self._credentials(program, args, password, as_server_user)
        out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            child = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT if log_path else subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                env={**self._env(None, None), **creds.env},
                cwd="/",
                start_new_session=new_session,
                preexec_fn=_die_with_parent if die_with_parent else None,
                **self._user_kwargs(as_server_user),
            )
        except BaseException:
            creds.close()
            raise
        else:
            weakref.finalize(child, creds.close)
            return child
        finally:
            if log_path and not isinstance(out, int):
                out.close()


def summarize_stderr(stderr: str, returncode: int) -> str:
    """The most telling line of a PostgreSQL program's stderr, passwords masked."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for prefix in ("error:", "FATAL:", "fatal:", "ERROR:"):
        for line in lines:
            if prefix in line:
                return mask_text(line)
    return mask_text(lines[-1]) if lines else f"exit code {returncode}"
