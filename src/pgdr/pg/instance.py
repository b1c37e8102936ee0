"""A PostgreSQL instance on this machine: the shape of PostgreSQL's own Cluster.pm.

init, start, stop, promote, kill, configure, init-standby-from: the sandbox, the
scratch instances that restores and verifications start, and every multi-node
test use this one object. Servers it configures listen on a unix socket and
127.0.0.1 only.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from pgdr.errors import SandboxError
from pgdr.pg.children import REGISTRY, is_alive, postmaster_of, start_time, wait_gone
from pgdr.pg.conninfo import make_conninfo
from pgdr.pg.process import Watchdog, dir_progress
from pgdr.pg.programs import Programs

# A restored or scratch copy must never act as part of the cluster it came from: no
# archiving into its repository, no replication to or from its nodes, and none of the
# source's own recovery commands: a standby's archive_cleanup_command (run at every
# restartpoint, the shutdown one too) would remove segments from the live archive, and
# recovery_end_command runs whatever the source ran at its promotion.
DETACHED_SETTINGS: dict[str, str | int] = {
    "archive_mode": "off",
    "archive_command": "",
    "archive_cleanup_command": "",
    "recovery_end_command": "",
    "primary_conninfo": "",
    "primary_slot_name": "",
    "synchronous_standby_names": "",
    "hot_standby": "on",
    "logging_collector": "off",
}


SOCKET_PATH_MAX = 90  # sun_path is 108 bytes; leave room for "/.s.PGSQL.NNNNN"


def check_traversable(path: Path, programs: Programs) -> None:
    """The server user must reach the folder: pytest's tmp_path, /root, … often forbid it."""
    if not programs.run_as.active:
        return
    uid, gid = programs.run_as.ids()
    for parent in [path, *path.parents]:
        if not parent.exists():
            continue
        st = parent.stat()
        if st.st_uid == uid:
            ok = bool(st.st_mode & stat.S_IXUSR)
        elif st.st_gid == gid:
            ok = bool(st.st_mode & stat.S_IXGRP)
        else:
            ok = bool(st.st_mode & stat.S_IXOTH)
        if not ok:
            raise SandboxError(
                f"user {programs.run_as.user} cannot enter {parent} (mode {stat.filemode(st.st_mode)})",
                hint="choose a folder under one it can traverse, e.g. /tmp or /srv")


