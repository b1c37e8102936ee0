"""The continuous WAL archive: complete, checked, current, and gaps reported."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from pgdr.backup import archiver
from pgdr.pg.connect import session
from pgdr.pg.lsn import parse_segment_name
from pgdr.repo.wal import SegmentInvalid, WalArchive, check_segment_bytes, find_gaps
from pgdr.sandbox import sandbox as sb
from pgdr.sandbox.workload import Writer
from tests.conftest import run_cli


def _switch_wal(sandbox: sb.Sandbox, times: int) -> None:
    with session(sandbox.conninfo(sandbox.primary)) as conn:
        for _ in range(times):
            conn.execute("insert into orders (customer_id) values (1)")
            conn.execute("select pg_switch_wal()")


def _wait_archived(sandbox: sb.Sandbox, timeout: float = 15) -> list[str]:
    """Wait until every completed segment up to the primary's current one is archived."""
    with session(sandbox.conninfo(sandbox.primary)) as conn:
        row = conn.execute("select pg_walfile_name(pg_current_wal_lsn()) as f").fetchone()
    assert row is not None
    current = parse_segment_name(row["f"])
    assert current is not None
    archive = WalArchive(sandbox.repo)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        segs = archive.segments()
        if segs and segs[-1].segno >= current.segno - 1:
            return [s.name() for s in segs]
        time.sleep(0.1)
    raise AssertionError(f"archive did not reach {row['f']}")


def test_archive_is_complete_checked_and_current_under_writes(shared_sandbox: sb.Sandbox) -> None:
    writer = Writer(shared_sandbox.conninfo(shared_sandbox.primary)).start()
    try:
        time.sleep(1.0)
        result = run_cli("status", "--json", config=shared_sandbox.config_path)
    finally:
        writer.stop()
    report = json.loads(result.stdout)
    assert report["archive"]["streaming"] is True
    # the archiver fsyncs and reports each write; under load it trails by well under a second
    assert report["archive"]["lag_s"] < 1.0, report["archive"]
    _switch_wal(shared_sandbox, 2)
    names = _wait_archived(shared_sandbox)
    assert find_gaps([parse_segment_name(n) for n in names]) == []  # type: ignore[misc]
    # every archived segment decompresses (frame checksum) and is the segment it claims to be
    archive = WalArchive(shared_sandbox.repo)
    ident = shared_sandbox.repo.identity()
    assert ident is not None
    for name in names[-3:]:
        check_segment_bytes(name, archive.read(name), 16 * 1024 * 1024, ident["system_identifier"])


def test_archive_refuses_a_misnamed_segment(shared_sandbox: sb.Sandbox, tmp_path: Path) -> None:
    archive = WalArchive(shared_sandbox.repo)
    name = archive.segments()[0].name()
    data = archive.read(name)
    wrong = tmp_path / "0000000100000000000000FF"
    wrong.write_bytes(data)
    with pytest.raises(SegmentInvalid, match="first page is for address"):
        archive.store(wrong)
    with pytest.raises(SegmentInvalid, match="bytes, expected"):
        check_segment_bytes(name, data[:8192], 16 * 1024 * 1024, None)


def test_archive_never_overwrites_a_segment(shared_sandbox: sb.Sandbox, tmp_path: Path) -> None:
    """The same bytes again are a duplicate; other bytes under the same name are refused,
    and the archived copy stays byte for byte what it was (compared here with the file)."""
    from pgdr.errors import RepositoryError

    archive = WalArchive(shared_sandbox.repo)
    victim = archive.files()[0]
    stored_before = victim.path.read_bytes()
    again = tmp_path / victim.name
    again.write_bytes(archive.read(victim.name))
    assert archive.store(again) == "duplicate"
    data = bytearray(again.read_bytes())
    data[len(data) - 100] ^= 0x01  # in the last page's records, past every page header
    again.write_bytes(bytes(data))
    with pytest.raises(RepositoryError, match="already archived with different contents"):
        archive.store(again)
    assert victim.path.read_bytes() == stored_before


def test_damaged_archived_segment_is_detected_on_read(make_sandbox) -> None:  # type: ignore[no-untyped-def]
    sandbox = make_sandbox("damaged", standbys=0)
    _switch_wal(sandbox, 1)
    _wait_archived(sandbox)
    archive = WalArchive(sandbox.repo)
    victim = archive.files()[0]
    raw = bytearray(victim.path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    victim.path.write_bytes(bytes(raw))
    from pgdr.errors import RepositoryError

    with pytest.raises(RepositoryError, match="damaged"):
        archive.read(victim.name)


def test_removed_segment_is_a_gap_and_status_fails(make_sandbox) -> None:  # type: ignore[no-untyped-def]
    sandbox = make_sandbox("gap", standbys=0)
    assert run_cli("backup", config=sandbox.config_path).returncode == 0
    _switch_wal(sandbox, 4)
    names = _wait_archived(sandbox)
    ok = run_cli("status", "--json", config=sandbox.config_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    victim = names[-2]
    (sandbox.repo.wal_dir / f"{victim}.zst").unlink()
    result = run_cli("status", "--json", config=sandbox.config_path)
    assert result.returncode == 1
    report = json.loads(result.stdout)
    gap_check = next(c for c in report["checks"] if c["name"] == "archive gaps")
    assert gap_check["status"] == "fail"
    assert report["archive"]["gaps"][0]["from"] == victim
    human = run_cli("status", config=sandbox.config_path)
    assert human.returncode == 1 and "missing from the archive" in human.stdout


def test_stopped_archiver_fails_status_and_restart_fills_in(make_sandbox) -> None:  # type: ignore[no-untyped-def]
    sandbox = make_sandbox("archiver-down", standbys=0)
    assert run_cli("backup", config=sandbox.config_path).returncode == 0
    assert archiver.stop_background(sandbox.repo)
    _switch_wal(sandbox, 3)  # written while nobody archives: the slot keeps it
    result = run_cli("status", "--json", config=sandbox.config_path)
    assert result.returncode == 1
    lag = next(c for c in json.loads(result.stdout)["checks"] if c["name"] == "archive lag")
    assert lag["status"] == "fail" and "not streaming" in lag["summary"]
    assert run_cli("archiver", "start", config=sandbox.config_path).returncode == 0
    names = _wait_archived(sandbox)
    assert find_gaps([parse_segment_name(n) for n in names]) == []  # type: ignore[misc]
    assert run_cli("status", config=sandbox.config_path).returncode == 0
