"""Drills on the cluster's own data: the hand-built cluster holds ~200 MB; a fault scenario
(corruption: flip bytes in a page, detect, restore from backup + WAL) runs on a copy built
from its newest verified backup, and its record carries `data_bytes` within a few percent
of the cluster's size, measured by the test on the cluster itself (psql as postgres). The
same scenario on a sample sandbox (`--sandbox`) ran on far less data and recovered
faster: the RTO follows the data. The cluster is never touched: its databases keep their
names and its repository gets no backup from the copy.
"""

from __future__ import annotations

import json

from pgdr.repo.layout import Repository
from pgdr.repo.manifest import scan_backups
from tests.conftest import run_cli
from tests.real_cluster import RealCluster

BIG_ROWS = 180_000  # ~1 kB each


def test_a_scenario_runs_on_a_copy_of_the_clusters_data(real_cluster: RealCluster) -> None:
    cluster = real_cluster
    cluster.psql(f"create table big as select g as id, repeat(md5(g::text), 28) as pad "
                 f"from generate_series(1, {BIG_ROWS}) g", dbname="app")
    config = cluster.write_config("drill-copy", f'\n[drill]\ndir = "{cluster.root / "drills"}"\n')
    env = cluster.env_with_passfile()
    repo = Repository(config.parent / "repo")

    def cli(*args: str, timeout: float = 600) -> str:
        result = run_cli(*args, config=config, env=env, timeout=timeout)
        assert result.returncode == 0, (args, result.stdout[-3000:], result.stderr[-3000:])
        return result.stdout

    cli("archiver", "start")
    try:
        cli("backup")
        cli("verify", "latest")
        size = int(cluster.psql("select sum(pg_database_size(oid)) from pg_database"))
        assert size > 150e6
        backups_before = len(scan_backups(repo)[0])

        run = json.loads(cli("drill", "-s", "corruption", "--json"))
        copy = run["scenarios"][0]
        assert copy["passed"], copy["reason"]
        assert "copy of cluster" in copy["evidence"]["on"]
        assert abs(copy["data_bytes"] - size) <= 0.05 * size, (copy["data_bytes"], size)

        sample = json.loads(cli("drill", "-s", "corruption", "--sandbox", "--json"))["scenarios"][0]
        assert sample["passed"], sample["reason"]
        assert sample["data_bytes"] < copy["data_bytes"] / 3
        assert copy["rto_s"] > sample["rto_s"], (copy["rto_s"], sample["rto_s"])  # RTO follows the data

        report = cli("report", "latest", "--format", "md")
        assert f"{sample['data_bytes'] / 1e6:.1f} MB" in report
        # the cluster itself: untouched
        assert cluster.psql("select string_agg(datname, ',' order by datname) from pg_database "
                            "where datname like 'app%'") == "app"
        assert len(scan_backups(repo)[0]) == backups_before
    finally:
        run_cli("archiver", "stop", config=config, env=env)
