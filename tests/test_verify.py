"""`pgdr verify`: real backups restored into real scratch servers, nothing mocked."""

from __future__ import annotations

import json
from pathlib import Path

from pgdr.pg.connect import session
from pgdr.sandbox import sandbox as sb
from tests.conftest import run_cli


def _scratch_is_clean(sandbox: sb.Sandbox) -> None:
    """No scratch folder and no server running from one remains."""
    scratch = sandbox.root / "scratch"
    assert not scratch.exists() or list(scratch.iterdir()) == []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            assert str(scratch) not in cmdline, f"leftover process {proc.name}: {cmdline}"


def _backup(sandbox: sb.Sandbox, *extra: str) -> str:
    result = run_cli("backup", "--json", *extra, config=sandbox.config_path)
    assert result.returncode == 0, result.stderr
    return str(json.loads(result.stdout)["id"])


def _verify(sandbox: sb.Sandbox, backup_id: str, config: Path | None = None) -> tuple[int, dict, str]:  # type: ignore[type-arg]
    result = run_cli("verify", backup_id, "--json", config=config or sandbox.config_path)
    assert "Traceback" not in result.stderr
    return result.returncode, json.loads(result.stdout), result.stderr


def _check(record: dict, name: str) -> dict:  # type: ignore[type-arg]
    return next(c for c in record["checks"] if c["name"] == name)


def test_good_physical_backup_verifies_and_list_shows_it(shared_sandbox: sb.Sandbox) -> None:
    backup_id = _backup(shared_sandbox)
    code, record, stderr = _verify(shared_sandbox, backup_id)
    assert code == 0, (stderr, [c for c in record["checks"] if c["status"] != "ok"])
    assert record["passed"] is True
    names = [c["name"] for c in record["checks"]]
    for expected in ("files", "pg_verifybackup", "restore", "amcheck", "foreign keys",
                     "unique constraints", "row counts", "data checksums"):
        assert expected in names
    assert all(c["status"] == "ok" for c in record["checks"])
    assert record["row_counts"]["app"]["public.order_items"] >= 60_000
    assert _check(record, "foreign keys")["evidence"]["checked"] >= 4
    assert record["restore_s"] > 0 and record["total_s"] >= record["restore_s"]
    assert all("duration_s" in c for c in record["checks"])

    on_disk = json.loads((shared_sandbox.repo.backups_dir / backup_id / "verify.json").read_text())
    assert on_disk["passed"] is True
    listed = run_cli("list", "--json", config=shared_sandbox.config_path)
    assert {r["id"]: r["verified"] for r in json.loads(listed.stdout)}[backup_id] == "verified"
    status = run_cli("status", "--json", config=shared_sandbox.config_path)
    verified = next(c for c in json.loads(status.stdout)["checks"] if c["name"] == "verified backup")
    assert backup_id in verified["summary"]
    _scratch_is_clean(shared_sandbox)


def test_flipped_byte_fails_naming_the_file(shared_sandbox: sb.Sandbox) -> None:
    backup_id = _backup(shared_sandbox)
    # base.tar.zst; base.tar.gz from a PostgreSQL built without zstd (the 18 pass)
    target = next((shared_sandbox.repo.backups_dir / backup_id).glob("base.tar.*"))
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))

    result = run_cli("verify", backup_id, config=shared_sandbox.config_path)
    assert result.returncode == 1
    assert target.name in result.stderr and "blake3" in result.stderr and "does not match" in result.stderr
    assert "Traceback" not in result.stderr
    listed = run_cli("list", "--json", config=shared_sandbox.config_path)
    assert {r["id"]: r["verified"] for r in json.loads(listed.stdout)}[backup_id] == "failed"
    _scratch_is_clean(shared_sandbox)


def test_failing_user_check_exits_1_and_passing_one_is_recorded(shared_sandbox: sb.Sandbox) -> None:
    config = shared_sandbox.root / "pgdr-checks.toml"
    config.write_text(shared_sandbox.config_path.read_text() + """
[verify]
tolerance = 0.5

[[verify.checks]]
name = "has customers"
database = "app"
sql = "select count(*) > 0 from customers"
expect = true

[[verify.checks]]
name = "no customers named root"
database = "app"
sql = "select count(*) from customers where name = 'Customer 1'"
expect = "0"
""")
    backup_id = _backup(shared_sandbox)
    code, record, stderr = _verify(shared_sandbox, backup_id, config)
    assert code == 1
    assert _check(record, "check has customers")["status"] == "ok"
    failed = _check(record, "check no customers named root")
    assert failed["status"] == "fail" and failed["evidence"]["got"] == "1"
    assert "check no customers named root" in stderr
    _scratch_is_clean(shared_sandbox)


