"""A cluster whose bootstrap superuser is not `postgres` (initdb -U pgadmin, as the official
container image does with POSTGRES_USER): its restored copies have no role `postgres`,
so verify and restore must reach them as the source's own superuser."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgdr.pg.instance import Instance, free_port
from pgdr.pg.programs import Programs
from pgdr.restore.access import bootstrap_superuser
from pgdr.restore.pitr import stop_restored
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def pgadmin_cluster(base_dir: Path, programs: Programs) -> Iterator[Instance]:
    root = base_dir / "pgadmin"
    root.mkdir()
    os.chmod(root, 0o755)
    run = root / "run"
    run.mkdir(mode=0o700)
    programs.run_as.chown(run)
    inst = Instance("pgadmin", root / "db" / "data", free_port(), run, programs, log_file=root / "db.log",
                    superuser="pgadmin")
    inst.data_dir.parent.mkdir(parents=True)
    programs.run_as.chown(inst.data_dir.parent)
    programs.run("initdb", ["-D", str(inst.data_dir), "-U", "pgadmin", "--auth-local=trust",
                            "--data-checksums", "-E", "UTF8", "--locale=C", "--no-instructions"], timeout=120)
    inst.configure({**inst.local_settings(), "wal_level": "replica"})
    inst.start()
    programs.run("psql", ["-X", "-q", "-h", str(run), "-p", str(inst.port), "-U", "pgadmin", "-d", "postgres",
                          "-c", "create table t as select generate_series(1, 1000) as id"], timeout=60)
    yield inst
    inst.stop()


def test_verify_and_restore_reach_a_copy_as_its_own_superuser(pgadmin_cluster: Instance, programs: Programs
                                                               ) -> None:
    assert bootstrap_superuser(pgadmin_cluster.data_dir) == "pgadmin"
    folder = pgadmin_cluster.data_dir.parent.parent / "cfg"
    folder.mkdir()
    config = folder / "pgdr.toml"
    config.write_text(f'[repository]\npath = "repo"\n\n[[nodes]]\nname = "db"\nrole = "primary"\n'
                      f'conninfo = "{pgadmin_cluster.conninfo()}"\n')
    assert run_cli("backup", config=config, timeout=180).returncode == 0
    verify = run_cli("verify", "latest", config=config, timeout=300)
    assert verify.returncode == 0, verify.stdout[-2000:] + verify.stderr
    target = folder / "restored"
    restored = run_cli("restore", "--immediate", "--target-dir", str(target), "--json", config=config,
                       timeout=300)
    assert restored.returncode == 0, restored.stderr
    try:
        info = json.loads(restored.stdout)
        assert "user=pgadmin" in info["conninfo"]
        got = programs.run("psql", ["-X", "-A", "-t", "-h", info["socket_dir"], "-p", str(info["port"]),
                                    "-U", "pgadmin", "-d", "postgres", "-c", "select count(*) from t"], timeout=30)
        assert got.stdout.strip() == "1000"
    finally:
        stop_restored(target, programs)
