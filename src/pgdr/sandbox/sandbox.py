"""`pgdr sandbox up/down/status`: a whole small production in one folder.

DIR/
  sandbox.json     the sandbox's own state (nodes, ports) so `up` can restart it
  pgdr.toml        a normal pgdr config describing the sandbox
  nodes/<name>/data, nodes/<name>.log
  run/             unix sockets (0700: only the server user and root connect)
  repo/            the backup repository and WAL archive

Every server listens on a unix socket and 127.0.0.1 only; TCP needs a password
that is never set, so nobody else on the machine gets in.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psycopg.conninfo import make_conninfo

from pgdr.backup import archiver
from pgdr.errors import PgdrError, SandboxError, UsageError
from pgdr.fsutil import write_json_durable
from pgdr.pg.connect import session
from pgdr.pg.instance import SOCKET_PATH_MAX, Instance, check_traversable, free_port
from pgdr.pg.programs import Programs, bindir_major
from pgdr.repo.layout import Repository

APP_DB = "app"

SERVER_SETTINGS: dict[str, str | int] = {
    "wal_level": "replica",
    "max_wal_senders": 10,
    "max_replication_slots": 10,
    "hot_standby": "on",
    "wal_log_hints": "on",
    # A standby retries WAL sources every 5 s by default; DESIGN.md measured that
    # delay in a failover. One second keeps recovery and promotion quick.
    "wal_retrieve_retry_interval": "1s",
    "max_slot_wal_keep_size": "4GB",
    "log_line_prefix": "%m [%p] %q%u@%d ",
    "log_checkpoints": "on",
}


@dataclass
class SandboxNode:
    name: str
    role: str
    port: int
    data_dir: Path


@dataclass
class Sandbox:
    root: Path
    socket_dir: Path
    nodes: list[SandboxNode]
    sync: bool = False
    # `pgdr sandbox up --bindir DIR`: the PostgreSQL programs the sandbox was made with;
    # written to its pgdr.toml ([pg] bindir) so every later command uses the same major.
    bindir: Path | None = None

    @property
    def config_path(self) -> Path:
        return self.root / "pgdr.toml"

    @property
    def repo(self) -> Repository:
        return Repository(self.root / "repo")

    def instance(self, node: SandboxNode, programs: Programs) -> Instance:
        return Instance(node.name, node.data_dir, node.port, self.socket_dir, programs,
                        log_file=self.root / "nodes" / f"{node.name}.log")

    @property
    def primary(self) -> SandboxNode:
        return next(n for n in self.nodes if n.role == "primary")

    def conninfo(self, node: SandboxNode, dbname: str = APP_DB) -> str:
        return make_conninfo(host=str(self.socket_dir), port=node.port, dbname=dbname, user="postgres")


def _state_path(root: Path) -> Path:
    return root / "sandbox.json"


def load_sandbox(root: Path) -> Sandbox | None:
    try:
        raw = json.loads(_state_path(root).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise SandboxError(f"unreadable {_state_path(root)}: {exc}") from None
    nodes = [SandboxNode(n["name"], n["role"], int(n["port"]), Path(n["data_dir"])) for n in raw["nodes"]]
    bindir = Path(raw["bindir"]) if raw.get("bindir") else None
    return Sandbox(Path(raw["root"]), Path(raw["socket_dir"]), nodes, bool(raw.get("sync")), bindir)


def _save(sandbox: Sandbox) -> None:
    write_json_durable(_state_path(sandbox.root), {
        "root": str(sandbox.root), "socket_dir": str(sandbox.socket_dir), "sync": sandbox.sync,
        "bindir": str(sandbox.bindir) if sandbox.bindir else None,
        "nodes": [{"name": n.name, "role": n.role, "port": n.port, "data_dir": str(n.data_dir)}
                  for n in sandbox.nodes]})


def _socket_dir(root: Path) -> Path:
    candidate = root / "run"
    if len(str(candidate)) <= SOCKET_PATH_MAX:
        return candidate
    digest = hashlib.sha1(str(root).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"pgdr-{digest}"


def render_config(sandbox: Sandbox) -> str:
    lines = [
        "# Written by `pgdr sandbox up`: a normal pgdr config describing the sandbox.",
        "[cluster]", 'name = "sandbox"', "",
        "[repository]", 'path = "repo"', "",
    ]
    if sandbox.bindir is not None:
        lines += ["[pg]", f"bindir = {json.dumps(str(sandbox.bindir))}", ""]
    for node in sandbox.nodes:
        lines += ["[[nodes]]", f'name = "{node.name}"', f'role = "{node.role}"',
                  f"conninfo = \"{sandbox.conninfo(node, 'postgres')}\"",
                  f'data_dir = "{node.data_dir.relative_to(sandbox.root)}"',
                  f'log_file = "nodes/{node.name}.log"',
                  "drillable = true", ""]
    if sandbox.sync:
        names = ", ".join(n.name for n in sandbox.nodes if n.role == "standby")
        lines += ["[failover]", f'synchronous_standby_names = "ANY 1 ({names})"', ""]
    return "\n".join(lines)


def check_bindir(bindir: Path) -> Path:
    """An absolute bindir holding PostgreSQL's server programs, or one line saying why not."""
    bindir = bindir.resolve()
    missing = [p for p in ("postgres", "initdb", "pg_ctl", "pg_basebackup") if not (bindir / p).is_file()]
    if missing:
        raise UsageError(f"--bindir {bindir}: no {', '.join(missing)} there",
                           hint="name the bin/ folder of a PostgreSQL installation")
    return bindir


