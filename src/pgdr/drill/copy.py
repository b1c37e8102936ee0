"""Drills on the cluster's own data: each fault scenario's sandbox is a copy of the
configured cluster, not 100k sample rows, so the RTO a drill measures is the RTO of
recovering *this* database.

The copy's primary is the cluster's newest verified physical backup, restored the way
`pgdr restore` restores (files checked against their hashes, pg_verifybackup, recovery to
the backup's consistent point from the cluster's archive, read only) into the sandbox
folder, then promoted; its standbys are made from it with pg_basebackup, as the sandbox
makes them. The copy is detached from the cluster: no archiving into the cluster's
repository, no replication to or from its nodes, only the sandbox's private socket in
pg_hba.conf; its WAL goes to the sandbox's own repository.

The scenarios' probes (the writer, the counted orders) need the sample schema: it is
added as the copy's `app` database. A cluster database called `app` is renamed
`app_cluster` in the copy (never in the cluster). `data_bytes` is the size of the
cluster's databases in the copy — what the scenario recovered — without the probe
database.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from psycopg import sql

from pgdr.config import Config
from pgdr.errors import PgdrError
from pgdr.failover.cutover import RESTORE_ONLY_SETTINGS
from pgdr.failover.standby_setup import rewrite_auto_conf
from pgdr.fsutil import replace_file_keeping_owner
from pgdr.pg.connect import session
from pgdr.pg.instance import DETACHED_SETTINGS, Instance
from pgdr.repo.layout import Repository
from pgdr.repo.manifest import BackupManifest, backup_dir, list_backups
from pgdr.repo.records import verification_status
from pgdr.restore.recovery import RecoveryTarget, restore_physical
from pgdr.sandbox.sandbox import APP_DB, SERVER_SETTINGS

PROBE_DB = APP_DB
RENAMED = "app_cluster"
# Only the sandbox's private socket (its folder is 0700): the operator's rules are for
# the cluster, and a copy must not be reachable the way the cluster is.
COPY_HBA = "local all all trust\nlocal replication all trust\n"
SIZE_SQL = "select coalesce(sum(pg_database_size(oid)), 0)::bigint as b from pg_database where datname <> %s"


class NoVerifiedBackup(PgdrError):
    """A drill on the cluster's data needs a backup `pgdr verify` proved."""


def newest_verified(repo: Repository) -> BackupManifest:
    for backup in reversed(list_backups(repo, "physical")):
        if verification_status(repo, backup.id) == "verified":
            return backup
    raise NoVerifiedBackup("the drill copies the cluster from its newest verified backup, and none is verified",
                           hint="run `pgdr backup` and `pgdr verify latest` (or `pgdr drill --sandbox`)")


def data_bytes(conninfo: str, *, copy: bool) -> int:
    """The size of the databases a scenario ran on: on a copy all but the probe database;
    on a sample sandbox all of them (the sample is the data)."""
    with session(conninfo, timeout=5) as conn:
        row = conn.execute(SIZE_SQL, (PROBE_DB if copy else "",)).fetchone()
    return int(row["b"]) if row else 0


def _wait_promoted(inst: Instance, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = "not reached"
    while time.monotonic() < deadline:
        try:
            with session(inst.conninfo(), timeout=3) as conn:
                row = conn.execute("select pg_is_in_recovery() as r").fetchone()
            if row is not None and not row["r"]:
                return
            last = "still in recovery"
        except PgdrError as exc:
            last = exc.message
        time.sleep(0.1)
    raise PgdrError(f"the drill copy did not finish recovery within {timeout:.0f}s: {last}",
                    hint=f"see {inst.logfile}")


def primary_from_backup(config: Config, repo: Repository, backup: BackupManifest,
                        timeout: float = 3600) -> Callable[[Instance], None]:
    """For sandbox.up(primary_from=...): restore `backup` into the sandbox's primary folder,
    promote it at the backup's consistent point, and make it the sandbox's primary."""
    if config.source is None:
        raise PgdrError("a drill copy needs the cluster's config file (restore_command reads its archive)")
    source = config.source

    def make(inst: Instance) -> None:
        inst.socket_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        inst.socket_dir.chmod(0o700)  # pgdr trusts only a private socket folder (restore/access.py)
        settings: dict[str, str | int] = {**SERVER_SETTINGS, **inst.local_settings(), **DETACHED_SETTINGS,
                                          "cluster_name": f"drill-copy-{inst.name}"}
        restore_physical(backup_dir(repo, backup.id), inst, inst.programs, config_path=source,
                         target=RecoveryTarget("immediate"), extra_settings=settings, manifest=backup)
        hba = inst.data_dir / "pg_hba.conf"
        replace_file_keeping_owner(hba, COPY_HBA.encode())
        superuser = inst.superuser
        inst.start(timeout=600)
        _wait_promoted(inst, timeout)
        # recovery is over: the cluster's archive is never read again, and a target left
        # in place would stop a standby made from this copy. The port moves to
        # postgresql.conf, where each standby's own port (sandbox.up) overrides it: in
        # postgresql.auto.conf, which pg_basebackup copies, it would win on every standby.
        rewrite_auto_conf(inst.data_dir, {**dict.fromkeys(RESTORE_ONLY_SETTINGS), "port": None})
        inst.configure({"port": inst.port})
        with session(inst.conninfo(user=superuser)) as conn:
            if superuser != "postgres" and not conn.execute(
                    "select 1 from pg_roles where rolname = 'postgres'").fetchone():
                conn.execute("create role postgres superuser login")
            if conn.execute("select 1 from pg_database where datname = %s", (PROBE_DB,)).fetchone():
                conn.execute(sql.SQL("alter database {} rename to {}").format(
                    sql.Identifier(PROBE_DB), sql.Identifier(RENAMED)))
        inst.superuser = "postgres"

    return make


def copy_note(backup: BackupManifest, cluster: str) -> str:
    return f"a copy of cluster {cluster} from its newest verified backup {backup.id}"
