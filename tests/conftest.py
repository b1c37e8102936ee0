"""Fixtures: real PostgreSQL sandboxes in a folder the postgres user can traverse.

pytest's tmp_path sits under a root-only folder, and PostgreSQL refuses to run as
root, so everything lives under one /tmp/pgdr-tests-* folder (mode 0755) that is
removed at the end, after every server started below it has been stopped.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pgdr.pg.programs import Programs
from pgdr.sandbox import sandbox as sb
from tests.real_cluster import RealCluster, build_real_cluster, remove_real_cluster

# PGDR_TEST_BINDIR: run the tests against another PostgreSQL's programs (scripts/test.sh
# runs the `core` tests a second time with PostgreSQL 18's). Sandboxes write it to their
# pgdr.toml ([pg] bindir), so `pgdr` child processes use it too; in this process it
# becomes the default bindir for every Programs().
TEST_BINDIR = Path(os.environ["PGDR_TEST_BINDIR"]).resolve() if os.environ.get("PGDR_TEST_BINDIR") else None

# The suite's core: run on every PostgreSQL version CI covers (see scripts/test.sh).
# Whole modules, or module::test for one test of a longer module.
CORE = {
    "test_sandbox", "test_backup", "test_pitr",
    "test_verify::test_good_physical_backup_verifies_and_list_shows_it",
    "test_verify::test_flipped_byte_fails_naming_the_file",
    "test_undo::test_every_disaster_is_named_though_its_table_is_newer_than_the_backup",
    "test_undo::test_a_record_reaching_far_into_the_next_segment_is_read_whole",
    "test_failover::test_failover_after_kill9_through_pgbouncer_then_rejoin",
    "test_failover::test_switchover_loses_nothing_and_old_primary_streams",
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "core: run on every PostgreSQL major CI covers (PGDR_TEST_BINDIR)")
    if TEST_BINDIR is not None:
        from pgdr.pg import programs as programs_module

        real_default = programs_module.default_bindir
        have = programs_module.bindir_major(TEST_BINDIR)

        def default_bindir(major: int | None = None) -> Path:
            return TEST_BINDIR if major is None or major == have else real_default(major)

        programs_module.default_bindir = default_bindir  # type: ignore[assignment]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if getattr(item, "module", None) else ""
        name = getattr(item, "originalname", item.name)
        if module in CORE or f"{module}::{name}" in CORE:
            item.add_marker(pytest.mark.core)


def test_major() -> int:
    """The PostgreSQL major the tests run against."""
    from pgdr.pg.programs import bindir_major, default_bindir

    return bindir_major(TEST_BINDIR or default_bindir()) or 0


test_major.__test__ = False  # type: ignore[attr-defined]


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str, config: Path | None = None, timeout: float = 300,
            input_text: str | None = None, env: dict[str, str] | None = None) -> CliResult:
    """Run the real `pgdr` command in a child process (exit codes, stderr and all);
    env replaces the environment (tests of where credentials come from)."""
    env = {k: v for k, v in (os.environ if env is None else env).items() if k != "PGDR_CONFIG"}
    if config is not None:
        env["PGDR_CONFIG"] = str(config)
    proc = subprocess.run([sys.executable, "-m", "pgdr", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, input=input_text)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def xid_of(conninfo: str, statement: str) -> int:
    """Run one statement in its own transaction and return that transaction's id."""
    from pgdr.pg.connect import session

    with session(conninfo, autocommit=False) as conn:
        conn.execute(statement)
        row = conn.execute("select txid_current()::bigint as x").fetchone()
        conn.commit()
    assert row is not None
    return int(row["x"])


def _kill_servers_under(base: Path) -> None:
    """Last line of defence: no postmaster or pg_receivewal under base outlives the run."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(base) in cmdline and ("postgres" in cmdline or "pg_receivewal" in cmdline
                                     or "archiver run" in cmdline):
            try:
                os.kill(int(proc.name), signal.SIGKILL)
            except OSError:
                pass


@pytest.fixture(scope="session")
def base_dir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="pgdr-tests-", dir="/tmp"))
    os.chmod(base, 0o755)
    yield base
    programs = Programs()
    for state in base.rglob("sandbox.json"):
        try:
            sb.down(state.parent, programs)
        except Exception:
            pass
    _kill_servers_under(base)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def programs() -> Programs:
    return Programs(TEST_BINDIR)


class SandboxFactory:
    def __init__(self, base: Path, programs: Programs) -> None:
        self.base = base
        self.programs = programs
        self.created: list[Path] = []

    def __call__(self, name: str, standbys: int = 1, sync: bool = False) -> sb.Sandbox:
        root = self.base / name
        sandbox = sb.up(root, self.programs, standbys=standbys, sync=sync)
        self.created.append(root)
        return sandbox

    def cleanup(self) -> None:
        for root in self.created:
            try:
                sb.down(root, self.programs, purge=True)
            except Exception:
                pass


@pytest.fixture
def make_sandbox(base_dir: Path, programs: Programs, request: pytest.FixtureRequest) -> Iterator[SandboxFactory]:
    """A fresh sandbox per test, for tests that damage or reshape it."""
    factory = SandboxFactory(base_dir / request.node.name[:40].replace("[", "_").replace("]", ""), programs)
    factory.base.mkdir(exist_ok=True)
    os.chmod(factory.base, 0o755)
    yield factory
    factory.cleanup()


@pytest.fixture(scope="session")
def shared_sandbox(base_dir: Path, programs: Programs) -> Iterator[sb.Sandbox]:
    """One sandbox for the tests that only read it or add backups to it."""
    sandbox = sb.up(base_dir / "shared", programs, standbys=1)
    yield sandbox
    sb.down(sandbox.root, programs, purge=True)


@pytest.fixture(scope="module")
def real_cluster(base_dir: Path, programs: Programs, request: pytest.FixtureRequest) -> Iterator[RealCluster]:
    """A hand-built cluster (peer + scram, replicator role, pg_basebackup -R standby with its
    own passfile) per test module; see tests/real_cluster.py."""
    name = "real-" + request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")[:20]
    cluster = build_real_cluster(base_dir / name, programs)
    yield cluster
    remove_real_cluster(cluster)


@pytest.fixture(scope="module")
def moto() -> Iterator[tuple[int, object]]:
    """A real S3-protocol server (moto_server) per test module: (port, boto3 client)."""
    from tests.s3_server import moto_server

    with moto_server() as server:
        yield server
