"""Turning a stopped data directory into a standby of the current primary."""

from __future__ import annotations

from pathlib import Path

from pgdr.config import NodeConfig
from pgdr.failover.fence import mark_standby
from pgdr.failover.promote import ensure_slot, primary_conninfo_for
from pgdr.pg.programs import Programs

# pg_rewind and pg_basebackup copy these from the source; a node keeps its own.
OWN_CONFIG_FILES = ("postgresql.conf", "postgresql.auto.conf", "pg_hba.conf", "pg_ident.conf")


def save_own_config(data_dir: Path) -> dict[str, bytes]:
    return {name: (data_dir / name).read_bytes() for name in OWN_CONFIG_FILES if (data_dir / name).exists()}


def restore_own_config(data_dir: Path, saved: dict[str, bytes], programs: Programs) -> None:
    for name, content in saved.items():
        (data_dir / name).write_bytes(content)
        programs.run_as.chown(data_dir / name)


def configure_as_standby(data_dir: Path, node: NodeConfig, primary: NodeConfig, programs: Programs) -> None:
    """standby.signal + primary_conninfo/slot (appended: the last setting wins) + a slot on the primary."""
    ensure_slot(primary, node.name)
    conninfo = primary_conninfo_for(node.name, primary).replace("'", "''")
    with open(data_dir / "postgresql.auto.conf", "a") as conf:
        conf.write(f"\n# set by pgdr: follow {primary.name}\nprimary_conninfo = '{conninfo}'\n"
                   f"primary_slot_name = '{node.name}'\nrecovery_target_timeline = 'latest'\n")
    mark_standby(data_dir, programs)
