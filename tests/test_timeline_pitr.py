"""PITR across a real timeline switch, with an abandoned timeline in the archive.

The standby is promoted (pg_ctl promote) while the old primary keeps accepting writes for
a while (a partition): the archiver, still on the old primary, archives timeline 1
segments that the new timeline 2 also has numbers for. Recovery must follow timeline 2,
never replay the old primary's 'ghost' rows, and a timeline-2 segment deleted from the
archive must be named as missing, not masked by timeline 1's file with the same number.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from pgdr.pg.connect import session
from pgdr.pg.lsn import parse_segment_name
from pgdr.pg.programs import Programs
from pgdr.repo.wal import WalArchive
from pgdr.restore.pitr import stop_restored
from tests.conftest import run_cli


def _exec(conninfo: str, *sql: str) -> str:
    """Run statements; returns clock_timestamp() after them (server time)."""
    with session(conninfo) as conn:
        for statement in sql:
            conn.execute(statement)
        row = conn.execute("select clock_timestamp()::text as t").fetchone()
    assert row is not None
    return str(row["t"])


def _archived(repo_wal: Path, timeline: int, at_least: int, timeout: float = 60) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        names = sorted(p.name[:-4] for p in repo_wal.glob("*.zst")
                       if parse_segment_name(p.name[:-4]) and p.name.startswith(f"{timeline:08X}"))
        if len(names) >= at_least or time.monotonic() > deadline:
            return names
        time.sleep(0.2)


def test_pitr_follows_the_new_timeline_and_names_its_missing_segment(make_sandbox, programs: Programs) -> None:  # type: ignore[no-untyped-def]
    sandbox = make_sandbox("tlswitch", standbys=1)
    old = sandbox.conninfo(sandbox.primary)
    standby = next(n for n in sandbox.nodes if n.name != sandbox.primary.name)
    new = sandbox.conninfo(standby)
    _exec(old, "create table events (id int primary key, tag text)",
          "insert into events select g, 'base' from generate_series(1, 100) g")
    assert run_cli("backup", config=sandbox.config_path).returncode == 0
    _exec(old, "insert into events select g, 'base' from generate_series(101, 200) g")
    with session(old) as conn:
        conn.execute("select pg_switch_wal()")
    time.sleep(1)  # the standby has replayed it (async, local)

    sandbox.instance(standby, programs).promote()  # timeline 2 begins; the old primary still runs
    # The partitioned old primary goes on writing; the archiver (still on it) archives timeline 1.
    tl1_before = len(_archived(sandbox.repo.wal_dir, 1, 0, 0))
    for i in range(3):
        _exec(old, f"insert into events select g, 'ghost' from generate_series({1000 + i * 100}, {1099 + i * 100}) g",
              "select pg_switch_wal()")
    ghosts = _archived(sandbox.repo.wal_dir, 1, tl1_before + 3)
    assert len(ghosts) >= tl1_before + 3
    # and a last ghost write that stays in the old primary's open segment, which the
    # archiver holds as a .partial: WAL past the fork point, on timeline 1
    _exec(old, "insert into events select g, 'ghost' from generate_series(2000, 2099) g")
    deadline = time.monotonic() + 30
    while not list(sandbox.repo.incoming_dir.glob("00000001*.partial")) and time.monotonic() < deadline:
        time.sleep(0.1)

    # Repoint the archiver: stop it, fence the old primary, start it against the new one.
    assert run_cli("archiver", "stop", config=sandbox.config_path).returncode == 0
    sandbox.instance(sandbox.primary, programs).kill9()
    # pg_receivewal would resume from the abandoned timeline's open segment, which starts
    # past the fork point: the archiver sets it aside by itself and resumes on timeline 2.
    stranded = sorted(p.name for p in sandbox.repo.incoming_dir.glob("00000001*.partial"))
    assert stranded, "the old primary's open segment must be in the spool for this test to mean anything"
    started = run_cli("archiver", "start", config=sandbox.config_path)
    assert started.returncode == 0, started.stderr
    diverged = sandbox.repo.archiver_dir / "diverged"
    assert sorted(p.name for p in diverged.iterdir()) == stranded  # kept, never deleted
    state = json.loads((sandbox.repo.archiver_dir / "state.json").read_text())
    assert any(stranded[0] in line for line in state["diverged"]), state

    t1 = _exec(new, "insert into events select g, 'after' from generate_series(201, 300) g")
    time.sleep(0.2)
    _exec(new, "insert into events select g, 'later' from generate_series(301, 400) g")
    with session(new) as conn:
        for _ in range(3):
            conn.execute("select pg_switch_wal()")
            conn.execute("insert into events select max(id) + 1, 'pad' from events")
    tl2 = _archived(sandbox.repo.wal_dir, 2, 3)
    assert len(tl2) >= 3, tl2
    shared = sorted(set(n[8:] for n in tl2) & set(n[8:] for n in ghosts))
    assert shared, "the two timelines must share segment numbers for this test to mean anything"

    status = run_cli("status", "--json", config=sandbox.config_path)
    report = json.loads(status.stdout)
    gap = next(c for c in report["checks"] if c["name"] == "archive gaps")
    assert gap["status"] == "ok", gap
    assert report["archive"]["timeline"] == 2

    target = sandbox.root / "restored"
    res = run_cli("restore", "--to-time", t1, "--target-dir", str(target), "--json", config=sandbox.config_path)
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    restored = info["conninfo"].replace("dbname=postgres", "dbname=app")
    with session(restored) as conn:
        tags = {r["tag"]: r["n"] for r in conn.execute("select tag, count(*) as n from events group by tag")}
    assert tags.get("base") == 200 and tags.get("after") == 100
    assert "ghost" not in tags and "later" not in tags
    # promoted onto a new timeline whose parent is 2 (the history file says which it branched from)
    new_tli = int(info["reached"]["timeline"])
    history = (target / "pg_wal" / f"{new_tli:08X}.history").read_text()
    assert [ln for ln in history.splitlines() if ln.strip()][-1].split()[0] == "2", history
    stop_restored(target, programs)
    shutil.rmtree(target)

    # Delete a timeline-2 segment whose number timeline 1 also has: it must be named missing.
    victim_no = shared[-1]
    victim = f"{2:08X}{victim_no}"
    (sandbox.repo.wal_dir / f"{victim}.zst").unlink()
    assert (sandbox.repo.wal_dir / f"{1:08X}{victim_no}.zst").exists()
    status = run_cli("status", "--json", config=sandbox.config_path)
    assert status.returncode == 1
    gap = next(c for c in json.loads(status.stdout)["checks"] if c["name"] == "archive gaps")
    assert gap["status"] == "fail" and victim in gap["summary"], gap
    res = run_cli("restore", "--latest", "--target-dir", str(target), config=sandbox.config_path)
    assert res.returncode == 1 and victim in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert not target.exists()
    assert WalArchive(sandbox.repo).segments()  # the archive itself is untouched otherwise
