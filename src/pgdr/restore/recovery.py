"""Recovery settings for a restored data directory, and waiting for recovery to end.

restore_command is, when the zstd program is installed, a one-line shell command
that decompresses <repository>/wal/%f.zst straight into %p (zstd verifies the frame
checksum, so a damaged segment fails exactly as with wal-fetch). Archive recovery
calls restore_command for every segment and every timeline-history probe even when
pg_wal already holds the file, and each `python -m pgdr wal-fetch` paid ~0.45 s of
interpreter start-up: most of the recovery time of a verify (bench_verify.py).

Without zstd it is `pgdr wal-fetch %f %p` with the config path spelled out, run by
the server as its own user: so the Python that runs it must be one that user can
execute. When pgdr runs from a root-only interpreter (pyenv under /root), a system
interpreter of the same version is used with pgdr's import paths.
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pgdr
from pgdr.config import load_config
from pgdr.errors import AuthenticationFailed, ConfigError, PgdrError, SandboxError
from pgdr.pg.connect import session
from pgdr.pg.instance import Instance, _quote
from pgdr.pg.programs import Programs, RunAs
from pgdr.repo.layout import Repository
from pgdr.restore.access import grant_pgdr_access
from pgdr.restore.extract import ExtractMethod, extract_physical

TargetKind = Literal["immediate", "latest", "time", "lsn", "xid", "name"]


@dataclass(frozen=True)
class RecoveryTarget:
    """Where recovery stops. 'immediate' = as soon as the backup is consistent; 'latest' =
    at the end of the available WAL."""

    kind: TargetKind = "immediate"
    value: str | None = None
    inclusive: bool = True
    action: Literal["promote", "pause", "shutdown"] = "promote"
    timeline: str = "latest"

    def settings(self) -> dict[str, str | int]:
        out: dict[str, str | int] = {"recovery_target_action": self.action,
                                     "recovery_target_timeline": self.timeline}
        if self.kind == "immediate":
            out["recovery_target"] = "immediate"
        elif self.kind == "latest":
            pass  # replay all the WAL there is, then act
        else:
            if self.value is None:
                raise ConfigError(f"recovery target {self.kind} needs a value")
            out[f"recovery_target_{self.kind}"] = self.value
            out["recovery_target_inclusive"] = "on" if self.inclusive else "off"
        return out


def _usable_by(path: Path, run_as: RunAs) -> bool:
    """Can the server user reach and execute path (every parent traversable)?"""
    if not run_as.active:
        return True
    uid, gid = run_as.ids()
    real = path.resolve()
    for p in [real, *real.parents]:
        try:
            st = p.stat()
        except OSError:
            return False
        bits = (stat.S_IXUSR if st.st_uid == uid else stat.S_IXGRP if st.st_gid == gid
                else stat.S_IXOTH)
        if not st.st_mode & bits:
            return False
    return True


def wal_fetch_command(config_path: Path, run_as: RunAs) -> str:
    """The restore_command line: `<python> -m pgdr --config <path> wal-fetch "%f" "%p"`."""
    python = Path(sys.executable)
    prefix = ""
    if not _usable_by(python, run_as):
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        candidates = [Path("/usr/bin") / version, Path("/usr/local/bin") / version]
        found = next((c for c in candidates if c.exists() and _usable_by(c, run_as)), None)
        if found is None:
            raise ConfigError(
                f"user {run_as.user} cannot run {python} (needed for restore_command)",
                hint=f"install pgdr where {run_as.user} can run it, or install {version} system-wide")
        python = found
        paths = [str(Path(pgdr.__file__).resolve().parent.parent),
                 sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
        prefix = "PYTHONPATH=" + shlex.quote(os.pathsep.join(dict.fromkeys(paths))) + " "
    return (f"{prefix}{shlex.quote(str(python))} -m pgdr --config "
            f"{shlex.quote(str(config_path.resolve()))} wal-fetch \"%f\" \"%p\"")


def _pg_escape(text: str) -> str:
    """restore_command substitutes %f/%p/%r; a literal % in a path must be %%."""
    return text.replace("%", "%%")


def zstd_fetch_command(wal_dir: Path, run_as: RunAs) -> str | None:
    """`zstd -d` of <wal_dir>/%f.zst into %p; None when zstd is missing or unusable.

    Exit status 1 when the file is absent (PostgreSQL's "not in the archive"); a
    damaged file makes zstd fail its checksum with status 1 too, and recovery then
    stops short of consistency, which the restore check reports.
    """
    zstd = shutil.which("zstd")
    if zstd is None or not _usable_by(Path(zstd), run_as):
        return None
    src = _pg_escape(shlex.quote(str(wal_dir.resolve()))) + '/"%f".zst'
    return f"test -f {src} && exec {_pg_escape(shlex.quote(zstd))} -q -d -f {src} -o \"%p\""


def write_recovery(data_dir: Path, settings: dict[str, str | int], run_as: RunAs) -> None:
    """Append settings to postgresql.auto.conf (which overrides postgresql.conf and any
    ALTER SYSTEM from the source) and create recovery.signal; drop standby.signal."""
    auto = data_dir / "postgresql.auto.conf"
    lines = [f"{key} = {_quote(value)}" for key, value in settings.items()]
    with open(auto, "a") as fh:
        fh.write("\n# restore settings written by pgdr\n" + "\n".join(lines) + "\n")
    signal_file = data_dir / "recovery.signal"
    signal_file.touch()
    (data_dir / "standby.signal").unlink(missing_ok=True)
    for path in (auto, signal_file):
        run_as.chown(path)
    # A crashed source leaves its pid file in the backup only in theory; be sure.
    (data_dir / "postmaster.pid").unlink(missing_ok=True)


def restore_physical(backup_dir: Path, instance: Instance,
                     programs: Programs, *, config_path: Path, target: RecoveryTarget,
                     extra_settings: dict[str, str | int] | None = None,
                     method: ExtractMethod | None = None, restore_command: str | None = None) -> float:
    """Extract a physical backup into instance.data_dir (new) and set it up to recover
    to target, fetching further WAL from the archive. Does not start the server."""
    seconds = extract_physical(backup_dir, instance.data_dir, programs,
                               **({"method": method} if method else {}))
    settings: dict[str, str | int] = dict(extra_settings or {})
    if restore_command is None:
        wal_dir = Repository(load_config(config_path).repository.path).wal_dir
        restore_command = zstd_fetch_command(wal_dir, programs.run_as) or wal_fetch_command(config_path, programs.run_as)
    settings["restore_command"] = restore_command
    settings.update(target.settings())
    settings.update(grant_pgdr_access(instance.data_dir, instance.socket_dir, programs.run_as))
    write_recovery(instance.data_dir, settings, programs.run_as)
    return seconds


def wait_until_promoted(instance: Instance, timeout: float = 600) -> dict[str, object]:
    """Wait for recovery to end; raise with the log's last lines if the server died."""
    deadline = time.monotonic() + timeout
    last_error = "not started"
    while time.monotonic() < deadline:
        if not instance.is_running():
            raise SandboxError(f"the restored server stopped during recovery: {_log_tail(instance)}")
        try:
            with session(instance.conninfo(), timeout=3) as conn:
                row = conn.execute("select pg_is_in_recovery() as in_recovery").fetchone()
                assert row is not None
                if not row["in_recovery"]:
                    info = conn.execute(
                        "select pg_current_wal_lsn()::text as lsn, "
                        "(select timeline_id from pg_control_checkpoint()) as checkpoint_timeline"
                    ).fetchone()
                    return dict(info or {})
        except AuthenticationFailed:
            raise  # waiting cannot fix credentials
        except PgdrError as exc:
            last_error = exc.message
        time.sleep(0.1)
    raise SandboxError(f"recovery did not finish within {timeout:.0f}s ({last_error})",
                       hint=f"see {instance.logfile}")


def _log_tail(instance: Instance, lines: int = 3) -> str:
    try:
        text = instance.logfile.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    interesting = [ln for ln in text if "FATAL" in ln or "PANIC" in ln or "ERROR" in ln]
    return " | ".join((interesting or text)[-lines:])
