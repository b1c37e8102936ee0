"""A cluster built by hand, the way Debian and operators build one (not `pgdr sandbox`).

- initdb --data-checksums with `peer` on the unix socket and `scram-sha-256` over TCP
  (127.0.0.1), as Debian's pg_createcluster does: root cannot get in over the socket.
- roles: `dba` (superuser, password), `replicator` (REPLICATION, password), `app`
  (owns the `app` database and its tables, password; neither superuser nor
  REPLICATION, so it doubles as the managed-style role reached by a DATABASE_URL).
- a standby made with `pg_basebackup -R` as `replicator`, reading its password from
  its own passfile (postgres-owned, 0600, in a home-like folder), with a slot whose
  name is not the node's name, so pg_stat_replication shows `walreceiver`.
- pgdr.toml files whose conninfos carry TCP + user and NO password: the passwords
  come from a root-only 0600 PGPASSFILE in one variant and PGPASSWORD in another.
- on request (start_pgbouncer), pgbouncer in front with scram auth, its ini owned by
  postgres and mode 0640.

Setup SQL runs through psql as the postgres user (peer), with the SQL on stdin so
no password is ever on a command line. Passwords are random per cluster, so a
test can search every output for them.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from psycopg.conninfo import make_conninfo

from pgdr.backup import archiver
from pgdr.pg.instance import Instance, free_port
from pgdr.pg.process import Child
from pgdr.pg.programs import Programs
from pgdr.repo.layout import Repository

APP_SCHEMA = """
set role app;
create table customers (id int primary key, email text not null unique);
create table orders (id int primary key, customer_id int not null references customers,
                     amount numeric(10,2) not null);