def test_orphaned_row_behind_not_valid_foreign_key_is_reported(make_sandbox) -> None:  # type: ignore[no-untyped-def]
    sandbox = make_sandbox("orphan", standbys=0)
    with session(sandbox.conninfo(sandbox.primary)) as conn:
        conn.execute("create table parents (id int primary key)")
        conn.execute("create table children (id int primary key, parent_id int)")
        conn.execute("insert into parents values (1)")
        conn.execute("insert into children values (1, 1), (2, 999)")
        conn.execute("alter table children add constraint children_parent_fk "
                     "foreign key (parent_id) references parents (id) not valid")
    backup_id = _backup(sandbox)
    code, record, stderr = _verify(sandbox, backup_id)
    assert code == 1
    fk = _check(record, "foreign keys")
    assert fk["status"] == "fail"
    assert "children_parent_fk" in fk["summary"] and "public.children" in fk["summary"]
    assert "NOT VALID" in fk["summary"]
    assert fk["evidence"]["violations"][0]["orphans"] == 1
    assert "(999)" in fk["evidence"]["violations"][0]["sample"]
    assert "children_parent_fk" in stderr
    # only that check fails: the restore itself is sound
    assert [c["name"] for c in record["checks"] if c["status"] == "fail"] == ["foreign keys"]
    _scratch_is_clean(sandbox)


def test_logical_dump_verifies_exactly_after_table_truncated(make_sandbox) -> None:  # type: ignore[no-untyped-def]
    sandbox = make_sandbox("logical", standbys=0)
    backup_id = _backup(sandbox, "--logical")
    with session(sandbox.conninfo(sandbox.primary)) as conn:
        conn.execute("truncate order_items")
    code, record, stderr = _verify(sandbox, backup_id)
    assert code == 0, (stderr, [c for c in record["checks"] if c["status"] != "ok"])
    assert record["kind"] == "logical"
    assert record["row_counts"]["app"]["public.order_items"] == 60_000
    assert "exactly" in _check(record, "row counts")["summary"]
    _scratch_is_clean(sandbox)


def test_mass_delete_is_flagged_against_previous_verified_backup(make_sandbox) -> None:  # type: ignore[no-untyped-def]
    sandbox = make_sandbox("shrink", standbys=0)
    first = _backup(sandbox)
    code, record, stderr = _verify(sandbox, first)
    assert code == 0, stderr
    with session(sandbox.conninfo(sandbox.primary)) as conn:
        conn.execute("delete from order_items where order_id > 3000")
    second = _backup(sandbox)
    code, record, stderr = _verify(sandbox, second)
    assert code == 1
    counts = _check(record, "row counts")
    assert counts["status"] == "fail"
    assert "app.public.order_items" in counts["summary"] and first in counts["summary"]
    problem = counts["evidence"]["problems"][0]
    assert problem["before"] == 60_000 and problem["now"] == 6_000
    assert record["baseline"] == first
    assert "order_items" in stderr
    _scratch_is_clean(sandbox)


def test_wal_fetch_exits_1_for_absent_file(shared_sandbox: sb.Sandbox, base_dir: Path) -> None:
    result = run_cli("--config", str(shared_sandbox.config_path), "wal-fetch",
                     "0000000100000000000000FF", str(base_dir / "nothing"))
    assert result.returncode == 1
    assert not (base_dir / "nothing").exists()


def test_ctrl_c_during_verify_leaves_no_server_or_folder(shared_sandbox: sb.Sandbox) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    backup_id = _backup(shared_sandbox)
    env = {k: v for k, v in os.environ.items() if k != "PGDR_CONFIG"}
    env["PGDR_CONFIG"] = str(shared_sandbox.config_path)
    proc = subprocess.Popen([sys.executable, "-m", "pgdr", "verify", backup_id], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    scratch = shared_sandbox.root / "scratch"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if any((d / "data" / "postmaster.pid").exists() for d in scratch.glob("verify-*")):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "verify finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    _scratch_is_clean(shared_sandbox)
