"""Backup overlap: the data tars are hashed while pg_basebackup writes them and the relation
map is read beside the copy — the recorded digest (BLAKE3) and map must be exactly what
hashing the finished files and asking the catalog afterwards give (checked here
independently, with the blake3 package's own one-shot hash of each whole file)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from blake3 import blake3

from pgdr.pg.connect import session
from tests.conftest import run_cli


def _blake3(path: Path) -> str:
    return str(blake3(path.read_bytes()).hexdigest())


def test_backup_under_writes_records_the_files_true_digest_and_relation_map(make_sandbox) -> None:  # type: ignore[no-untyped-def]
    sandbox = make_sandbox("speedbackup", standbys=0)
    app = sandbox.conninfo(sandbox.primary)
    with session(app) as conn:
        conn.execute("create table big (id int, pad text)")
        # incompressible enough that base.tar.zst grows over many writes while it is followed
        conn.execute("insert into big select g, md5(g::text) || md5((g * 7)::text) from generate_series(1, 300000) g")
    stop = threading.Event()

    def writer() -> None:  # the copy runs while the database changes
        with session(app) as conn:
            i = 0
            while not stop.is_set():
                conn.execute("insert into big values (%s, 'w')", (-i,))
                i += 1
                time.sleep(0.002)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        result = run_cli("backup", "--json", config=sandbox.config_path)
    finally:
        stop.set()
        thread.join()
    assert result.returncode == 0, result.stderr
    backups = sorted(p for p in (sandbox.root / "repo" / "backups").iterdir() if p.is_dir())
    folder = backups[-1]
    recorded = json.loads((folder / "pgdr.json").read_text())
    on_disk = {p.name for p in folder.iterdir() if p.is_file() and p.name != "pgdr.json"}
    assert set(recorded["files"]) == on_disk
    assert recorded["format"] == 2
    assert "base.tar.zst" in on_disk and (folder / "base.tar.zst").stat().st_size > 1 << 20
    for name, entry in recorded["files"].items():
        assert entry["size"] == (folder / name).stat().st_size, name
        assert set(entry) == {"size", "blake3"}, entry  # the one digest pgdr writes now
        assert entry["blake3"] == _blake3(folder / name), name
    with session(app) as conn:
        node = conn.execute("select pg_relation_filenode('big')::text as f, d.oid::text as db, "
                            "d.dattablespace::text as spc from pg_database d "
                            "where d.datname = current_database()").fetchone()
    assert node is not None
    assert recorded["relations"][f"{node['spc']}/{node['db']}/{node['f']}"]["name"] == "big"
    # and the backup restores and proves itself with those records
    verify = run_cli("verify", "latest", "--json", config=sandbox.config_path)
    assert verify.returncode == 0, verify.stdout[-2000:] + verify.stderr
