"""Parsing pg_waldump's lines and classifying transactions (no server needed)."""

from __future__ import annotations

from pgdr.pg.ident import parse_table
from pgdr.pg.waldump import ChunkResult, ScanResult, _cut_after, parse_lines, path_to_key
from pgdr.repo.manifest import Relation
from pgdr.restore.walscan import _classify

LINES = [
    "rmgr: Heap        len (rec/tot):     54/    54, tx:        728, lsn: 0/050368A8, prev 0/05034870, "
    "desc: DELETE off 2 flags 0x00 KEYS_UPDATED , blkref #0: rel 1663/16384/16423 blk 0",
    "rmgr: Heap        len (rec/tot):     54/    54, tx:        728, lsn: 0/050368E0, prev 0/050368A8, "
    "desc: DELETE off 3 flags 0x00 KEYS_UPDATED , blkref #0: rel 1663/16384/16423 blk 0",
    "rmgr: Transaction len (rec/tot):     34/    34, tx:        728, lsn: 0/055F6418, prev 0/055F63E0, "
    "desc: COMMIT 2026-11-22 04:12:14.964120 UTC",
    "rmgr: Storage     len (rec/tot):     42/    42, tx:        729, lsn: 0/055F6F00, prev 0/055F6470, "
    "desc: CREATE base/16384/16468",
    "rmgr: Transaction len (rec/tot):    361/   361, tx:        729, lsn: 0/055FB308, prev 0/055FB278, "
    "desc: COMMIT 2026-11-22 04:12:15.079279 UTC; rels: base/16384/16441; inval msgs: catcache 55",
    "rmgr: Transaction len (rec/tot):   1245/  1245, tx:        730, lsn: 0/055FBD50, prev 0/055FBD18, "
    "desc: COMMIT 2026-11-22 04:12:15.190106 UTC; rels: base/16384/16461; dropped stats: 2/16384/16461; "
    "inval msgs: catcache 32",
    "rmgr: Transaction len (rec/tot):     34/    34, tx:        731, lsn: 0/055FC000, prev 0/055FBD50, "
    "desc: ABORT 2026-11-22 04:12:16 UTC; rels: base/16384/16500",
]

NAMES = {
    "1663/16384/16423": Relation(database="app", schema_name="public", name="order_items", kind="r"),
    "1663/16384/16441": Relation(database="app", schema_name="public", name="documents", kind="r"),
    "1663/16384/16461": Relation(database="app", schema_name="public", name="audit_log", kind="r"),
}


def test_path_to_key_covers_every_tablespace_form() -> None:
    assert path_to_key("base/16384/16441") == "1663/16384/16441"
    assert path_to_key("global/1262") == "1664/0/1262"
    assert path_to_key("pg_tblspc/16500/PG_15_202209061/16384/16501") == "16500/16384/16501"


def test_parse_and_classify_delete_truncate_drop() -> None:
    chunk = ChunkResult("000000010000000000000005")
    parse_lines(LINES, chunk)
    assert chunk.deletes == {728: {"1663/16384/16423": 2}}
    assert chunk.commits[731].aborted
    found = _classify(ScanResult([chunk]), NAMES, None, None, None, ("drop", "truncate", "delete", "update"),
                      2)
    assert [(d.xid, d.kind, d.table, d.rows) for d in found] == [
        (728, "delete", "public.order_items", 2),
        (729, "truncate", "public.documents", None),
        (730, "drop", "public.audit_log", None),
    ]
    assert _classify(ScanResult([chunk]), NAMES, parse_table("audit_log"), None, None, ("drop",), 2)[0].xid == 730
    assert _classify(ScanResult([chunk]), NAMES, None, None, None, ("delete",), 3) == []


def test_parser_keeps_only_what_matters_and_tells_lookalikes_apart() -> None:
    lines = [
        "rmgr: Heap        len (rec/tot):     69/    69, tx:        800, lsn: 0/06000028, prev 0/05FFFFF0, "
        "desc: HOT_UPDATE off 5 xmax 800 flags 0x10 ; new off 9 xmax 0, blkref #0: rel 1663/5/16390 blk 2",
        "rmgr: Heap        len (rec/tot):     79/    79, tx:        800, lsn: 0/06000070, prev 0/06000028, "
        "desc: UPDATE off 3 xmax 800 flags 0x00 ; new off 1 xmax 0, blkref #0: rel 1663/5/16390 blk 7, "
        "blkref #1: rel 1663/5/16390 blk 2",
        "rmgr: Heap        len (rec/tot):     59/    59, tx:        800, lsn: 0/060000C0, prev 0/06000070, "
        "desc: INSERT off 4 flags 0x00, blkref #0: rel 1663/5/16390 blk 7",
        "rmgr: Storage     len (rec/tot):     46/    46, tx:        801, lsn: 0/06000100, prev 0/060000C0, "
        "desc: TRUNCATE base/5/16390 to 0 blocks flags 7",
        "rmgr: Heap        len (rec/tot):     46/    46, tx:        802, lsn: 0/06000130, prev 0/06000100, "
        "desc: TRUNCATE nrelids 1 relids 16390",
        "rmgr: XLOG        len (rec/tot):     98/    98, tx:          0, lsn: 0/06000160, prev 0/06000130, "
        "desc: RESTORE_POINT before-migration",
        "rmgr: Transaction len (rec/tot):     46/    46, tx:        800, lsn: 0/060001C8, prev 0/06000160, "
        "desc: COMMIT 2026-11-22 04:12:17.5 UTC; subxacts: 803 804",
    ]
    chunk = ChunkResult("000000010000000000000006")
    parse_lines(lines, chunk)
    assert chunk.updates == {800: {"1663/5/16390": 2}} and chunk.deletes == {}
    assert chunk.heap_truncates == {802: 1}        # the Storage TRUNCATE is a file size change
    assert chunk.restore_points == [("before-migration", "0/06000160")]
    assert chunk.commits[800].subxacts == [803, 804] and not chunk.commits[800].aborted
    assert chunk.commits[800].time.microsecond == 500000
    assert chunk.last_lsn == "0/060001C8"


def test_records_printed_from_the_next_segment_are_cut_off() -> None:
    text = ("rmgr: Heap len (rec/tot): 1/ 1, tx: 1, lsn: 0/05FFFFF0, prev 0/05FFFFB0, desc: INSERT\n"
            "rmgr: Heap len (rec/tot): 1/ 1, tx: 1, lsn: 0/06000028, prev 0/05FFFFF0, desc: INSERT\n"
            "rmgr: Heap len (rec/tot): 1/ 1, tx: 1, lsn: 0/06000050, prev 0/06000028, desc: INSERT\n")
    data = text.encode()
    assert _cut_after(data, 0x06000000) == data.split(b"\n")[0] + b"\n"
    assert _cut_after(data, 0x07000000) == data
    assert _cut_after(data, 0) == b""
