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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pgdr
from pgdr.config import load_config
from pgdr.errors import AuthenticationFailed, ConfigError, PgdrError, SandboxError
from pgdr.pg.instance import Instance, _quote
from pgdr.pg.programs import Programs, RunAs
from pgdr.repo.layout import Repository
from pgdr.repo.manifest import BackupManifest, read_manifest
from pgdr.repo.wal import WAL_DAMAGED_EXIT
from pgdr.restore.access import bootstrap_superuser, grant_pgdr_access
from pgdr.restore.extract import (
    DEFAULT_METHOD,
    Extracted,
    ExtractMethod,
    check_links_inside,
    extract_physical,
    plan_tablespaces,
)
from pgdr.restore.prove import require_consistent, require_verified

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


def zstd_fetch_command(wal_dir: Path, run_as: RunAs, *, damaged_exit: int = WAL_DAMAGED_EXIT) -> str | None:
    """`zstd -d` of <wal_dir>/%f.zst into %p; None when zstd is missing or unusable.

    Exit status 1 when the file is absent (PostgreSQL's "not in the archive"); a
    damaged file fails zstd's checksum and the command exits 126, which makes
    PostgreSQL abort recovery instead of treating the damage as the archive's end.
    """
    zstd = shutil.which("zstd")
    if zstd is None or not _usable_by(Path(zstd), run_as):
        return None
    src = _pg_escape(shlex.quote(str(wal_dir.resolve()))) + '/"%f".zst'
    return (f"if [ -f {src} ]; then {_pg_escape(shlex.quote(zstd))} -q -d -f {src} -o \"%p\" "
            f"|| exit {damaged_exit}; else exit 1; fi")


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


def configure_recovery(data_dir: Path, places: dict[str, Path], programs: Programs, *,
                       config_path: Path, target: RecoveryTarget, socket_dir: Path,
                       extra_settings: dict[str, str | int] | None = None,
                       restore_command: str | None = None) -> None:
    """Recovery settings and signal file, then the last guard: no tablespace link may lead
    outside what this restore created."""
    settings: dict[str, str | int] = dict(extra_settings or {})
    if restore_command is None:
        wal_dir = Repository(load_config(config_path).repository.path).wal_dir
        restore_command = zstd_fetch_command(wal_dir, programs.run_as) or wal_fetch_command(config_path, programs.run_as)
    settings["restore_command"] = restore_command
    settings.update(target.settings())
    # pgdr's own way in (first pg_hba.conf line, private socket): after pg_verifybackup,
    # which must see the files as backed up
    settings.update(grant_pgdr_access(data_dir, socket_dir, programs.run_as))
    write_recovery(data_dir, settings, programs.run_as)
    check_links_inside(data_dir, places)


def restore_physical(backup_dir: Path, instance: Instance,
                     programs: Programs, *, config_path: Path, target: RecoveryTarget,
                     extra_settings: dict[str, str | int] | None = None,
                     method: ExtractMethod | None = None, restore_command: str | None = None,
                     manifest: BackupManifest | None = None,
                     tablespace_map: dict[str, Path] | None = None, checks: bool = True) -> Extracted:
    """Extract a physical backup into instance.data_dir (new), proving every file while it
    streams, run pg_verifybackup and cross-check pgdr.json with what PostgreSQL wrote,
    then set it up to recover to target. Does not start the server. On failure nothing
    extracted is left behind."""
    manifest = manifest or read_manifest(backup_dir)
    places = plan_tablespaces(manifest, instance.data_dir, tablespace_map)
    done = extract_physical(backup_dir, instance.data_dir, programs, method or DEFAULT_METHOD,
                            manifest=manifest, tablespaces=places, checks=checks)
    try:
        if checks:
            # both only read the extracted files: side by side, pg_verifybackup's verdict first
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pgdr-prove") as pool:
                consistent = pool.submit(require_consistent, backup_dir, instance.data_dir, manifest, programs)
                require_verified(backup_dir, instance.data_dir, programs)
                consistent.result()
        configure_recovery(instance.data_dir, places, programs, config_path=config_path, target=target,
                           socket_dir=instance.socket_dir,
                           extra_settings=extra_settings, restore_command=restore_command)
        instance.superuser = bootstrap_superuser(instance.data_dir)  # reached as its own superuser
    except BaseException:
        remove_restored(instance.data_dir, places)
        raise
    return done


def remove_restored(data_dir: Path, places: dict[str, Path]) -> None:
    """Remove a restored data directory and the tablespace folders it was given."""
    shutil.rmtree(data_dir, ignore_errors=True)
    for place in places.values():
        shutil.rmtree(place, ignore_errors=True)


def wait_until_promoted(instance: Instance, timeout: float = 600) -> dict[str, object]:
    """Wait for recovery to end; raise with the log's last lines if the server died."""
    from pgdr.pg.connect import session

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
