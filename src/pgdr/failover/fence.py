"""Fencing: the old primary must not come back as a writable primary.

Local data directory: stop it (immediate: it has failed, there is nothing to
flush that a standby could use) and leave a standby.signal, so that even a
`systemctl start` brings it up read-only. Elsewhere: the configured fence command
(STONITH, cloud API, firewall rule). Otherwise refuse, unless --no-fence.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from pgdr.config import Config, NodeConfig
from pgdr.errors import PgdrError, ProgramFailed
from pgdr.fsutil import fsync_path
from pgdr.pg import process
from pgdr.pg.conninfo import mask, split_password
from pgdr.pg.instance import Instance
from pgdr.pg.programs import Programs


class FenceRefused(PgdrError):
    """The old primary cannot be fenced, so promoting could create two primaries."""


@dataclass
class FenceResult:
    method: str
    detail: str


def local_instance(node: NodeConfig, programs: Programs) -> Instance | None:
    if node.data_dir is None or not (node.data_dir / "PG_VERSION").exists():
        return None
    from pgdr.pg.conninfo import parse

    params = parse(node.conninfo)
    return Instance(node.name, node.data_dir, int(params.get("port", 5432)),
                    Path(params.get("host", "/var/run/postgresql")), programs, log_file=node.log_file)


def mark_standby(data_dir: Path, programs: Programs) -> None:
    """standby.signal, durable: fsynced with its directory, so a power cut cannot drop it."""
    signal_file = data_dir / "standby.signal"
    signal_file.touch()
    programs.run_as.chown(signal_file)
    fsync_path(signal_file)
    fsync_path(data_dir)


def _boot_time() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return 0.0


def postmaster_alive(data_dir: Path) -> tuple[bool, str]:
    """Is the postmaster named in postmaster.pid still running? (alive, why).

    The pid alone can be reused, so its start time in /proc must match the start time
    PostgreSQL wrote into postmaster.pid; a zombie has exited and counts as dead.
    """
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
        pid, started = int(lines[0]), float(lines[2])
    except FileNotFoundError:
        return False, "no postmaster.pid"
    except (OSError, ValueError, IndexError):
        return False, "postmaster.pid unreadable"
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False, f"pid {pid} is gone"
    fields = stat.rsplit(")", 1)[1].split()
    state, start_ticks = fields[0], int(fields[19])
    if state in ("Z", "X"):
        return False, f"pid {pid} is a zombie"
    proc_started = _boot_time() + start_ticks / os.sysconf("SC_CLK_TCK")
    if abs(proc_started - started) > 2:
        return False, f"pid {pid} now belongs to another process"
    return True, f"pid {pid} ({'stopped' if state == 'T' else 'running'})"


def clear_stale_pidfile(data_dir: Path) -> str | None:
    """Remove a postmaster.pid whose postmaster is provably gone, and say so.

    A SIGKILLed postmaster stays a zombie until init reaps it, which on some machines is
    late or never; PostgreSQL's own stale-lock test (kill(pid, 0)) succeeds on a zombie,
    so pg_rewind's single-user crash recovery refuses with "lock file postmaster.pid
    already exists". Removed only when the postmaster is dead (zombie, gone, or its pid
    reused) and no server process of that data directory is left; otherwise kept.
    """
    pidfile = data_dir / "postmaster.pid"
    if not pidfile.exists():
        return None
    alive, why = postmaster_alive(data_dir)
    if alive or _orphans(data_dir):
        return None
    socket_lock = _socket_lock_of(pidfile)
    pidfile.unlink(missing_ok=True)
    fsync_path(data_dir)
    if socket_lock is not None:
        # the same zombie named in the socket's lock file makes the next start fail with
        # 'lock file ".s.PGSQL.<port>.lock" already exists'
        socket_lock.unlink(missing_ok=True)
        return f"removed a stale postmaster.pid and {socket_lock.name} ({why})"
    return f"removed a stale postmaster.pid ({why})"


def _socket_lock_of(pidfile: Path) -> Path | None:
    """The unix socket's lock file that names the same postmaster as postmaster.pid
    (line 1 pid, line 4 port, line 5 socket directory), if there is one."""
    try:
        lines = pidfile.read_text().splitlines()
        pid, port, socket_dir = lines[0].strip(), lines[3].strip(), lines[4].strip()
    except (OSError, IndexError):
        return None
    if not socket_dir:
        return None
    lock = Path(socket_dir) / f".s.PGSQL.{port}.lock"
    try:
        holder = lock.read_text().splitlines()[0].strip()
    except (OSError, IndexError):
        return None
    return lock if holder == pid else None


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    return out


def _orphans(data_dir: Path) -> list[int]:
    """Server processes left behind by a dead postmaster: every backend, walsender and
    background worker runs with the data directory as its working directory. Until they
    notice their postmaster is gone they still serve the sessions they have — and can
    acknowledge commits the new primary will never see."""
    target = data_dir.resolve()
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if Path(os.readlink(entry / "cwd")) == target:
                    out.append(int(entry.name))
            except OSError:
                continue
    return out


def _kill_orphans(data_dir: Path) -> str:
    orphans = _orphans(data_dir)
    for pid in orphans:
        _kill(pid)
    return f"; SIGKILLed {len(orphans)} leftover server process(es)" if orphans else ""


def stop_verified(inst: Instance, timeout: float = 10) -> str:
    """Stop a failed primary for good and prove it: the postmaster is gone, or pg_control
    says it shut down. pg_ctl's word is not enough (exit 1 means "did not shut down");
    a postmaster that does not stop (SIGSTOPped, hung) is SIGKILLed with its children."""
    alive, why = postmaster_alive(inst.data_dir)
    if not alive:
        return f"already down ({why})" + _kill_orphans(inst.data_dir)
    if "(stopped)" not in why:  # a SIGSTOPped postmaster cannot act on pg_ctl's SIGQUIT
        try:
            inst.programs.run("pg_ctl", ["-D", str(inst.data_dir), "-m", "immediate", "-w",
                                         "-t", str(int(timeout)), "stop"], ok_codes=(0, 1), timeout=timeout + 10)
        except ProgramFailed:
            pass  # re-checked below, never trusted either way
        alive, why = postmaster_alive(inst.data_dir)
        if not alive:
            return f"stopped (immediate; {why})" + _kill_orphans(inst.data_dir)
    pid = int((inst.data_dir / "postmaster.pid").read_text().splitlines()[0])
    for child in _children(pid):
        _kill(child)
    _kill(pid)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        alive, why = postmaster_alive(inst.data_dir)
        if not alive:
            return f"pg_ctl stop did not stop it; SIGKILLed postmaster and children ({why})" \
                + _kill_orphans(inst.data_dir)
        time.sleep(0.05)
    raise FenceRefused(f"cannot stop {inst.name}: {why} survives SIGKILL",
                       hint="stop the machine or cut it off the network, then run failover with --no-fence")


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


def fence(config: Config, node: NodeConfig, programs: Programs, *, no_fence: bool, dry_run: bool = False) -> FenceResult:
    inst = local_instance(node, programs)
    if inst is not None:
        if dry_run:
            return FenceResult("local", f"would stop {node.name} and leave standby.signal in {node.data_dir}")
        how = stop_verified(inst)
        mark_standby(inst.data_dir, programs)
        return FenceResult("local", f"{how}; standby.signal left in {node.data_dir}")
    if config.failover.fence_command:
        if dry_run:
            return FenceResult("command", f"would run {' '.join(config.failover.fence_command)}")
        plain, _password = split_password(node.conninfo)
        env = {**{k: v for k, v in os.environ.items() if k != "PGPASSWORD"},
               "PGDR_FENCE_NODE": node.name, "PGDR_FENCE_CONNINFO": plain}
        proc = process.run(config.failover.fence_command, env=env, timeout=60, ok_codes=range(256))
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
            raise FenceRefused(f"fence command failed for {node.name}: {tail[0]}",
                               hint="fix the fence, or pass --no-fence if you are sure it is down for good")
        return FenceResult("command", f"fence command succeeded for {node.name}")
    if no_fence:
        return FenceResult("none", f"NOT fenced ({mask(node.conninfo)}): --no-fence given")
    raise FenceRefused(
        f"cannot fence {node.name}: its data directory is not on this machine and no "
        "failover.fence_command is configured",
        hint="configure failover.fence_command, or pass --no-fence if it is down for good")
