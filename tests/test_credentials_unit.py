"""The parsing behind credentials for child programs (no server needed)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from pgdr.errors import AuthenticationFailed, PgdrError, PrivilegeMissing
from pgdr.pg.credentials import _entries_for, _split_pgpass, auth_error, no_prompt_args, target_of
from pgdr.restore.scratch import pick_port


def test_pgpass_fields_honour_escapes() -> None:
    assert _split_pgpass(r"db\:1:5432:*:dba:pa\:ss:word") == ["db\\:1", "5432", "*", "dba", "pa\\:ss:word"]


def test_only_the_childs_role_is_copied(tmp_path: Path) -> None:
    passfile = tmp_path / "pgpass"
    passfile.write_text("# comment\n127.0.0.1:*:*:dba:one\n*:*:*:app:two\n*:*:*:*:three\nbroken line\n")
    assert _entries_for(passfile, "dba") == ["127.0.0.1:*:*:dba:one", "*:*:*:*:three"]


def test_target_from_conninfo_url_and_flags() -> None:
    assert target_of(["-d", "host=10.0.0.1 port=5433 user=dba dbname=postgres"]) == {
        "host": "10.0.0.1", "port": "5433", "user": "dba"}
    assert target_of(["--dbname=postgresql://app@db.example.com:6543/app"])["user"] == "app"
    assert target_of(["-h", "/run/pg", "-p", "5432", "-U", "postgres"]) == {
        "host": "/run/pg", "port": "5432", "user": "postgres"}
    assert target_of(["--source-server", "host=h port=1 user=r"])["user"] == "r"


def test_auth_and_privilege_errors_name_user_host_and_fix() -> None:
    target = {"host": "127.0.0.1", "port": "5432", "user": "dba"}
    err = auth_error('pg_basebackup: error: ... FATAL:  password authentication failed for user "dba"', target)
    assert isinstance(err, AuthenticationFailed)
    assert err.message == "password authentication failed for user dba at 127.0.0.1:5432"
    assert err.hint is not None and "PGPASSFILE" in err.hint
    missing = auth_error("fe_sendauth: no password supplied", target)
    assert isinstance(missing, AuthenticationFailed) and "no password for user dba" in missing.message
    priv = auth_error("FATAL:  must be superuser or replication role to start walsender", target)
    assert isinstance(priv, PrivilegeMissing) and priv.hint is not None and "ALTER ROLE dba REPLICATION" in priv.hint
    assert auth_error("FATAL:  database \"x\" does not exist", target) is None


def test_prompting_programs_get_w_and_servers_do_not() -> None:
    assert no_prompt_args("pg_basebackup") == ["-w"]
    assert no_prompt_args("pg_rewind") == [] and no_prompt_args("pg_ctl") == []


def test_scratch_port_range() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PgdrError, match="no free port"):
            pick_port((port, port))
    assert pick_port((port, port)) == port


def test_private_passfiles_of_dead_processes_are_swept(tmp_path: Path) -> None:
    import subprocess

    from pgdr.pg.credentials import PRIVATE_PREFIX, sweep_stale

    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f"{PRIVATE_PREFIX}{dead.pid}-abc"
    alive = tmp_path / f"{PRIVATE_PREFIX}{os.getpid()}-def"
    for folder in (stale, alive):
        folder.mkdir()
        (folder / "pgpass").write_text("*:*:*:dba:secret\n")
    assert sweep_stale(tmp_path) == [stale]
    assert not stale.exists() and alive.exists()


def test_permission_denied_names_object_and_grant() -> None:
    err = auth_error('pg_dump: error: query failed: ERROR:  permission denied for table secret_stuff',
                     {"user": "app", "host": "db", "port": "5432"})
    assert isinstance(err, PrivilegeMissing)
    assert err.message == "role app may not read table secret_stuff at db:5432"
    assert err.hint is not None and "GRANT pg_read_all_data TO app" in err.hint


def test_unreadable_passfile_is_dropped_from_the_childs_conninfo() -> None:
    from pgdr.pg.credentials import _conninfo_passfile, _without_passfile

    args = ["-D", "/x", "-d", "host=h user=dba passfile=/root/pgpass dbname=postgres", "-Ft"]
    assert _conninfo_passfile(args) == Path("/root/pgpass")
    rewritten = _without_passfile(args)
    assert "passfile" not in rewritten[3] and "user=dba" in rewritten[3] and rewritten[4] == "-Ft"
