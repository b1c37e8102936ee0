"""find-disaster over a real timeline switch, where the parallel split crosses it.

Each segment is read by its own pg_waldump, which also reads the start of the next
segment for the record that crosses into it. At a failover the next segment is the new
timeline's first (the switch segment, archived as 00000002...), while pg_waldump reads the
old one's names (-t 1). Here a record crosses exactly that boundary, a DELETE is
committed on timeline 1 inside the switch segment before the fork, and a DROP on
timeline 2 after it: both must be found, with nothing reported missing or unreadable.
"""

from __future__ import annotations

import json
import time

from pgdr.pg.connect import session
from pgdr.pg.lsn import parse_lsn
from pgdr.pg.programs import Programs
from pgdr.pg.waldump import read_chunk
from pgdr.repo.wal import WalArchive
from pgdr.restore.walscan import archive_wal
from tests.conftest import run_cli, xid_of


def _lsn(conninfo: str, sql: str = "select pg_current_wal_insert_lsn()::text as l") -> str:
    with session(conninfo) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return str(row["l"])


def _wait(what: str, check, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout:.0f}s")
        time.sleep(0.2)


def test_a_scan_across_a_timeline_switch_finds_both_sides(make_sandbox, programs: Programs) -> None:  # type: ignore[no-untyped-def]
    sandbox = make_sandbox("undotl", standbys=1)
    old = sandbox.conninfo(sandbox.primary)
    standby = next(n for n in sandbox.nodes if n.name != sandbox.primary.name)
    new = sandbox.conninfo(standby)
    with session(old) as conn:
        conn.execute("create table victim (id int primary key, v text)")
        conn.execute("insert into victim select g, 'v' || g from generate_series(1, 300) g")
        conn.execute("create table doomed (id int primary key)")
        conn.execute("insert into doomed select generate_series(1, 10)")
    assert run_cli("backup", config=sandbox.config_path).returncode == 0
    size = sandbox.repo.wal_segment_size
    with session(old) as conn:
        conn.execute("select pg_switch_wal()")
        # move to ~15 MB into the segment, then a 3 MB record crossing into the next one
        at = parse_lsn(_lsn(old))
        conn.execute("select pg_logical_emit_message(false, 'pgdr-test', repeat('f', %s))",
                     ((15 << 20) - at % size,))
    crossing = _lsn(old)
    with session(old) as conn:
        conn.execute("select pg_logical_emit_message(false, 'pgdr-test', repeat('c', 3000000))")
    xid_delete = xid_of(old, "delete from victim where id <= 150")
    end_tl1 = parse_lsn(_lsn(old))
    assert parse_lsn(crossing) // size + 1 == end_tl1 // size      # the DELETE is in the next segment
    _wait("the standby replays the DELETE",
          lambda: parse_lsn(_lsn(new, "select pg_last_wal_replay_lsn()::text as l")) >= end_tl1)

    # Failover: the archiver stops, the old primary dies, the standby is promoted (timeline 2
    # begins inside the segment the DELETE is in), the archiver follows the new primary.
    assert run_cli("archiver", "stop", config=sandbox.config_path).returncode == 0
    sandbox.instance(sandbox.primary, programs).kill9()
    sandbox.instance(standby, programs).promote()
    started = run_cli("archiver", "start", config=sandbox.config_path)
    assert started.returncode == 0, started.stderr
    xid_drop = xid_of(new, "drop table doomed")
    switch_segno = end_tl1 // size
    with session(new) as conn:
        row = conn.execute("select pg_walfile_name(pg_current_wal_lsn()) as f").fetchone()
        conn.execute("select pg_switch_wal()")
    assert row is not None
    last = row["f"]
    _wait(f"{last} archived", lambda: any(f.name >= last and f.name.startswith("00000002")
                                          for f in WalArchive(sandbox.repo).files()), timeout=120)

    wal = archive_wal(sandbox.repo)
    assert wal.timeline == 2
    by_segno = {c.segment.segno: c for c in wal.chunks}
    before = by_segno[switch_segno - 1]
    assert before.segment.timeline == 1 and by_segno[switch_segno].segment.timeline == 2
    # the chunk before the switch reads the record crossing into timeline 2's first segment
    head = read_chunk(programs, before, ("LogicalMessage",), None)
    assert head.error is None, head.error
    assert head.last_lsn is not None and parse_lsn(head.last_lsn) >= parse_lsn(crossing)

    res = run_cli("find-disaster", "--json", config=sandbox.config_path)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    found = {(d["xid"], d["kind"], d["table"], d["rows"]) for d in out["disasters"]}
    assert (xid_delete, "delete", "public.victim", 150) in found
    assert (xid_drop, "drop", "public.doomed", None) in found
    assert out["errors"] == []
    # bounded to the DELETE's commit alone by LSN, across the switch: only it
    delete_lsn = next(d["lsn"] for d in out["disasters"] if d["xid"] == xid_delete)
    res = run_cli("find-disaster", "--json", "--since", delete_lsn, "--until", delete_lsn,
                  config=sandbox.config_path)
    assert res.returncode == 0, res.stderr
    assert [d["xid"] for d in json.loads(res.stdout)["disasters"]] == [xid_delete]
