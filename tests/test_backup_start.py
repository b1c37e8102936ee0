"""`pgdr backup` starts pg_basebackup before its checks have answered (issue 17 item 4):
what that ordering must never cost. A veto found during the copy ends pg_basebackup and
publishes nothing; a SIGKILL of pgdr at any moment leaves no pg_basebackup running and
nothing complete. pg_basebackup is found through /proc (its command line names the
repository), never through pgdr's own account."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgdr.pg.connect import session
from pgdr.pg.programs import Programs
from pgdr.repo.manifest import list_backups
from pgdr.sandbox import sandbox as sb
from tests.conftest import run_cli
from tests.procs import basebackups, wait_for


@pytest.fixture(scope="module")
def sandbox(base_dir: Path, programs: Programs) -> Iterator[sb.Sandbox]:
    """A primary with ~40 MB of data (a copy that lasts long enough to be interrupted)."""
    box = sb.up(base_dir / "backup-start", programs, standbys=0)
    with session(box.conninfo(box.primary)) as conn:
        conn.execute("create table noise as select g, md5(g::text) || md5((g + 1)::text) as t "
                     "from generate_series(1, 400000) g")
    assert run_cli("backup", config=box.config_path).returncode == 0  # the repository is claimed
    yield box
    sb.down(box.root, programs, purge=True)


def basebackup_targets(pids: list[int]) -> list[Path]:
    """The folders these pg_basebackup processes write into (their own -D argument, from
    /proc): this run's copy, whatever its name (a backup id can repeat an earlier kill's
    within the same second, once that kill's debris is removed)."""
    targets = []
    for pid in pids:
        try:
            argv = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")]
        except OSError:
            continue
        targets += [Path(argv[i + 1]) for i, a in enumerate(argv[:-1]) if a == "-D"]
    return targets


def complete_ids(box: sb.Sandbox) -> set[str]:
    return {p.name for p in box.repo.backups_dir.iterdir()
            if not p.name.endswith(".partial") and (p / "pgdr.json").is_file()}


def launch(box: sb.Sandbox) -> subprocess.Popen[str]:
    env = {**os.environ, "PGDR_CONFIG": str(box.config_path)}
    return subprocess.Popen([sys.executable, "-m", "pgdr", "backup"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_a_veto_found_during_the_copy_ends_pg_basebackup_and_publishes_nothing(sandbox: sb.Sandbox) -> None:
    repo_dir = sandbox.repo.backups_dir
    before = complete_ids(sandbox)
    identity = sandbox.repo.identity_path
    original = identity.read_bytes()
    # The checks read pg_tablespace; holding a lock on it keeps them waiting while the copy
    # (which never reads that catalog) runs: the veto is then certain to land mid-copy.
    with session(sandbox.conninfo(sandbox.primary, "postgres")) as conn:
        try:
            conn.execute("begin")
            conn.execute("lock table pg_tablespace in access exclusive mode")
            proc = launch(sandbox)
            pids = wait_for("pg_basebackup", lambda: basebackups(repo_dir))
            for pid in pids:
                os.kill(pid, signal.SIGSTOP)  # the copy cannot end before the veto
            # Meanwhile the repository turns out to belong to another cluster.
            doc = json.loads(original)
            identity.write_text(json.dumps({**doc, "system_identifier": "7000000000000000001"}))
            conn.execute("rollback")
            _out, err = proc.communicate(timeout=60)
        finally:
            identity.write_bytes(original)
    assert proc.returncode == 1, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "belongs to cluster 7000000000000000001" in err and not any("Traceback" in x for x in lines)
    assert len(lines) == 1 and lines[0].startswith("pgdr: backup "), err  # one line
    wait_for("pg_basebackup to be gone", lambda: not basebackups(repo_dir), timeout=15)
    assert complete_ids(sandbox) == before
    assert not [p for p in repo_dir.iterdir() if p.name.endswith(".partial")]
    assert {b.id for b in list_backups(sandbox.repo)} == before


@pytest.mark.parametrize("after", [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, "copying"])
def test_sigkill_at_any_moment_leaves_no_pg_basebackup_and_nothing_complete(
        sandbox: sb.Sandbox, after: float | str) -> None:
    repo_dir = sandbox.repo.backups_dir
    before = complete_ids(sandbox)
    proc = launch(sandbox)
    try:
        if after == "copying":
            # pg_basebackup first (this run's .partial exists before it starts, with pgdr's
            # own files in it), then its first bytes; stopped there so pgdr dies mid-copy
            pids = wait_for("pg_basebackup", lambda: basebackups(repo_dir))
            targets = wait_for("pg_basebackup's -D", lambda: basebackup_targets(pids))
            wait_for("the copy's first bytes", lambda: [p for t in targets for p in t.glob("*.tar*")
                                                         if p.is_file() and p.stat().st_size > 0])
            for pid in pids:
                os.kill(pid, signal.SIGSTOP)
            assert basebackups(repo_dir), "pg_basebackup was not running mid-copy"
        else:
            time.sleep(float(after))
    finally:  # killed even when the test fails: a live pgdr would hold the lock for the next test
        proc.kill()
        proc.communicate()
    wait_for("pg_basebackup to end with pgdr", lambda: not basebackups(repo_dir), timeout=15)
    time.sleep(0.3)  # nothing may come back (a child started late)
    assert not basebackups(repo_dir)
    assert complete_ids(sandbox) == before
    assert {b.id for b in list_backups(sandbox.repo)} == before


def test_after_the_kills_a_backup_clears_the_debris_and_completes(sandbox: sb.Sandbox) -> None:
    result = run_cli("backup", "--json", config=sandbox.config_path)
    assert result.returncode == 0, result.stderr
    backup_id = json.loads(result.stdout)["id"]
    assert (sandbox.repo.backups_dir / backup_id / "pgdr.json").is_file()
    assert not [p for p in sandbox.repo.backups_dir.iterdir() if p.name.endswith(".partial")]


def test_a_copy_started_from_a_node_that_is_not_the_primary_starts_again_from_the_primary(
        shared_sandbox: sb.Sandbox) -> None:
    """The config still names the old primary (now a standby) as primary, as after a
    failover: the copy starts from it, the checks find the real primary, and the backup
    that gets published comes from the real primary."""
    text = shared_sandbox.config_path.read_text()
    primary, standby = shared_sandbox.primary.name, next(
        n.name for n in shared_sandbox.nodes if n.name != shared_sandbox.primary.name)
    swapped = (text.replace('role = "primary"', 'role = "@"').replace('role = "standby"', 'role = "primary"')
               .replace('role = "@"', 'role = "standby"').replace('path = "repo"', 'path = "repo-swapped"'))
    assert swapped.count('role = "primary"') == 1 and swapped != text
    config = shared_sandbox.root / "pgdr-swapped.toml"
    config.write_text(swapped)
    result = run_cli("backup", "--json", config=config)
    assert result.returncode == 0, result.stderr
    backup = json.loads(result.stdout)
    doc = json.loads((Path(backup["path"]) / "pgdr.json").read_text())
    assert doc["source_node"] == primary != standby
    assert not [p for p in Path(backup["path"]).parent.iterdir() if p.name.endswith(".partial")]