def free_port() -> int:
    """A TCP port nobody listens on now (127.0.0.1); the race window is accepted."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Instance:
    name: str
    data_dir: Path
    port: int
    socket_dir: Path
    programs: Programs = field(default_factory=Programs)
    log_file: Path | None = None
    # A supervised server (a scratch instance, a recovering restore) is recorded as this
    # pgdr's before it starts: pgdr stops it on every exit path, and the next pgdr stops
    # it if this one was SIGKILLed (pg_ctl puts the postmaster in a session of its own,
    # out of reach of the process-group guard). release() hands it over.
    supervised: bool = False
    # The bootstrap superuser (initdb -U): "postgres" on Debian, POSTGRES_USER in the
    # official container image. A restored copy is reached as its source's own.
    superuser: str = "postgres"
    # Added to the postmaster's environment (and so every backend's) when pgdr starts it;
    # see Scratch.create.
    server_env: dict[str, str] = field(default_factory=dict)
    _watchdog: Watchdog | None = field(default=None, repr=False, compare=False)

    @property
    def logfile(self) -> Path:
        return self.log_file or self.data_dir.parent / f"{self.name}.log"

    def conninfo(self, dbname: str = "postgres", user: str | None = None) -> str:
        return make_conninfo(host=str(self.socket_dir), port=self.port, dbname=dbname,
                             user=user or self.superuser)

    # ---- lifecycle -------------------------------------------------------------
    def initdb(self, *, checksums: bool = True) -> None:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.programs.run_as.chown(self.data_dir.parent)
        args = ["-D", str(self.data_dir), "-U", "postgres", "--auth-local=trust",
                "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-instructions"]
        if checksums:
            args.append("--data-checksums")
        self.programs.run("initdb", args, timeout=120)

    def configure(self, settings: dict[str, str | int]) -> None:
        """Append settings to postgresql.conf: the last occurrence wins, so this overrides."""
        lines = [f"{key} = {_quote(value)}" for key, value in settings.items()]
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write("\n# set by pgdr\n" + "\n".join(lines) + "\n")

    def local_settings(self) -> dict[str, str | int]:
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        self.programs.run_as.chown(self.socket_dir)
        return {
            "port": self.port,
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.socket_dir),
            "unix_socket_permissions": "0700",
        }

    def pid(self) -> int | None:
        """The postmaster's pid when it is alive, read from postmaster.pid."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None
        # A SIGKILLed postmaster stays a zombie until its parent reaps it, and a container's
        # init may never do so: a zombie is not running.
        return pid if is_alive(pid) else None

    def is_running(self) -> bool:
        return self.pid() is not None

    def start(self, *, timeout: int = 60) -> None:
        if self.is_running():
            return
        self.logfile.parent.mkdir(parents=True, exist_ok=True)
        if not self.logfile.exists():
            self.logfile.touch()
        self.programs.run_as.chown(self.logfile)
        if self.supervised:
            REGISTRY.add_server(self.data_dir, self.name)
            if self._watchdog is None:
                self._watchdog = Watchdog(self.data_dir)
        launched = time.time()
        log_start = self.logfile.stat().st_size
        try:
            # -W: pg_ctl only launches; pgdr waits itself (_wait_started), as pg_ctl -w
            # looks at postmaster.pid only every 100 ms (50 ms lost per start on average)
            self.programs.run("pg_ctl", ["-D", str(self.data_dir), "-l", str(self.logfile), "-W", "start"],
                              env=self.server_env or None, timeout=60)
            self._wait_started(launched, log_start, timeout)
        except Exception as exc:
            cause = self._log_cause(log_start)
            raise SandboxError(f"{self.name} did not start: {exc}" + (f" ({cause})" if cause else "")
                               + f"; see {self.logfile}") from None

    def _wait_started(self, launched: float, log_start: int, timeout: float) -> None:
        """Until the postmaster launched at `launched` says "ready" or "standby" in
        postmaster.pid: pg_ctl -w's own test (a pid file written since the launch, by a
        live postmaster running from this data directory, and its status line), looked at
        every 5 ms at first and at most every 50 ms. A postmaster that wrote its pid file
        and died, or that logged FATAL or PANIC before writing one (a bad setting, a port
        in use), ends the wait at once; otherwise it lasts at most `timeout` seconds. A
        pid file left by a crashed server is ignored until the new one replaces it."""
        deadline = time.monotonic() + timeout
        delay = 0.005
        status = "no postmaster.pid yet"
        while True:
            try:
                lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
                pid, started = int(lines[0]), int(lines[2])
            except (OSError, ValueError, IndexError):
                lines, pid, started = [], 0, 0
            if lines and started >= launched - 2:  # pg_ctl's slack for the clock
                if postmaster_of(self.data_dir) == pid:
                    status = lines[7].strip() if len(lines) >= 8 else "starting"
                    if status in ("ready", "standby"):
                        return
                elif started >= int(launched):
                    raise SandboxError("the postmaster exited while starting")
            elif self._log_cause(log_start) is not None:
                raise SandboxError("the postmaster exited while starting")
            if time.monotonic() >= deadline:
                raise SandboxError(f"not ready within {timeout:.0f}s (postmaster.pid: {status})")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.05)

    def _log_cause(self, since: int = 0) -> str | None:
        """The server log's last FATAL/PANIC line after byte `since` (e.g. 'No space left
        on device')."""
        try:
            with open(self.logfile, "rb") as fh:
                fh.seek(max(since, fh.seek(0, os.SEEK_END) - 16384))
                lines = fh.read().decode(errors="replace").splitlines()
        except OSError:
            return None
        bad = [ln for ln in lines if "FATAL:" in ln or "PANIC:" in ln]
        if not bad:
            return None
        return bad[-1].split("FATAL:" if "FATAL:" in bad[-1] else "PANIC:", 1)[1].strip()

    def stop(self, *, mode: str = "fast", timeout: int = 60) -> None:
        if not self.is_running():
            return
        self.programs.run("pg_ctl", ["-D", str(self.data_dir), "-m", mode, "-w",
                                     "-t", str(timeout), "stop"], ok_codes=(0, 1),
                          timeout=timeout + 10)
        if self.supervised and not self.is_running():
            self.release()

    def release(self) -> None:
        """Hand a supervised server over: it keeps running after pgdr exits."""
        if self._watchdog is not None:
            self._watchdog.release()
            self._watchdog = None
        REGISTRY.release_server(self.data_dir)

    def kill9(self) -> None:
        """SIGKILL the postmaster: a real crash, as a failing machine would."""
        pid = self.pid()
        if pid:
            started = start_time(pid)
            os.kill(pid, signal.SIGKILL)
            wait_gone(pid, started, 10)

    def promote(self, *, timeout: int = 60) -> None:
        self.programs.run("pg_ctl", ["-D", str(self.data_dir), "-w", "-t", str(timeout),
                                     "promote"], timeout=timeout + 10)

    # ---- replication -----------------------------------------------------------
    def init_standby_from(self, primary: Instance, slot: str, *, stall_timeout: float = 120) -> None:
        """pg_basebackup -R from a running primary, with a physical slot of its own; a copy
        that writes nothing for stall_timeout seconds (a stopped primary) is ended."""
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.programs.run_as.chown(self.data_dir.parent)
        self.programs.run("pg_basebackup", [
            "-d", primary.conninfo(), "-D", str(self.data_dir), "-R", "-X", "stream",
            "-C", "-S", slot, "--checkpoint=fast", "--no-sync"], timeout=600,
            stall_timeout=stall_timeout, progress=dir_progress(self.data_dir),
            stalled_what=f"nothing written to {self.data_dir} by {primary.name}")
        # primary_conninfo written by -R names the primary's socket; add our name so
        # pg_stat_replication shows which standby is which.
        auto = self.data_dir / "postgresql.auto.conf"
        text = auto.read_text().replace("primary_conninfo = '", f"primary_conninfo = 'application_name={self.name} ", 1)
        auto.write_text(text)


def _quote(value: str | int) -> str:
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"
