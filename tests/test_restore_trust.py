"""Restore you can trust (issue 10), against real servers, with the faults injected:
a tablespace on the primary's host that a restore must never touch, byte flips in each
kind of backup file and in an archived segment, an edited or unparsable pgdr.json, and
expire racing a reader. Outcomes are counted from the files and servers themselves."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pgdr.fsutil import lock_is_held
from pgdr.pg.connect import session
from pgdr.pg.programs import Programs
from pgdr.repo.locks import backup_lock, reading
from pgdr.repo.manifest import BackupManifest
from pgdr.repo.wal import WalArchive
from pgdr.restore.pitr import stop_restored
from pgdr.sandbox import sandbox as sb
from tests.conftest import run_cli
from tests.test_archive import _switch_wal, _wait_archived


def _tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file below root (the independent checker of 'unchanged')."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _flip(path: Path, offset: int | None = None) -> int:
    """Flip one byte (default: in the middle); returns the offset to flip it back."""
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if offset is None else offset
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))
    return at


def _count(conninfo: str, sql: str) -> int:
    with session(conninfo) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return int(next(iter(row.values())))


@dataclass
class Site:
    sandbox: sb.Sandbox
    tablespace: Path
    backup_id: str
    work: Path


@pytest.fixture(scope="module")
def site(base_dir: Path, programs: Programs) -> Iterator[Site]:
    """A primary with a tablespace on the same host, a table in it, and one backup."""
    root = base_dir / "trust"
    sandbox = sb.up(root, programs, standbys=0)
    ts = root / "ts_live"
    ts.mkdir()
    programs.run_as.chown(ts)
    primary = sandbox.conninfo(sandbox.primary)
    try:
        with session(primary) as conn:
            conn.execute(f"create tablespace fast location '{ts}'")
            conn.execute("create table hot (id int primary key, v text) tablespace fast")
            conn.execute("insert into hot select g, 'row ' || g from generate_series(1, 5000) g")
        res = run_cli("backup", "--json", config=sandbox.config_path)
        assert res.returncode == 0, res.stderr
        backup_id = json.loads(res.stdout)["id"]
        _switch_wal(sandbox, 2)
        _wait_archived(sandbox)
        work = root / "work"
        work.mkdir()
        os.chmod(work, 0o755)
        yield Site(sandbox, ts, backup_id, work)
    finally:
        sb.down(root, programs, purge=True)


def _restore(site: Site, name: str, *args: str) -> tuple[int, str, Path]:
    """(exit code, stdout then stderr, target dir)."""
    target = site.work / name
    res = run_cli("restore", "--target-dir", str(target), "--json", *args, config=site.sandbox.config_path)
    assert "Traceback" not in res.stderr
    return res.returncode, res.stdout + "\n" + res.stderr, target


def test_tablespace_restore_never_touches_the_primarys_files(site: Site, programs: Programs) -> None:
    sandbox = site.sandbox
    primary = sandbox.instance(sandbox.primary, programs)
    manifest = json.loads((sandbox.repo.backups_dir / site.backup_id / "pgdr.json").read_text())
    oid = next(iter(manifest["tablespaces"]))
    assert manifest["tablespaces"][oid]["location"] == str(site.tablespace)
    assert manifest["tablespaces"][oid]["file"] in manifest["files"]
    # Freeze the primary so its own checkpoints cannot change its files, then fingerprint them.
    primary.stop(timeout=60)
    before = _tree_digest(site.tablespace)
    assert before
    try:
        code, out, target = _restore(site, "ts_restore", "--latest")
        assert code == 0, out
        info = json.loads(out[: out.rindex("}") + 1])
        link = target / "pg_tblspc" / oid
        assert link.resolve() == (target / "pg_tblspc_data" / oid).resolve()
        used_map = target / "tablespace_map.old"  # PostgreSQL renames it once it made the links
        assert used_map.read_text().strip() == f"{oid} {(target / 'pg_tblspc_data' / oid).resolve()}"
        restored = info["conninfo"].replace("dbname=postgres", "dbname=app")
        assert _count(restored, "select count(*) from hot") == 5000
        with session(restored) as conn:  # writes on the restored copy, then force them to disk
            conn.execute("insert into hot select g, 'new' from generate_series(5001, 9000) g")
            conn.execute("update hot set v = 'changed' where id <= 100")
            conn.execute("checkpoint")
        stop_restored(target, programs)
        assert _tree_digest(site.tablespace) == before, "the restore changed the primary's tablespace"
        shutil.rmtree(target)
    finally:
        primary.start(timeout=60)
    assert _count(sandbox.conninfo(sandbox.primary), "select count(*) from hot") == 5000
    assert _count(sandbox.conninfo(sandbox.primary), "select count(*) from hot where v = 'changed'") == 0


def test_tablespace_goes_where_the_map_says(site: Site, programs: Programs) -> None:
    manifest = json.loads((site.sandbox.repo.backups_dir / site.backup_id / "pgdr.json").read_text())
    oid = next(iter(manifest["tablespaces"]))
    place = site.work / "mapped" / "ts"
    code, out, target = _restore(site, "ts_mapped", "--immediate", "--tablespace-map", f"{oid}={place}")
    assert code == 0, out
    try:
        assert (target / "pg_tblspc" / oid).resolve() == place.resolve()
        assert any(p.name.startswith("PG_") for p in place.iterdir())
        info = json.loads(out[: out.rindex("}") + 1])
        assert _count(info["conninfo"].replace("dbname=postgres", "dbname=app"), "select count(*) from hot") == 5000
    finally:
        stop_restored(target, programs)
        shutil.rmtree(target)
        shutil.rmtree(place)


def test_tablespace_landing_on_a_used_directory_is_refused(site: Site) -> None:
    manifest = json.loads((site.sandbox.repo.backups_dir / site.backup_id / "pgdr.json").read_text())
    oid = next(iter(manifest["tablespaces"]))
    for bad in (site.tablespace, site.work / "occupied"):
        if bad != site.tablespace:
            (bad / "PG_15_202209061").mkdir(parents=True)
        code, out, target = _restore(site, "ts_refused", "--immediate", "--tablespace-map", f"{oid}={bad}")
        assert code == 2, out
        assert "refusing to restore tablespace" in out and len(out.strip().splitlines()) <= 2
        assert not target.exists()
    code, out, _t = _restore(site, "ts_refused", "--immediate", "--tablespace-map", "notanoid")
    assert code == 2 and "OID=PATH" in out
    inside = site.work / "ts_refused" / "base"
    code, out, target = _restore(site, "ts_refused", "--immediate", "--tablespace-map", f"{oid}={inside}")
    assert code == 2 and "inside the data directory" in out and not target.exists(), out


def test_both_verifies_pass_with_a_tablespace(site: Site) -> None:
    res = run_cli("verify", site.backup_id, "--json", config=site.sandbox.config_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr
    record = json.loads(res.stdout)
    names = {c["name"]: c["status"] for c in record["checks"]}
    assert names["files"] == "ok" and names["pg_verifybackup"] == "ok" and names["manifest"] == "ok"
    assert names["archived WAL"] == "ok"
    logical = run_cli("backup", "--logical", "--json", config=site.sandbox.config_path)
    assert logical.returncode == 0, logical.stderr
    res = run_cli("verify", json.loads(logical.stdout)["id"], "--json", config=site.sandbox.config_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr


@pytest.mark.parametrize("victim", ["base.tar.zst", "pg_wal.tar", "tablespace"])
def test_flipped_byte_in_a_backup_file_stops_restore_and_verify(site: Site, victim: str) -> None:
    folder = site.sandbox.repo.backups_dir / site.backup_id
    manifest = json.loads((folder / "pgdr.json").read_text())
    name = next(iter(manifest["tablespaces"].values()))["file"] if victim == "tablespace" else victim
    # pg_wal.tar: flip inside the first segment's data, past the tar header
    at = _flip(folder / name, 4096 if name == "pg_wal.tar" else None)
    try:
        code, out, target = _restore(site, f"flip_{victim}", "--immediate")
        assert code == 1, out
        assert name in out and "blake3" in out and "does not match" in out
        assert not target.exists()
        ver = run_cli("verify", site.backup_id, "--json", config=site.sandbox.config_path)
        assert ver.returncode == 1 and name in ver.stderr
        assert "Traceback" not in ver.stderr
    finally:
        _flip(folder / name, at)
        (folder / "verify.json").unlink(missing_ok=True)


def test_missing_backup_file_is_named(site: Site) -> None:
    folder = site.sandbox.repo.backups_dir / site.backup_id
    (folder / "pg_wal.tar").rename(folder / "pg_wal.tar.away")
    try:
        code, out, target = _restore(site, "missing_file", "--immediate")
        assert code == 1 and "pg_wal.tar" in out and not target.exists(), out
    finally:
        (folder / "pg_wal.tar.away").rename(folder / "pg_wal.tar")


def _rewrite(folder: Path, reseal: bool, **changes: object) -> bytes:
    path = folder / "pgdr.json"
    original = path.read_bytes()
    data = json.loads(original)
    data.update(changes)
    if reseal:
        data["manifest_sha256"] = BackupManifest.model_validate(data).content_digest()
    path.write_text(json.dumps(data))
    return original


@pytest.mark.parametrize(("field", "value"), [("system_identifier", "7000000000000000001"),
                                              ("stop_lsn", "0/1000000")])
def test_edited_pgdr_json_fails_naming_the_field(site: Site, field: str, value: str) -> None:
    folder = site.sandbox.repo.backups_dir / site.backup_id
    original = _rewrite(folder, False, **{field: value})
    try:
        code, out, _t = _restore(site, f"edit_{field}", "--immediate")
        assert code == 1 and "changed after the backup" in out and site.backup_id in out, out
        (folder / "pgdr.json").write_bytes(original)
        _rewrite(folder, True, **{field: value})  # a forged seal: the cross-check must still catch it
        code, out, target = _restore(site, f"edit2_{field}", "--immediate")
        assert code == 1 and field in out, out
        assert not target.exists()
        ver = run_cli("verify", site.backup_id, "--json", config=site.sandbox.config_path)
        assert ver.returncode == 1 and field in ver.stderr, ver.stdout[-2000:] + ver.stderr
    finally:
        (folder / "pgdr.json").write_bytes(original)
        (folder / "verify.json").unlink(missing_ok=True)


def test_unparsable_pgdr_json_is_listed_damaged_and_fails_status(site: Site) -> None:
    folder = site.sandbox.repo.backups_dir / site.backup_id
    original = (folder / "pgdr.json").read_bytes()
    (folder / "pgdr.json").write_bytes(original[: len(original) // 2])
    try:
        listed = run_cli("list", "--json", config=site.sandbox.config_path)
        rows = json.loads(listed.stdout)
        assert [r["verified"] for r in rows if r["id"] == site.backup_id] == ["damaged"]
        status = run_cli("status", "--json", config=site.sandbox.config_path)
        assert status.returncode == 1
        check = next(c for c in json.loads(status.stdout)["checks"] if c["name"] == "damaged backups")
        assert check["status"] == "fail" and site.backup_id in check["summary"]
        plan = run_cli("expire", "--dry-run", "--json", config=site.sandbox.config_path)
        data = json.loads(plan.stdout)
        assert data["wal_remove_count"] == 0 and any("no WAL removed" in n for n in data["notes"])
    finally:
        (folder / "pgdr.json").write_bytes(original)


def test_damaged_archived_segment_is_named_by_status_verify_and_restore(site: Site) -> None:
    sandbox = site.sandbox
    _switch_wal(sandbox, 3)
    names = _wait_archived(sandbox)
    stop_wal = json.loads((sandbox.repo.backups_dir / site.backup_id / "pgdr.json").read_text())["stop_wal"]
    # Not the segment right after the backup: recovery to consistency reads one record into it.
    victim = [n for n in names if n > stop_wal][-2]
    path = sandbox.repo.wal_dir / f"{victim}.zst"
    at = _flip(path)
    try:
        status = run_cli("status", "--json", config=sandbox.config_path)
        assert status.returncode == 1
        gaps = next(c for c in json.loads(status.stdout)["checks"] if c["name"] == "archive gaps")
        assert gaps["status"] == "fail" and victim in gaps["summary"]
        ver = run_cli("verify", site.backup_id, "--json", config=sandbox.config_path)
        assert ver.returncode == 1 and victim in ver.stderr
        record = json.loads(ver.stdout)
        failed = [c["name"] for c in record["checks"] if c["status"] == "fail"]
        assert failed == ["archived WAL"], [c["summary"] for c in record["checks"] if c["status"] == "fail"]
        assert record["backup_ok"] is True  # the backup itself is sound: restore may still choose it
        code, out, target = _restore(site, "damaged_wal", "--latest")
        assert code == 1 and victim in out, out
        assert not target.exists()
        fetch = run_cli("--config", str(sandbox.config_path), "wal-fetch", victim, str(site.work / "fetched"))
        assert fetch.returncode == 126 and victim in fetch.stderr
    finally:
        _flip(path, at)
        (sandbox.repo.backups_dir / site.backup_id / "verify.json").unlink(missing_ok=True)
    assert run_cli("status", config=sandbox.config_path).returncode == 0


def test_finished_segments_waiting_in_incoming_count_as_archived(site: Site, programs: Programs) -> None:
    """A finished segment the archiver has not stored yet is no gap, and recovery reads it."""
    sandbox = site.sandbox
    _switch_wal(sandbox, 2)
    names = _wait_archived(sandbox)
    assert run_cli("archiver", "stop", config=sandbox.config_path).returncode == 0
    try:
        waiting = names[-2]
        archive = WalArchive(sandbox.repo)
        (sandbox.repo.incoming_dir / waiting).write_bytes(archive.read(waiting))
        (sandbox.repo.wal_dir / f"{waiting}.zst").unlink()  # as if pg_receivewal just finished it
        status = run_cli("status", "--json", config=sandbox.config_path)
        gaps = next(c for c in json.loads(status.stdout)["checks"] if c["name"] == "archive gaps")
        assert gaps["status"] == "ok", gaps
        code, out, target = _restore(site, "from_incoming", "--latest")
        assert code == 0, out
        stop_restored(target, programs)
        shutil.rmtree(target)
    finally:
        assert run_cli("archiver", "start", config=sandbox.config_path).returncode == 0
    deadline = time.monotonic() + 30
    while not (sandbox.repo.wal_dir / f"{waiting}.zst").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert (sandbox.repo.wal_dir / f"{waiting}.zst").exists()  # stored once the archiver runs


def test_backup_that_failed_verification_is_skipped_unless_forced(site: Site) -> None:
    sandbox = site.sandbox
    res = run_cli("backup", "--json", config=sandbox.config_path)
    assert res.returncode == 0, res.stderr
    newer = json.loads(res.stdout)["id"]
    folder = sandbox.repo.backups_dir / newer
    at = _flip(folder / "base.tar.zst")
    ver = run_cli("verify", newer, "--json", config=sandbox.config_path)
    _flip(folder / "base.tar.zst", at)  # the record stays: verification FAILED
    assert ver.returncode == 1 and json.loads((folder / "verify.json").read_text())["backup_ok"] is False
    code, out, target = _restore(site, "skip_failed", "--immediate")
    assert code == 0, out
    info = json.loads(out[: out.rindex("}") + 1])
    assert info["backup_id"] == site.backup_id and newer in info["chosen_because"]
    stop_restored(target, Programs())
    shutil.rmtree(target)
    code, out, target = _restore(site, "given_failed", "--immediate", "--backup", newer)
    assert code == 1 and "--force" in out and not target.exists(), out
    code, out, target = _restore(site, "forced", "--immediate", "--backup", newer, "--force")
    assert code == 0, out
    stop_restored(target, Programs())
    shutil.rmtree(target)
    code, out, _t = _restore(site, "nosuch", "--immediate", "--backup", "20990101T000000F")
    assert code == 1 and len(out.strip().splitlines()) == 1, out


def test_expire_skips_what_a_reader_holds(site: Site) -> None:
    sandbox = site.sandbox
    with open(sandbox.config_path, "a") as conf:
        conf.write('\n[retention]\nkeep_last = 1\nkeep_within = "0s"\n')
    newer = run_cli("backup", "--json", config=sandbox.config_path)
    assert newer.returncode == 0, newer.stderr
    _switch_wal(sandbox, 2)
    _wait_archived(sandbox)
    wal_before = sorted(p.name for p in sandbox.repo.wal_dir.glob("*.zst"))
    with reading(sandbox.repo, site.backup_id):  # what a running restore/verify holds
        res = run_cli("expire", "--yes", "--json", config=sandbox.config_path)
        assert res.returncode == 0, res.stderr
        assert "skipped" in res.stderr and site.backup_id in res.stderr
        assert (sandbox.repo.backups_dir / site.backup_id / "pgdr.json").exists()
        assert set(wal_before) <= {p.name for p in sandbox.repo.wal_dir.glob("*.zst")}  # no WAL removed


def test_expire_racing_a_running_verify_deletes_nothing_it_reads(site: Site) -> None:
    """A real `pgdr verify` runs while `pgdr expire --yes` is called repeatedly."""
    sandbox = site.sandbox
    env = {k: v for k, v in os.environ.items() if k != "PGDR_CONFIG"}
    verify = subprocess.Popen([sys.executable, "-m", "pgdr", "--config", str(sandbox.config_path), "verify",
                               site.backup_id, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=env, text=True)
    lock = backup_lock(sandbox.repo, site.backup_id)
    try:
        deadline = time.monotonic() + 60
        while not lock_is_held(lock) and verify.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lock_is_held(lock), "verify never took its shared lock"
        res = run_cli("expire", "--yes", "--json", config=sandbox.config_path)
        assert res.returncode == 0, res.stderr
        assert site.backup_id in json.loads(res.stdout)["keep"] or "skipped" in res.stderr
        out, err = verify.communicate(timeout=600)
    finally:
        if verify.poll() is None:
            verify.kill()
            verify.wait()
    assert verify.returncode == 0, out[-2000:] + err
    assert (sandbox.repo.backups_dir / site.backup_id / "pgdr.json").exists()


def test_retention_keeps_the_newest_verified_backup(site: Site) -> None:
    """keep_last = 1 (set above): the newest backup is unverified, so the older verified one
    (verified by the racing test) must survive, and expire says why."""
    sandbox = site.sandbox
    assert json.loads((sandbox.repo.backups_dir / site.backup_id / "verify.json").read_text())["passed"]
    res = run_cli("expire", "--yes", "--json", config=sandbox.config_path)
    assert res.returncode == 0, res.stderr
    plan = json.loads(res.stdout)
    assert site.backup_id in plan["keep"] and site.backup_id not in plan["remove"]
    assert any(site.backup_id in n and "newest verified" in n for n in plan["notes"])
    assert (sandbox.repo.backups_dir / site.backup_id / "pgdr.json").exists()
    rows = json.loads(run_cli("list", "--json", config=sandbox.config_path).stdout)
    physical = {r["id"] for r in rows if r["kind"] == "physical"}
    assert site.backup_id in physical and len(physical) == 2  # it and the newest; the rest removed


def test_restore_never_asks_the_primary_when_the_repository_has_a_physical_backup(site: Site,
                                                                                 programs: Programs) -> None:
    """A restore runs when the primary may be gone. Here the config's primary is a socket
    that accepts and never answers (a hung or half-dead host): restore must not connect
    to it at all (before, it asked the primary's role about logical-only mode and waited
    out the 5 s connect timeout first). The listener's queue is the independent witness."""
    sandbox = site.sandbox
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        text = sandbox.config_path.read_text()
        original = next(ln for ln in text.splitlines() if ln.startswith("conninfo = "))  # the primary's
        dead = text.replace(original, f'conninfo = "host=127.0.0.1 port={port} dbname=postgres user=postgres"', 1)
        config = sandbox.config_path.with_name("pgdr-silent-primary.toml")
        config.write_text(dead)
        target = site.work / "silent-primary"
        try:
            res = run_cli("restore", "--immediate", "--target-dir", str(target), "--json", config=config)
            assert res.returncode == 0, res.stderr
            assert json.loads(res.stdout)["state"] == "promoted"
            silent.setblocking(False)
            with pytest.raises(BlockingIOError):
                silent.accept()[0].close()  # someone connected: restore asked the primary
        finally:
            stop_restored(target, programs)
            config.unlink()
