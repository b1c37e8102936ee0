"""pg_verifybackup split in two (restore/prove.py): the two runs together must catch what
one run catches, wherever the damage is.

A real backup is extracted once; the split threshold is lowered so this small backup is
split too. Each fault is injected into the extracted directory, then undone: a flipped
byte in the big half and in the rest, a file added beside the big file and at the top,
the big file renamed away, the WAL removed. Each must fail, naming the file; the clean
directory must pass before and after.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pgdr.pg.connect import session
from pgdr.pg.programs import Programs
from pgdr.repo.manifest import read_manifest
from pgdr.restore import prove
from pgdr.restore.extract import extract_physical
from pgdr.sandbox import sandbox as sb
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def extracted(base_dir: Path, programs: Programs) -> Iterator[tuple[Path, Path]]:
    """(the backup's folder, its extracted data directory), the server stopped."""
    sandbox = sb.up(base_dir / "vsplit", programs, standbys=0)
    try:
        with session(sandbox.conninfo(sandbox.primary)) as conn:
            conn.execute("create table big (id int, t text)")
            conn.execute("insert into big select g, repeat(md5(g::text), 8) from generate_series(1, 60000) g")
        assert run_cli("backup", config=sandbox.config_path).returncode == 0
        sb.down(sandbox.root, programs, purge=False)
        [backup] = [p for p in sandbox.repo.backups_dir.iterdir() if (p / "base.tar.zst").exists()]
        target = base_dir / "vsplit-data"
        extract_physical(backup, target, programs, manifest=read_manifest(backup))
        yield backup, target
    finally:
        sb.down(sandbox.root, programs, purge=True)
        shutil.rmtree(base_dir / "vsplit-data", ignore_errors=True)


def _flip(path: Path) -> None:
    with open(path, "r+b") as fh:
        fh.seek(min(path.stat().st_size // 2, 100_000))
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0x01]))


def test_split_runs_catch_damage_in_either_half(extracted: tuple[Path, Path], programs: Programs,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    backup, data = extracted
    monkeypatch.setattr(prove, "SPLIT_ABOVE", 0)
    halves = prove._halves(backup / "backup_manifest", data)
    assert halves is not None, "the backup was not split"
    big_paths = halves[0][1::2]
    assert big_paths and len(halves[1]) > 2 * len(big_paths)  # the big half is its few big files
    big = data / big_paths[0]
    small = data / "global" / "pg_control"
    wal = [p for p in (data / "pg_wal").iterdir() if len(p.name) == 24]
    assert wal

    def rename(path: Path, to: Path) -> Callable[[], object]:
        return lambda: path.rename(to)

    faults: list[tuple[str, Callable[[], object], Callable[[], object], str]] = [
        ("a byte of the big half", lambda: _flip(big), lambda: _flip(big), big_paths[0]),
        ("a byte of the rest", lambda: _flip(small), lambda: _flip(small), "global/pg_control"),
        ("a file beside the big one", lambda: (big.parent / "99999").write_bytes(b"x"),
         lambda: (big.parent / "99999").unlink(), "99999"),
        ("a file at the top", lambda: (data / "junk").write_bytes(b"x"), lambda: (data / "junk").unlink(), "junk"),
        ("the big file gone", rename(big, big.with_name("elsewhere")), rename(big.with_name("elsewhere"), big),
         big_paths[0]),
        ("the WAL gone", lambda: [p.rename(p.with_name(p.name + ".gone")) for p in wal],
         lambda: [p.with_name(p.name + ".gone").rename(p) for p in wal], "WAL"),
    ]
    ok, lines = prove.verify_backup_files(backup, data, programs)
    assert ok, lines
    for what, inject, undo, named in faults:
        inject()
        try:
            ok, lines = prove.verify_backup_files(backup, data, programs)
        finally:
            undo()
        assert not ok, f"{what}: the split pg_verifybackup passed"
        assert any(named in line for line in lines), f"{what}: {named} not named in {lines}"
    ok, lines = prove.verify_backup_files(backup, data, programs)
    assert ok, lines


def test_small_backups_are_not_split(extracted: tuple[Path, Path]) -> None:
    backup, data = extracted
    assert prove._halves(backup / "backup_manifest", data) is None
