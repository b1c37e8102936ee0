"""An S3 repository's WAL is fetched on demand: status and expire decide from the bucket's
listing and fetch no segment; verify and restore fetch from the chosen backup's start on;
find-disaster with an LSN bound fetches from that segment on.

What was fetched is counted independently: the segment files in each fresh working folder's
wal/ cache, compared with the bucket's listing read with boto3.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pgdr.pg.connect import session
from pgdr.pg.lsn import parse_segment_name
from pgdr.pg.programs import Programs
from pgdr.restore.pitr import stop_restored
from pgdr.sandbox import sandbox as sb
from tests.conftest import run_cli
from tests.s3_server import BUCKET
from tests.s3_server import bucket_keys as keys
from tests.test_s3 import _wait, archived_segnos, current_segment, s3_config, switch_wal
from tests.test_s3 import sandbox as sandbox  # noqa: F401 - the module-scoped sandbox fixture

PREFIX = "lazy"


def cached_segnos(box: sb.Sandbox, folder: str) -> list[int]:
    """Segment numbers in a working folder's wal/ cache: what pgdr fetched."""
    segs = (parse_segment_name(p.name.removesuffix(".zst")) for p in (box.root / folder / "wal").glob("*.zst"))
    return sorted(s.segno for s in segs if s is not None)


def wait_archived(box: sb.Sandbox, client: Any) -> int:
    last = current_segment(box) - 1
    _wait(f"segment {last} in the bucket", lambda: last in archived_segnos(client, f"{PREFIX}/"))
    return last


