"""Fencing: the old primary must not come back as a writable primary.

Local data directory: stop it (immediate: it has failed, there is nothing to
flush that a standby could use) and leave a standby.signal, so that even a
`systemctl start` brings it up read-only. Elsewhere: the configured fence command
(STONITH, cloud API, firewall rule). Otherwise refuse, unless --no-fence.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pgdr.config import Config, NodeConfig
from pgdr.errors import PgdrError
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
    signal_file = data_dir / "standby.signal"
    signal_file.touch()
    programs.run_as.chown(signal_file)


def fence(config: Config, node: NodeConfig, programs: Programs, *, no_fence: bool, dry_run: bool = False) -> FenceResult:
    inst = local_instance(node, programs)
    if inst is not None:
        if dry_run:
            return FenceResult("local", f"would stop {node.name} and leave standby.signal in {node.data_dir}")
        was_running = inst.is_running()
        if was_running:
            inst.stop(mode="immediate", timeout=30)
        mark_standby(inst.data_dir, programs)
        return FenceResult("local", ("stopped and " if was_running else "already down; ")
                           + f"standby.signal left in {node.data_dir}")
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