def up(root: Path, programs: Programs, standbys: int = 1, sync: bool = False,
       primary_from: Callable[[Instance], None] | None = None) -> Sandbox:
    """Create the sandbox, or start an existing one again. primary_from, when given, makes
    the primary's data directory (a drill's copy of a cluster: pgdr/drill/copy.py) and
    leaves it running as a primary, instead of initdb."""
    root = root.resolve()
    existing = load_sandbox(root)
    if existing is not None:
        if existing.bindir is not None and programs.configured is None:
            programs = Programs(existing.bindir, programs.run_as)
        _start_existing(existing, programs)
        return existing
    if standbys < 0 or standbys > 5:
        raise SandboxError("--standbys must be between 0 and 5")
    if sync and standbys == 0:
        raise SandboxError("--sync needs at least one standby")
    check_traversable(root.parent, programs)
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    (root / "nodes").mkdir(exist_ok=True)
    programs.run_as.chown(root / "nodes")
    socket_dir = _socket_dir(root)
    used: set[int] = set()
    nodes = []
    for i, name in enumerate(["primary"] + [f"standby{k}" for k in range(1, standbys + 1)]):
        port = free_port()
        while port in used:
            port = free_port()
        used.add(port)
        nodes.append(SandboxNode(name, "primary" if i == 0 else "standby", port,
                                 root / "nodes" / name / "data"))
    sandbox = Sandbox(root, socket_dir, nodes, sync, programs.configured)
    try:
        _create(sandbox, programs, primary_from)
    except BaseException:
        _stop_all(sandbox, programs)
        raise
    return sandbox