def test_wal_is_fetched_only_where_needed(sandbox: sb.Sandbox, moto: tuple[int, Any],  # noqa: F811
                                          base_dir: Path) -> None:
    port, client = moto
    cfg = s3_config(sandbox, "lazy-arch", port, PREFIX)
    assert run_cli("archiver", "start", config=cfg).returncode == 0
    try:
        with session(sandbox.conninfo(sandbox.primary)) as conn:
            conn.execute("create table lazy_marker (n int)")
            conn.execute("insert into lazy_marker select generate_series(1, 100)")
        switch_wal(sandbox, 4)  # weeks of WAL, in miniature: segments older than any backup
        wait_archived(sandbox, client)
        result = run_cli("backup", "--json", config=cfg)
        assert result.returncode == 0, result.stderr
        bid = json.loads(result.stdout)["id"]
        manifest = json.loads(client.get_object(Bucket=BUCKET, Key=f"{PREFIX}/backups/{bid}/pgdr.json")["Body"].read())
        start_seg = parse_segment_name(manifest["start_wal"])
        assert start_seg is not None
        start = start_seg.segno
        with session(sandbox.conninfo(sandbox.primary)) as conn:
            conn.execute("insert into lazy_marker select generate_series(101, 250)")
        switch_wal(sandbox, 2)
        last = wait_archived(sandbox, client)
        listed = [s for s in archived_segnos(client, f"{PREFIX}/") if s <= last]
        older = [s for s in listed if s < start]
        assert len(older) >= 4, (listed, start)  # there is WAL from before the backup to not fetch

        # status from a fresh working folder: gaps and counts from the listing, nothing fetched
        status = run_cli("status", "--json", config=s3_config(sandbox, "lazy-status", port, PREFIX))
        report = json.loads(status.stdout)
        checks = {c["name"]: c for c in report["checks"]}
        assert checks["archive gaps"]["status"] == "ok", checks["archive gaps"]
        assert report["archive"]["segments"] >= len(listed)
        assert cached_segnos(sandbox, "lazy-status") == []

        # a segment after the backup deleted from the bucket: status names the gap, still fetching nothing
        victim = f"{PREFIX}/wal/{start_seg.name()[:16]}{last - 1:08X}.zst"
        assert victim in keys(client, f"{PREFIX}/wal/")
        body = client.get_object(Bucket=BUCKET, Key=victim)["Body"].read()
        client.delete_object(Bucket=BUCKET, Key=victim)
        try:
            gap = run_cli("status", "--json", config=s3_config(sandbox, "lazy-gap", port, PREFIX))
            gap_check = {c["name"]: c for c in json.loads(gap.stdout)["checks"]}["archive gaps"]
            assert gap.returncode == 1 and gap_check["status"] == "fail", gap_check
            assert victim.rsplit("/", 1)[1].removesuffix(".zst") in gap_check["summary"]
            assert cached_segnos(sandbox, "lazy-gap") == []
        finally:
            client.put_object(Bucket=BUCKET, Key=victim, Body=body)

        # expire --dry-run: the WAL before the kept backup counted from the listing, nothing fetched
        expire_cfg = s3_config(sandbox, "lazy-expire", port, PREFIX)
        with open(expire_cfg, "a") as fh:
            fh.write('\n[retention]\nkeep_last = 1\nkeep_within = "0s"\n')
        dry = run_cli("expire", "--dry-run", "--json", config=expire_cfg)
        assert dry.returncode == 0, dry.stderr
        plan = json.loads(dry.stdout)
        assert plan["wal_remove_count"] == len(older)
        assert cached_segnos(sandbox, "lazy-expire") == []
        assert [s for s in archived_segnos(client, f"{PREFIX}/") if s < start] == older  # dry run: none removed

        # verify from a fresh folder: the backup's start onward, nothing older
        verified = run_cli("verify", "latest", "--json", config=s3_config(sandbox, "lazy-verify", port, PREFIX))
        assert verified.returncode == 0, verified.stdout + verified.stderr
        fetched = cached_segnos(sandbox, "lazy-verify")
        assert fetched and min(fetched) == start and set(range(start, last + 1)) <= set(fetched)

        # restore --latest from a fresh folder: the same, and the data is all there
        target = base_dir / "lazy-restored"
        restored = run_cli("restore", "--latest", "--target-dir", str(target), "--json",
                           config=s3_config(sandbox, "lazy-restore", port, PREFIX))
        assert restored.returncode == 0, restored.stdout + restored.stderr
        try:
            conninfo = str(json.loads(restored.stdout)["conninfo"]).replace("dbname=postgres", "dbname=app")
            with session(conninfo) as c:
                row = c.execute("select count(*) as n from lazy_marker").fetchone()
            assert row is not None and row["n"] == 250
        finally:
            stop_restored(target, Programs())
        fetched = cached_segnos(sandbox, "lazy-restore")
        assert fetched and min(fetched) == start

        # restore to an LSN: from the backup's start to the target's segment (+1), no further
        with session(sandbox.conninfo(sandbox.primary)) as conn:
            row = conn.execute("select pg_current_wal_lsn()::text as lsn").fetchone()
            assert row is not None
            conn.execute("delete from lazy_marker where n > 200")
        switch_wal(sandbox, 5)
        newest = wait_archived(sandbox, client)
        lsn_target = str(row["lsn"])
        hi, lo = (int(x, 16) for x in lsn_target.split("/"))
        target_seg = ((hi << 32) | lo) // (16 << 20)
        assert newest > target_seg + 1
        target2 = base_dir / "lazy-restored-lsn"
        at_lsn = run_cli("restore", "--to-lsn", lsn_target, "--target-dir", str(target2), "--json",
                         config=s3_config(sandbox, "lazy-lsn", port, PREFIX))
        assert at_lsn.returncode == 0, at_lsn.stdout + at_lsn.stderr
        try:
            conninfo = str(json.loads(at_lsn.stdout)["conninfo"]).replace("dbname=postgres", "dbname=app")
            with session(conninfo) as c:
                row2 = c.execute("select count(*) as n from lazy_marker").fetchone()
            assert row2 is not None and row2["n"] == 250  # before the DELETE
        finally:
            stop_restored(target2, Programs())
        fetched = cached_segnos(sandbox, "lazy-lsn")
        assert fetched and min(fetched) == start and max(fetched) <= target_seg + 1

        # find-disaster --since LSN: from that segment on; the DELETE is found
        found = run_cli("find-disaster", "--json", "--min-rows", "10", "--kinds", "delete", "--since", lsn_target,
                        config=s3_config(sandbox, "lazy-scan", port, PREFIX))
        assert found.returncode == 0, found.stderr
        hits = [(d["table"], d["rows"]) for d in json.loads(found.stdout)["disasters"]]
        assert hits == [("public.lazy_marker", 50)]
        fetched = cached_segnos(sandbox, "lazy-scan")
        assert fetched and min(fetched) == target_seg and max(fetched) >= newest

        # a newer backup whose verification found it damaged: restore --latest falls back to the
        # older one, so the WAL from the older one's start must be fetched (and only from there)
        second = run_cli("backup", "--json", config=cfg)
        assert second.returncode == 0, second.stderr
        bad = json.loads(second.stdout)["id"]
        client.put_object(Bucket=BUCKET, Key=f"{PREFIX}/backups/{bad}/verify.json",
                          Body=json.dumps({"passed": False, "backup_ok": False}).encode())
        with session(sandbox.conninfo(sandbox.primary)) as conn:
            conn.execute("insert into lazy_marker values (1000)")
        switch_wal(sandbox, 1)
        wait_archived(sandbox, client)
        target3 = base_dir / "lazy-restored-fallback"
        fallback = run_cli("restore", "--latest", "--target-dir", str(target3), "--json",
                           config=s3_config(sandbox, "lazy-fallback", port, PREFIX))
        assert fallback.returncode == 0, fallback.stdout + fallback.stderr
        try:
            assert json.loads(fallback.stdout)["backup_id"] == bid
            conninfo = str(json.loads(fallback.stdout)["conninfo"]).replace("dbname=postgres", "dbname=app")
            with session(conninfo) as c:
                row3 = c.execute("select count(*) as n from lazy_marker").fetchone()
            assert row3 is not None and row3["n"] == 201  # 200 after the DELETE, + the last insert
        finally:
            stop_restored(target3, Programs())
        fetched = cached_segnos(sandbox, "lazy-fallback")
        assert fetched and min(fetched) == start
    finally:
        run_cli("archiver", "stop", config=cfg)


