"""Redis's own programs (redis-cli, redis-server, redis-check-rdb), run through
pgdr.pg.process like PostgreSQL's: own process group, tracked, ended with pgdr,
LANG=C, no secret in the environment except REDISCLI_AUTH when the caller gives it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from pgdr.errors import ConfigError
from pgdr.pg import process
from pgdr.rdb.target import SECRET_ENV


def path_of(program: str) -> str:
    found = shutil.which(program) or next((str(p) for p in (Path("/usr/bin") / program, Path("/usr/sbin") / program)
                                           if p.exists()), None)
    if found is None:
        package = "redis-server" if program == "redis-server" else "redis-tools"
        raise ConfigError(f"program {program} not found", hint=f"install it: apt-get install {package}")
    return found


def env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k not in SECRET_ENV}
    out.update({"LANG": "C", "LC_ALL": "C"})
    if extra:
        out.update(extra)
    return out


def run(program: str, args: Sequence[str], *, extra_env: Mapping[str, str] | None = None,
        timeout: float, ok_codes: Sequence[int] = (0,), stall_timeout: float | None = None,
        stalled_what: str | None = None, progress_path: Path | None = None) -> process.Completed:
    progress = None
    if progress_path is not None:
        def progress() -> object:
            try:
                return progress_path.stat().st_size
            except FileNotFoundError:
                return None
    return process.run([path_of(program), *args], name=program, env=env(extra_env), timeout=timeout,
                       ok_codes=ok_codes, stall_timeout=stall_timeout, stalled_what=stalled_what,
                       progress=progress)


def spawn(program: str, args: Sequence[str], *, log_path: Path, cwd: str = "/") -> process.Child:
    return process.spawn([path_of(program), *args], name=program, env=env(), log_path=log_path, cwd=cwd)