def _create(sandbox: Sandbox, programs: Programs, primary_from: Callable[[Instance], None] | None = None) -> None:
    primary = sandbox.instance(sandbox.primary, programs)
    primary.data_dir.parent.mkdir(parents=True, exist_ok=True)
    programs.run_as.chown(primary.data_dir.parent)
    if primary_from is not None:
        _save(sandbox)  # first: `down` finds and stops a copy a failure below leaves running
        primary_from(primary)
    else:
        primary.initdb(checksums=True)
        settings = dict(SERVER_SETTINGS)
        if (bindir_major(programs.bindir) or 0) >= 17:
            # WAL summaries are what `pg_basebackup --incremental` (pgdr backup --incremental) reads.
            settings["summarize_wal"] = "on"
        settings.update(primary.local_settings())
        primary.configure(settings)
    _save(sandbox)
    sandbox.config_path.write_text(render_config(sandbox))
    primary.start()
    with session(sandbox.conninfo(sandbox.primary, "postgres")) as conn:
        conn.execute(f"create database {APP_DB}")
    sandbox.repo.ensure()
    # The archiver runs before any data is loaded, so the archive is complete from day one.
    archiver.start_background(sandbox.config_path, Repository(sandbox.repo.root, programs.run_as))
    from importlib import resources

    schema = resources.files("pgdr.sandbox").joinpath("sample_schema.sql").read_text()
    with session(sandbox.conninfo(sandbox.primary)) as conn:
        conn.execute(schema)
    for node in sandbox.nodes:
        if node.role != "standby":
            continue
        standby = sandbox.instance(node, programs)
        standby.init_standby_from(primary, slot=node.name)
        standby.configure({"port": node.port})
        standby.start()
    if sandbox.sync:
        # Only once the standbys stream: before that every commit would wait forever.
        names = ", ".join(n.name for n in sandbox.nodes if n.role == "standby")
        with session(sandbox.conninfo(sandbox.primary, "postgres")) as conn:
            conn.execute(f"alter system set synchronous_standby_names = 'ANY 1 ({names})'")
            conn.execute("select pg_reload_conf()")


def _start_existing(sandbox: Sandbox, programs: Programs) -> None:
    for node in sorted(sandbox.nodes, key=lambda n: n.role != "primary"):
        inst = sandbox.instance(node, programs)
        if inst.data_dir.exists():
            inst.start()
    repo = Repository(sandbox.repo.root, programs.run_as)
    if not archiver.is_running(repo):
        archiver.start_background(sandbox.config_path, repo)


def _stop_all(sandbox: Sandbox, programs: Programs) -> list[str]:
    stopped = []
    archiver.stop_background(sandbox.repo)
    # standbys first, so they do not log a storm of reconnects to a vanished primary
    for node in sorted(sandbox.nodes, key=lambda n: n.role == "primary"):
        inst = sandbox.instance(node, programs)
        if inst.is_running():
            try:
                inst.stop()
            except PgdrError:
                inst.stop(mode="immediate")
            stopped.append(node.name)
    return stopped


def down(root: Path, programs: Programs, purge: bool = False) -> list[str]:
    sandbox = load_sandbox(root.resolve())
    if sandbox is None:
        raise SandboxError(f"no sandbox in {root}", hint="create one with `pgdr sandbox up`")
    stopped = _stop_all(sandbox, programs)
    if purge:
        shutil.rmtree(sandbox.root, ignore_errors=True)
        if sandbox.socket_dir != sandbox.root / "run":
            shutil.rmtree(sandbox.socket_dir, ignore_errors=True)
    return stopped


def status(root: Path, programs: Programs) -> list[dict[str, Any]]:
    sandbox = load_sandbox(root.resolve())
    if sandbox is None:
        raise SandboxError(f"no sandbox in {root}", hint="create one with `pgdr sandbox up`")
    rows = []
    for node in sandbox.nodes:
        inst = sandbox.instance(node, programs)
        pid = inst.pid()
        role = node.role
        if pid is not None:
            try:
                with session(sandbox.conninfo(node, "postgres"), timeout=2) as conn:
                    row = conn.execute("select pg_is_in_recovery() as r").fetchone()
                    role = "standby" if row and row["r"] else "primary"
            except PgdrError:
                role = "unknown"
        rows.append({"name": node.name, "role": role, "port": node.port,
                     "data_dir": str(node.data_dir), "pid": pid, "state": "up" if pid else "down"})
    repo = sandbox.repo
    rows.append({"name": "archiver", "role": "wal archive", "port": None,
                 "data_dir": str(repo.wal_dir), "pid": archiver.read_state(repo).pid
                 if archiver.is_running(repo) else None,
                 "state": "up" if archiver.is_running(repo) else "down"})
    return rows