insert into customers select g, 'c' || g || '@example.com' from generate_series(1, 500) g;
insert into orders select g, 1 + g % 500, g / 10.0 from generate_series(1, 3000) g;
"""


@dataclass
class Pgbouncer:
    ini: Path
    port: int
    child: Child

    def conninfo(self, user: str = "app", dbname: str = "app") -> str:
        """Over TCP, no password: it comes from PGPASSFILE/PGPASSWORD like everything else."""
        return make_conninfo(host="127.0.0.1", port=self.port, user=user, dbname=dbname)

    def repoint_toml(self) -> str:
        return (f'\n[[failover.repoint]]\nkind = "pgbouncer"\nini_file = "{self.ini}"\n'
                f'admin_conninfo = "{self.conninfo("dba", "pgbouncer")}"\ndatabase = "app"\n')


@dataclass
class RealCluster:
    root: Path
    programs: Programs
    primary: Instance
    standby: Instance
    pghome: Path
    passwords: dict[str, str] = field(default_factory=dict)
    standby_slot: str = "hand_built_standby"
    pgbouncer: Pgbouncer | None = None

    # ---- addresses ---------------------------------------------------------------
    def tcp(self, instance: Instance, user: str = "dba", dbname: str = "postgres") -> str:
        """A conninfo with host, port and user and no password: libpq finds it."""
        return make_conninfo(host="127.0.0.1", port=instance.port, user=user, dbname=dbname)

    def database_url(self, password: str | None = None) -> str:
        pw = password if password is not None else self.passwords["app"]
        return f"postgresql://app:{pw}@127.0.0.1:{self.primary.port}/app"

    def secrets(self) -> list[str]:
        return list(self.passwords.values())

    # ---- running SQL as the DBA would (sudo -u postgres psql) ---------------------
    def psql(self, sql: str, dbname: str = "postgres", instance: Instance | None = None) -> str:
        inst = instance or self.primary
        res = self.programs.run("psql", [
            "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", str(inst.socket_dir),
            "-p", str(inst.port), "-U", "postgres", "-d", dbname, "-f", "-"],
            input_text=sql, timeout=120)
        return res.stdout.strip()

    # ---- where passwords come from --------------------------------------------------
    def root_passfile(self, wrong: bool = False) -> Path:
        """A passfile only root can read (0600 root), as the README tells operators."""
        path = self.root / "root-only" / "pgpass"
        path.parent.mkdir(mode=0o700, exist_ok=True)
        dba = "not-the-password" if wrong else self.passwords["dba"]
        path.write_text(f"127.0.0.1:*:*:dba:{dba}\n127.0.0.1:*:*:app:{self.passwords['app']}\n")
        os.chmod(path, 0o600)
        return path

    def env_with_passfile(self, wrong: bool = False) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PGPASSWORD", "PGPASSFILE")}
        env["PGPASSFILE"] = str(self.root_passfile(wrong))
        return env

    def env_with_password(self, wrong: bool = False) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PGPASSWORD", "PGPASSFILE")}
        env["PGPASSWORD"] = "not-the-password" if wrong else self.passwords["dba"]
        # no passfile to fall back on: root's ~/.pgpass must not rescue the test
        env["PGPASSFILE"] = "/nonexistent/pgpass"
        return env

    # ---- pgdr.toml ------------------------------------------------------------------
    def write_config(self, name: str, extra: str = "", user: str = "dba", repo: str = "repo") -> Path:
        """A physical-mode config: both nodes over TCP as `user`, no password in it."""
        folder = self.root / name
        folder.mkdir(exist_ok=True)
        os.chmod(folder, 0o755)
        path = folder / "pgdr.toml"
        path.write_text(
            f'[cluster]\nname = "{name}"\n\n[repository]\npath = "{repo}"\n\n'
            f'[[nodes]]\nname = "db1"\nrole = "primary"\nconninfo = "{self.tcp(self.primary, user)}"\n'
            f'data_dir = "{self.primary.data_dir}"\n\n'
            f'[[nodes]]\nname = "db2"\nrole = "standby"\nconninfo = "{self.tcp(self.standby, user)}"\n'
            f'data_dir = "{self.standby.data_dir}"\n\n' + extra)
        return path

    def write_managed_config(self, name: str, extra: str = "") -> Path:
        """A managed-style config: one node whose conninfo is only ${DATABASE_URL}."""
        folder = self.root / name
        folder.mkdir(exist_ok=True)
        os.chmod(folder, 0o755)
        path = folder / "pgdr.toml"
        path.write_text(
            f'[cluster]\nname = "{name}"\n\n[repository]\npath = "repo"\n\n'
            '[[nodes]]\nname = "managed"\nrole = "primary"\nconninfo = "${DATABASE_URL}"\n\n' + extra)
        return path

    def env_with_database_url(self, password: str | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PGPASSWORD", "PGPASSFILE")}
        env["DATABASE_URL"] = self.database_url(password)
        env["PGPASSFILE"] = "/nonexistent/pgpass"
        return env

    # ---- pgbouncer, as operators run it -----------------------------------------------
    def start_pgbouncer(self) -> Pgbouncer:
        """pgbouncer in front of the primary: scram auth from a userlist.txt (0600) holding
        the roles' SCRAM secrets, pgbouncer.ini owned by postgres, mode 0640 (it may hold
        passwords), admin user `dba`, transaction pooling, on a free port."""
        if self.pgbouncer is not None:
            return self.pgbouncer
        folder = self.root / "pgbouncer"
        folder.mkdir(mode=0o750, exist_ok=True)
        self.programs.run_as.chown(folder)
        secrets_rows = self.psql("select rolname || ' ' || rolpassword from pg_authid "
                                 "where rolname in ('dba', 'app')")
        userlist = folder / "userlist.txt"
        userlist.write_text("".join(f'"{name}" "{secret}"\n' for name, secret in
                                    (row.split(" ", 1) for row in secrets_rows.splitlines())))
        port = free_port()
        ini = folder / "pgbouncer.ini"
        ini.write_text(
            f"[databases]\napp = host=127.0.0.1 port={self.primary.port} dbname=app\n\n"
            f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir = {folder}\n"
            f"auth_type = scram-sha-256\nauth_file = {userlist}\nadmin_users = dba\n"
            "pool_mode = transaction\nserver_login_retry = 1\nserver_connect_timeout = 2\n"
            f"logfile = {folder / 'pgbouncer.log'}\npidfile = {folder / 'pgbouncer.pid'}\n")
        for path, mode in ((ini, 0o640), (userlist, 0o600)):
            os.chmod(path, mode)
            self.programs.run_as.chown(path)
        child = self.programs.spawn("pgbouncer", [str(ini)], log_path=folder / "stdout.log")
        deadline = time.monotonic() + 10
        while not (folder / f".s.PGSQL.{port}").exists():
            if time.monotonic() > deadline or child.poll() is not None:
                raise RuntimeError("pgbouncer did not start: " + (folder / "stdout.log").read_text()[-500:])
            time.sleep(0.05)
        self.pgbouncer = Pgbouncer(ini, port, child)
        return self.pgbouncer

    # ---- teardown -------------------------------------------------------------------
    def stop(self) -> None:
        if self.pgbouncer is not None:
            self.pgbouncer.child.stop()
        for repo_dir in self.root.glob("*/repo"):
            try:
                archiver.stop_background(Repository(repo_dir))
            except Exception:
                pass
        for inst in (self.standby, self.primary):
            try:
                inst.stop(mode="fast")
            except Exception:
                inst.stop(mode="immediate")


def build_real_cluster(root: Path, programs: Programs) -> RealCluster:
    """initdb, roles, the app database, and a pg_basebackup -R standby; both running."""
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    socket_dir = root / "run"
    socket_dir.mkdir(exist_ok=True)
    os.chmod(socket_dir, 0o755)
    programs.run_as.chown(socket_dir)
    pghome = root / "pghome"
    pghome.mkdir(mode=0o700, exist_ok=True)
    programs.run_as.chown(pghome)

    primary = Instance("db1", root / "db1" / "data", free_port(), socket_dir, programs,
                       log_file=root / "db1.log")
    port2 = free_port()
    while port2 == primary.port:
        port2 = free_port()
    standby = Instance("db2", root / "db2" / "data", port2, socket_dir, programs, log_file=root / "db2.log")
    cluster = RealCluster(root, programs, primary, standby, pghome,
                          {role: secrets.token_hex(12) for role in ("dba", "replicator", "app")})

    primary.data_dir.parent.mkdir(parents=True, exist_ok=True)
    programs.run_as.chown(primary.data_dir.parent)
    programs.run("initdb", ["-D", str(primary.data_dir), "-U", "postgres", "--auth-local=peer",
                            "--auth-host=scram-sha-256", "--data-checksums", "-E", "UTF8",
                            "--locale=C", "--no-instructions"], timeout=120)
    primary.configure({"port": primary.port, "listen_addresses": "127.0.0.1",
                       "unix_socket_directories": str(socket_dir), "wal_log_hints": "on",
                       "log_line_prefix": "%m [%p] %q%u@%d "})
    primary.start()
    pw = cluster.passwords
    cluster.psql(
        f"create role dba superuser login password '{pw['dba']}';\n"
        f"create role replicator replication login password '{pw['replicator']}';\n"
        f"create role app login password '{pw['app']}';\n"
        "create database app owner app;\n")
    cluster.psql(APP_SCHEMA, dbname="app")

    # The standby's own passfile, as the postgres user keeps it (~postgres/.pgpass, 0600).
    passfile = pghome / ".pgpass"
    passfile.write_text(f"*:*:*:replicator:{pw['replicator']}\n")
    os.chmod(passfile, 0o600)
    programs.run_as.chown(passfile)
    standby.data_dir.parent.mkdir(parents=True, exist_ok=True)
    programs.run_as.chown(standby.data_dir.parent)
    source = make_conninfo(host="127.0.0.1", port=primary.port, user="replicator", passfile=str(passfile))
    programs.run("pg_basebackup", ["-d", source, "-D", str(standby.data_dir), "-R", "-X", "stream",
                                   "-C", "-S", cluster.standby_slot, "--checkpoint=fast", "-w"],
                 timeout=600)
    standby.configure({"port": standby.port})
    standby.start()
    return cluster


def remove_real_cluster(cluster: RealCluster) -> None:
    cluster.stop()
    shutil.rmtree(cluster.root, ignore_errors=True)