def test_status_gaps_follow_the_timeline_path_from_the_listing(moto: tuple[int, Any], base_dir: Path) -> None:
    """After a timeline switch, a segment number counts only on the timeline recovery reads
    (the history file says which): a gap on timeline 2 is a gap even when timeline 1 holds
    that number. Objects are put straight into the bucket; none is a readable segment, which
    proves no segment is read."""
    import zstandard

    from pgdr.repo.layout import Repository
    from pgdr.repo.remote import check_listing
    from pgdr.repo.store import S3Store

    port, client = moto
    prefix = "tlpath"
    client.put_object(Bucket=BUCKET, Key=f"{prefix}/pgdr-repo.json", Body=json.dumps(
        {"system_identifier": "7", "pg_version_num": 150000, "wal_segment_size": 16 << 20}).encode())
    names = [f"00000001{0:08X}{n:08X}" for n in range(1, 8)]            # timeline 1: 1..7
    names += [f"00000002{0:08X}{n:08X}" for n in (5, 6, 8, 9)]          # timeline 2 from 5: 7 missing
    for name in names:
        client.put_object(Bucket=BUCKET, Key=f"{prefix}/wal/{name}.zst", Body=b"not a segment")
    history = zstandard.ZstdCompressor(write_checksum=True).compress(b"1\t0/5000000\tno recovery target\n")
    client.put_object(Bucket=BUCKET, Key=f"{prefix}/wal/00000002.history.zst", Body=history)
    repo = Repository(base_dir / "tlpath-work", store=S3Store(f"s3://{BUCKET}/{prefix}",
                                                              f"http://127.0.0.1:{port}", "us-east-1"))
    found, segments = check_listing(repo, 3)
    assert found.timeline == 2 and len(segments) == len(names)
    assert found.missing == ["000000020000000000000007"] and found.missing_count == 1
    assert (found.first, found.last) == ("000000010000000000000003", "000000020000000000000009")
    assert found.checked == 6  # 3, 4 on timeline 1; 5, 6, 8, 9 on timeline 2
    assert sorted(p.name for p in (repo.wal_dir).glob("*.zst")) == ["00000002.history.zst"]
    # from a point after the gap: none
    after, _ = check_listing(repo, 8)
    assert after.missing == [] and after.checked == 2
    # a gap at the start of the needed range is one too
    early, _ = check_listing(repo, 0)
    assert early.missing[0] == "000000010000000000000000" and early.missing_count == 2
