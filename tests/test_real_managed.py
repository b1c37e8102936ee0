"""A managed-style database: a role with neither REPLICATION nor superuser, reached only
through ${DATABASE_URL}. Logical backups, verify, a green status, logical restores to a
new instance and into an empty database, one-line refusals of physical commands, and
the password nowhere in what pgdr prints. Restored rows are counted with psql."""

from __future__ import annotations

import json
from pathlib import Path

from pgdr.restore.pitr import stop_restored
from tests.conftest import run_cli
from tests.real_cluster import RealCluster


def test_managed_role_logical_only(real_cluster: RealCluster) -> None:
    config = real_cluster.write_managed_config("managed")
    env = real_cluster.env_with_database_url()
    seen: list[str] = []

    def cli(*args: str, code: int = 0, timeout: float = 180, env_: dict[str, str] | None = None) -> str:
        result = run_cli(*args, config=config, env=env_ or env, timeout=timeout)
        seen.extend([result.stdout, result.stderr])
        assert result.returncode == code, (args, result.stdout[-2000:], result.stderr)
        return result.stdout + result.stderr

    backup = json.loads(cli("backup", "--logical", "--json"))
    assert backup["tables"]["app"]["public.orders"] == 3000
    cli("verify", "latest", timeout=300)
    status = json.loads(cli("status", "--json"))
    assert status["status"] == "ok", status["checks"]
    archive = next(c for c in status["checks"] if c["name"] == "archive")
    assert "not applicable (logical-only)" in archive["summary"]

    diag = json.loads(cli("diagnose", "--json", code=0))
    archiver_finding = next(f for f in diag["findings"] if f["concern"] == "pgdr_archiver")
    assert archiver_finding["severity"] == "ok" and "not applicable" in archiver_finding["summary"]
    assert diag["severity"] != "critical", [f for f in diag["findings"] if f["severity"] == "critical"]

    for args in (["backup"], ["archiver", "start"], ["failover", "--yes"],
                 ["restore", "--latest", "--target-dir", str(real_cluster.root / "never")]):
        err = cli(*args, code=2, timeout=60)
        assert "logical-only mode" in err and "Traceback" not in err, args
        assert len(err.strip().splitlines()) == 1, err

    target = real_cluster.root / "managed-restored"
    restored = json.loads(cli("restore", "--backup", backup["id"], "--target-dir", str(target), "--json",
                              timeout=300))
    try:
        got = real_cluster.programs.run("psql", [
            "-X", "-A", "-t", "-h", restored["socket_dir"], "-p", str(restored["port"]), "-U", "postgres",
            "-d", "app", "-c", "select (select count(*) from orders) || '/' || (select count(*) from customers)"],
            timeout=30)
        assert got.stdout.strip() == "3000/500"
    finally:
        stop_restored(target, real_cluster.programs)

    real_cluster.psql("create database app_copy owner app")
    # the target's URL (with its password) comes from the environment, not argv
    copy_url = real_cluster.database_url().rsplit("/", 1)[0] + "/app_copy"
    with_pw = {**env, "COPY_URL": copy_url}
    cli("restore", "--backup", backup["id"], "--into", "${COPY_URL}", "--no-owner", env_=with_pw, timeout=300)
    assert real_cluster.psql("select count(*) from orders", dbname="app_copy") == "3000"
    err = cli("restore", "--backup", backup["id"], "--into", "${COPY_URL}", code=2, env_=with_pw, timeout=60)
    assert "refusing to restore" in err and "user table" in err

    for secret in real_cluster.secrets():
        for text in seen:
            assert secret not in text
    records = (config.parent / "repo").rglob("*.json")
    for path in records:
        assert real_cluster.passwords["app"] not in path.read_text(), path


def test_custom_format_dump_and_verify_keep_on_chosen_port(real_cluster: RealCluster) -> None:
    from pgdr.pg.instance import free_port

    config = real_cluster.write_managed_config("managed-custom")
    env = real_cluster.env_with_database_url()
    out = run_cli("backup", "--logical", "--format", "custom", "--json", config=config, env=env, timeout=180)
    assert out.returncode == 0, out.stderr
    backup = json.loads(out.stdout)
    dump = config.parent / "repo" / "backups" / backup["id"] / "db-app.dump"
    assert dump.read_bytes()[:5] == b"PGDMP"  # one pg_dump -Fc file people can take elsewhere
    port = free_port()
    kept = run_cli("verify", backup["id"], "--keep", "--port", str(port), "--json", config=config, env=env,
                   timeout=300)
    assert kept.returncode == 0, kept.stderr
    info = json.loads(kept.stdout)["kept"]
    try:
        assert info["port"] == port
        got = real_cluster.programs.run("psql", ["-X", "-A", "-t", "-h", "127.0.0.1", "-p", str(port),
                                                 "-U", "postgres", "-d", "app", "-c", "select 1"],
                                        ok_codes=(0, 2), timeout=30)
        # TCP keeps the source's scram rule (no password for postgres): the port is the scratch's
        assert "password" in got.stderr or got.stdout.strip() == "1"
        count = real_cluster.programs.run("psql", ["-X", "-A", "-t", "-h", info["socket_dir"], "-p", str(port),
                                                   "-U", "postgres", "-d", "app", "-c",
                                                   "select count(*) from orders"], timeout=30)
        assert count.stdout.strip() == "3000"
    finally:
        stop_restored(Path(info["data_dir"]), real_cluster.programs)


def test_a_table_the_role_cannot_read_names_the_grant(real_cluster: RealCluster) -> None:
    real_cluster.psql("create table secret_stuff (id int); insert into secret_stuff values (1)", dbname="app")
    try:
        config = real_cluster.write_managed_config("managed-noread")
        result = run_cli("backup", "--logical", config=config, env=real_cluster.env_with_database_url(),
                         timeout=120)
        assert result.returncode == 1, result.stdout
        assert "secret_stuff" in result.stderr and "pg_read_all_data" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert not list((config.parent / "repo" / "backups").glob("*[0-9]F")), "a partial dump was published"
    finally:
        real_cluster.psql("drop table secret_stuff", dbname="app")
