"""switchover, failover and rejoin on the hand-built cluster (peer + scram, a replicator
role, a pg_basebackup -R standby with its own passfile), with pgdr's passwords only in a
root-only PGPASSFILE.

What is checked, on the servers themselves (psql as postgres over peer), never from pgdr's
report: after every step exactly one node accepts writes, the other streams from it as
`replicator` (not as pgdr's superuser), its primary_conninfo keeps the operator's user and
passfile in a single line, it still streams after a plain restart, and every command
finished within its bound (run_cli's timeout: a password prompt would hang).
"""

from __future__ import annotations

import time
from pathlib import Path

from pgdr.pg.instance import Instance
from tests.conftest import run_cli
from tests.real_cluster import RealCluster


def _in_recovery(cluster: RealCluster, node: Instance) -> bool:
    return cluster.psql("select pg_is_in_recovery()", instance=node) == "t"


def _streams_as_replicator(cluster: RealCluster, primary: Instance, timeout: float = 60) -> str:
    """The one walsender feeding a standby on `primary`: its user, once it streams."""
    deadline = time.monotonic() + timeout
    while True:
        users = cluster.psql("select usename from pg_stat_replication where state = 'streaming' "
                             "and application_name not like 'pgdr%'", instance=primary)
        if users or time.monotonic() > deadline:
            return users
        time.sleep(0.2)


def _primary_conninfo_lines(node: Instance) -> list[str]:
    text = (node.data_dir / "postgresql.auto.conf").read_text()
    return [ln for ln in text.splitlines() if ln.startswith("primary_conninfo")]


def _check_pair(cluster: RealCluster, primary: Instance, standby: Instance) -> None:
    assert not _in_recovery(cluster, primary) and _in_recovery(cluster, standby)
    assert _streams_as_replicator(cluster, primary) == "replicator"
    lines = _primary_conninfo_lines(standby)
    assert len(lines) == 1, lines
    assert "user=replicator" in lines[0] and "passfile=" in lines[0] and f"port={primary.port}" in lines[0], lines
    assert "dba" not in lines[0]


def test_switchover_failover_and_rejoin_keep_the_operators_replication_setup(real_cluster: RealCluster) -> None:
    cluster = real_cluster
    db1, db2 = cluster.primary, cluster.standby
    config: Path = cluster.write_config("real-failover")
    env = cluster.env_with_passfile()
    outputs: list[str] = []

    def cli(*args: str, timeout: float = 180) -> None:
        result = run_cli(*args, config=config, env=env, timeout=timeout)
        outputs.extend([result.stdout, result.stderr])
        assert result.returncode == 0, (args, result.stdout[-2000:], result.stderr)

    _check_pair(cluster, db1, db2)

    cli("switchover", "--to", "db2", "--yes")
    _check_pair(cluster, db2, db1)
    db1.stop(mode="fast")  # a plain restart: nothing pgdr did may depend on pgdr being there
    db1.start()
    _check_pair(cluster, db2, db1)

    cluster.psql("create table after_switchover (id int)", dbname="app", instance=db2)
    db2.kill9()
    cli("failover", "--yes")
    assert not _in_recovery(cluster, db1)
    assert cluster.psql("select count(*) from after_switchover", dbname="app", instance=db1) == "0"

    cli("rejoin", "db2", "--yes", timeout=300)
    _check_pair(cluster, db1, db2)
    db2.stop(mode="fast")
    db2.start()
    _check_pair(cluster, db1, db2)

    for secret in cluster.secrets():
        assert not any(secret in text for text in outputs)
