"""Databases in other server encodings (SQL_ASCII, LATIN1) with non-ASCII names: psycopg
returns bytes for text from a SQL_ASCII session unless the client asks for UTF-8, which
once broke backups of such clusters."""

from __future__ import annotations

import json

from pgdr.pg.connect import session
from pgdr.repo.manifest import read_manifest
from pgdr.sandbox import sandbox as sb
from tests.conftest import SandboxFactory, run_cli


def _make_databases(sandbox: sb.Sandbox) -> None:
    with session(sandbox.conninfo(sandbox.primary, dbname="postgres")) as conn:
        conn.execute("create database legacy encoding 'SQL_ASCII' lc_collate 'C' lc_ctype 'C' template template0")
        conn.execute("create database latin encoding 'LATIN1' lc_collate 'C' lc_ctype 'C' template template0")
    for db in ("legacy", "latin"):
        with session(sandbox.conninfo(sandbox.primary, dbname=db)) as conn:
            conn.execute('create table "Bücher" (id int primary key, titel text)')
            conn.execute("""insert into "Bücher" select g, 'Straße ' || g from generate_series(1, 500) g""")


def test_backup_and_verify_of_sql_ascii_and_latin1_databases(make_sandbox: SandboxFactory) -> None:
    sandbox = make_sandbox("enc", standbys=0)
    _make_databases(sandbox)
    backup = run_cli("backup", "--json", config=sandbox.config_path)
    assert backup.returncode == 0, backup.stderr
    backup_id = json.loads(backup.stdout)["id"]
    manifest = read_manifest(sandbox.repo.backups_dir / backup_id)
    names = {(r.database, r.qualified) for r in manifest.relations.values() if r.kind == "r"}
    assert ("legacy", "public.Bücher") in names and ("latin", "public.Bücher") in names
    verify = run_cli("verify", backup_id, "--json", config=sandbox.config_path)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    logical = run_cli("backup", "--logical", "--json", config=sandbox.config_path)
    assert logical.returncode == 0, logical.stderr
    dumped = read_manifest(sandbox.repo.backups_dir / json.loads(logical.stdout)["id"])
    assert dumped.databases["legacy"].tables["public.Bücher"] == 500
    assert dumped.databases["latin"].tables["public.Bücher"] == 500
    diagnose = run_cli("diagnose", "--json", config=sandbox.config_path)
    assert diagnose.returncode in (0, 1), diagnose.stderr
    assert "Traceback" not in diagnose.stderr
