"""A table that lives shorter than the relation-map interval is still named: the archiver
watches the WAL it receives and snapshots the map as soon as a new relation file appears.

The interval is set to one hour, so the only snapshot that can name the table is the one
the WAL watch triggers; the table is created, filled, named, dropped, and find-disaster
must report the DROP by name (without the watch it would be `(relation spc/db/node)`)."""

from __future__ import annotations

import json
import time

from pgdr.pg.connect import session
from pgdr.pg.programs import Programs
from pgdr.repo.wal import WalArchive
from pgdr.restore.walscan import relation_names
from tests.conftest import run_cli, xid_of


def _named(sandbox, name: str) -> bool:  # type: ignore[no-untyped-def]
    return any(f"{r.schema_name}.{r.name}" == name for r in relation_names(sandbox.repo).values())


def test_a_table_shorter_lived_than_the_interval_is_named_from_the_wal(make_sandbox, programs: Programs) -> None:  # type: ignore[no-untyped-def]
    sandbox = make_sandbox("undorelmap", standbys=0)
    primary = sandbox.conninfo(sandbox.primary)
    assert run_cli("backup", config=sandbox.config_path).returncode == 0
    assert run_cli("archiver", "stop", config=sandbox.config_path).returncode == 0
    with open(sandbox.config_path, "a") as fh:
        fh.write('\n[archive]\nrelmap_interval = "1h"\n')
    started = run_cli("archiver", "start", config=sandbox.config_path)
    assert started.returncode == 0, started.stderr
    time.sleep(3)   # the snapshot every start takes is done; the next one is an hour away
    assert not _named(sandbox, "public.short_lived")

    with session(primary) as conn:
        conn.execute("create table short_lived (id int primary key, note text)")
        conn.execute("insert into short_lived select g, 'n' || g from generate_series(1, 200) g")
    deadline = time.monotonic() + 60
    while not _named(sandbox, "public.short_lived"):
        assert time.monotonic() < deadline, "the WAL watch did not snapshot the new table within 60s"
        time.sleep(0.2)
    xid_drop = xid_of(primary, "drop table short_lived")
    with session(primary) as conn:
        row = conn.execute("select pg_walfile_name(pg_current_wal_lsn()) as f").fetchone()
        conn.execute("select pg_switch_wal()")
    assert row is not None
    deadline = time.monotonic() + 120
    while not any(f.name >= row["f"] for f in WalArchive(sandbox.repo).files()):
        assert time.monotonic() < deadline, f"{row['f']} not archived within 120s"
        time.sleep(0.2)

    res = run_cli("find-disaster", "--json", "--table", "short_lived", config=sandbox.config_path)
    assert res.returncode == 0, res.stderr
    found = [(d["xid"], d["kind"], d["table"]) for d in json.loads(res.stdout)["disasters"]]
    assert found == [(xid_drop, "drop", "public.short_lived")]
    status = json.loads((sandbox.repo.archiver_dir / "state.json").read_text())
    assert status.get("receiving") is True      # the watch never got in the archiver's way
