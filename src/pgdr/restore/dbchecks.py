"""Logical checks on a restored instance: row counts, orphaned foreign-key rows,
duplicate keys, pg_amcheck, user smoke queries.

Row counts and foreign keys read the heap with index scans disabled: a corrupt index
must not hide an orphan. Each query is one task; the tasks run in a thread pool,
each with its own connection, so a large table does not hold up the rest.

Duplicate keys are judged after pg_amcheck (see unique_scan): once amcheck has proven
every B-tree index ordered and holding every heap tuple, the duplicates show as
adjacent equal keys in the constraint's own index, so the check walks that index in
order instead of hashing the whole heap (5.4 s -> 1.4 s at pgbench scale 50). The
walk itself runs beside amcheck; its answer is used only if amcheck passes.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from pgdr.config import VerifyCheckConfig
from pgdr.errors import PgdrError
from pgdr.pg.children import lower_priority
from pgdr.pg.connect import session
from pgdr.pg.instance import Instance
from pgdr.pg.programs import Programs
from pgdr.pg.sql import load

HEAP_ONLY = ("set enable_indexscan = off; set enable_indexonlyscan = off; "
             "set enable_bitmapscan = off; set work_mem = '128MB'; set statement_timeout = 0")
# For the duplicate check once amcheck has verified the indexes: walk an index in key
# order (GroupAggregate over an index-only scan), never hash or sort the heap.
INDEX_ORDER = ("set enable_indexscan = on; set enable_indexonlyscan = on; set enable_seqscan = off; set enable_bitmapscan = off; set enable_hashagg = off; "
               "set enable_sort = off; set max_parallel_workers_per_gather = 0; "
               "set work_mem = '128MB'; set statement_timeout = 0")


@dataclass
class ScanResults:
    """What the SQL tasks found, per database."""

    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    foreign_keys: list[dict[str, Any]] = field(default_factory=list)
    unique: list[dict[str, Any]] = field(default_factory=list)
    # (database, constraint row) of every unique constraint, and what walking its index
    # found: {(database, schema.table, constraint): {groups, rows, total}}
    unique_specs: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    unique_index: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    durations: dict[str, float] = field(default_factory=lambda: {"counts": 0.0, "foreign keys": 0.0,
                                                                 "unique constraints": 0.0})


def databases(instance: Instance) -> list[str]:
    with session(instance.conninfo(), statement_timeout=0) as conn:
        rows = conn.execute("select datname from pg_database where datallowconn "
                            "and not datistemplate order by 1").fetchall()
    return [r["datname"] for r in rows]


def _cols(columns: list[str], alias: str) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(alias, c) for c in columns)


def _fk_queries(fk: dict[str, Any]) -> tuple[sql.Composable, sql.Composable]:
    child = sql.Identifier(fk["schema_name"], fk["table_name"])
    parent = sql.Identifier(fk["ref_schema"], fk["ref_table"])
    joins = sql.SQL(" and ").join(
        sql.SQL("{} = {}").format(sql.Identifier("p", pc), sql.Identifier("c", cc))
        for cc, pc in zip(fk["columns"], fk["ref_columns"], strict=True))
    all_set = sql.SQL(" and ").join(sql.SQL("{} is not null").format(sql.Identifier("c", c))
                                    for c in fk["columns"])
    # MATCH SIMPLE (the default) exempts a row when any key column is null; MATCH FULL
    # only when all are, so a partly-null key is itself a violation.
    if fk["match_type"] == "f":
        any_set = sql.SQL(" or ").join(sql.SQL("{} is not null").format(sql.Identifier("c", c))
                                       for c in fk["columns"])
        where = sql.SQL("({any}) and not (({all}) and exists (select 1 from only {parent} p where {joins}))"
                        ).format(any=any_set, all=all_set, parent=parent, joins=joins)
    else:
        where = sql.SQL("{all} and not exists (select 1 from only {parent} p where {joins})").format(
            all=all_set, parent=parent, joins=joins)
    count = sql.SQL("select count(*) as n from only {child} c where {where}").format(child=child, where=where)
    sample = sql.SQL("select row({cols})::text as k from only {child} c where {where} limit 3").format(
        cols=_cols(fk["columns"], "c"), child=child, where=where)
    return count, sample


def _unique_queries(uq: dict[str, Any]) -> tuple[sql.Composable, sql.Composable]:
    table = sql.Identifier(uq["schema_name"], uq["table_name"])
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in uq["columns"])
    if uq["nulls_not_distinct"] or uq["kind"] == "p":
        where: sql.Composable = sql.SQL("true")
    else:
        where = sql.SQL(" and ").join(sql.SQL("{} is not null").format(sql.Identifier(c))
                                      for c in uq["columns"])
    dups = sql.SQL("select {cols}, count(*) as n from only {t} where {w} group by {cols} "
                   "having count(*) > 1").format(cols=cols, t=table, w=where)
    count = sql.SQL("select count(*) as groups, coalesce(sum(n), 0)::bigint as rows from ({d}) d"
                    ).format(d=dups)
    sample = sql.SQL("select row({cols})::text as k from ({d}) d limit 3").format(
        cols=sql.SQL(", ").join(sql.Identifier("d", c) for c in uq["columns"]), d=dups)
    return count, sample


def _unique_index_query(uq: dict[str, Any]) -> sql.Composable:
    """Duplicate groups and rows, plus every row the scan saw (nulls included).

    Grouping on exactly the constraint's columns lets the planner read them in order
    from the constraint's index. The total must equal the heap's exact row count: a
    heap tuple missing from the index (which heapallindexed catches only with ~98%
    probability per tuple, its Bloom filter being probabilistic) shows as a shortfall.
    """
    table = sql.Identifier(uq["schema_name"], uq["table_name"])
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in uq["columns"])
    if uq["nulls_not_distinct"] or uq["kind"] == "p":
        dup: sql.Composable = sql.SQL("n > 1")
    else:
        dup = sql.SQL("n > 1 and {}").format(sql.SQL(" and ").join(
            sql.SQL("{} is not null").format(sql.Identifier(c)) for c in uq["columns"]))
    return sql.SQL("select count(*) filter (where {dup}) as groups, "
                   "coalesce(sum(n) filter (where {dup}), 0)::bigint as rows, "
                   "coalesce(sum(n), 0)::bigint as total "
                   "from (select {cols}, count(*) as n from only {t} group by {cols}) g").format(
        dup=dup, cols=cols, t=table)


# How much lower than pg_amcheck's the CPU priority of the checks beside it is (nice).
BACKGROUND_NICE = 10


def in_background(conn: Any) -> None:
    """Lower the CPU priority of this connection's backend on the (local) scratch server.

    Why: verify runs pg_amcheck -j CPUS beside the SQL scans and the checksum sweep, so
    more backends than cores compete, and the longest single check (heapallindexed on
    the largest index, which nothing can split) got half a core: on 2 cores, pgbench
    scale 100's primary key took 3.3-4.4 s there against 2.2-2.7 s alone. Niced, the
    scans use what pg_amcheck leaves idle (its other connection finishes the small
    relations early) and the critical check keeps its core. Nothing changes when the
    priority cannot be lowered (another user's server: EPERM). No parallel workers
    either: the postmaster forks them at its own priority."""
    conn.execute("set max_parallel_workers_per_gather = 0")
    lower_priority(conn.info.backend_pid, BACKGROUND_NICE)


def _run_tasks(instance: Instance, results: ScanResults, setup: str,
               tasks: list[tuple[str, str, Callable[[Any], None]]], jobs: int,
               *, background: bool = False) -> None:
    def run(task: tuple[str, str, Callable[[Any], None]]) -> None:
        dbname, kind, fn = task
        t0 = time.monotonic()
        try:
            with session(instance.conninfo(dbname), statement_timeout=0) as conn:
                if background:
                    in_background(conn)
                conn.execute(setup)
                fn(conn)
        except PgdrError as exc:
            results.errors.append(f"{dbname} ({kind}): {exc.message}")
        except psycopg.Error as exc:  # a query error on a damaged restore is a finding
            results.errors.append(f"{dbname} ({kind}): {type(exc).__name__}: {str(exc).strip()}")
        finally:
            results.durations[kind] += time.monotonic() - t0

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        list(pool.map(run, tasks))


def unique_scan(instance: Instance, results: ScanResults, *, indexes_verified: bool,
                jobs: int = 2) -> None:
    """Judge every primary key and unique constraint into results.unique.

    Call after scan() and after pg_amcheck. indexes_verified means pg_amcheck
    --heapallindexed passed for every B-tree: each index is in key order (so equal keys
    are adjacent) and holds every heap tuple (so a duplicated key in the heap is a
    duplicated key in the index). Then scan()'s in-order walk of the index found
    exactly the heap's duplicates, provided its row total equals scan()'s exact heap
    count. Otherwise, when that total disagrees (reported as index_rows/heap_rows),
    or to name sample keys, the heap is hashed with index scans disabled, as a
    corrupt index must not hide a duplicate.
    """
    tasks: list[tuple[str, str, Callable[[Any], None]]] = []
    for dbname, uq in results.unique_specs:
        table = f"{uq['schema_name']}.{uq['table_name']}"
        heap_rows = results.counts.get(dbname, {}).get(table)
        walked = results.unique_index.get((dbname, table, uq["name"]))
        entry: dict[str, Any] = {"database": dbname, "constraint": uq["name"], "table": table,
                                 "columns": uq["columns"], "method": "heap"}
        if indexes_verified and walked is not None and heap_rows is not None:
            if walked["total"] != heap_rows:
                entry.update(index_rows=walked["total"], heap_rows=heap_rows)
            elif not walked["groups"]:
                results.unique.append({**entry, "method": "index", "duplicate_keys": 0,
                                       "duplicate_rows": 0, "sample": []})
                continue

        def uq_check(conn: Any, uq: dict[str, Any] = uq, entry: dict[str, Any] = entry) -> None:
            count_q, sample_q = _unique_queries(uq)
            row = conn.execute(count_q).fetchone()
            sample = [r["k"] for r in conn.execute(sample_q)] if row["groups"] else []
            results.unique.append({**entry, "duplicate_keys": int(row["groups"]),
                                   "duplicate_rows": int(row["rows"]), "sample": sample})
        tasks.append((dbname, "unique constraints", uq_check))
    _run_tasks(instance, results, HEAP_ONLY, tasks, jobs)
    results.unique.sort(key=lambda r: (r["database"], r["table"], r["constraint"]))


def scan(instance: Instance, dbnames: list[str], jobs: int = 2) -> ScanResults:
    """Row counts, foreign keys and the in-order walk of every unique constraint's index
    (judged later by unique_scan), in parallel."""
    results = ScanResults()
    tasks: list[tuple[str, str, Callable[[Any], None]]] = []

    for dbname in dbnames:
        results.counts[dbname] = {}
        with session(instance.conninfo(dbname), statement_timeout=0) as conn:
            tables = conn.execute(load("user_tables")).fetchall()
            fks = conn.execute(load("verify_foreign_keys")).fetchall()
            uniques = conn.execute(load("verify_unique")).fetchall()
        for t in tables:
            def count(conn: Any, t: dict[str, Any] = t, db: str = dbname) -> None:
                q = sql.SQL("select count(*) as n from only {}").format(
                    sql.Identifier(t["schema_name"], t["name"]))
                results.counts[db][f"{t['schema_name']}.{t['name']}"] = int(conn.execute(q).fetchone()["n"])
            tasks.append((dbname, "counts", count))
        for fk in fks:
            def fk_check(conn: Any, fk: dict[str, Any] = fk, db: str = dbname) -> None:
                count_q, sample_q = _fk_queries(fk)
                n = int(conn.execute(count_q).fetchone()["n"])
                sample = [r["k"] for r in conn.execute(sample_q)] if n else []
                results.foreign_keys.append({
                    "database": db, "constraint": fk["name"],
                    "table": f"{fk['schema_name']}.{fk['table_name']}",
                    "references": f"{fk['ref_schema']}.{fk['ref_table']}",
                    "validated": fk["validated"], "orphans": n, "sample": sample})
            tasks.append((dbname, "foreign keys", fk_check))
        for uq in uniques:
            results.unique_specs.append((dbname, uq))

            def uq_walk(conn: Any, uq: dict[str, Any] = uq, db: str = dbname) -> None:
                conn.execute(INDEX_ORDER)
                row = conn.execute(_unique_index_query(uq)).fetchone()
                key = (db, f"{uq['schema_name']}.{uq['table_name']}", uq["name"])
                results.unique_index[key] = {k: int(row[k]) for k in ("groups", "rows", "total")}
            tasks.append((dbname, "unique constraints", uq_walk))

    # Largest work first would be better still; counts go first as every table has one.
    _run_tasks(instance, results, HEAP_ONLY, tasks, jobs, background=True)
    results.foreign_keys.sort(key=lambda r: (r["database"], r["table"], r["constraint"]))
    return results


_AMCHECK_OBJECT = re.compile(r'^(heap table|btree index|toast table)\s+"([^"]+)"(.*):\s*$')


def amcheck(instance: Instance, programs: Programs, jobs: int = 2) -> tuple[bool, dict[str, Any]]:
    """pg_amcheck --all --heapallindexed (amcheck installed by install_extensions: the
    scratch copy is read-only by then)."""
    result = programs.run("pg_amcheck", [
        "-h", str(instance.socket_dir), "-p", str(instance.port), "-U", instance.superuser,
        "--all", "--heapallindexed", "-j", str(max(1, jobs))],
        ok_codes=(0, 1, 2), timeout=7200)
    objects: list[str] = []
    for line in result.stdout.splitlines():
        m = _AMCHECK_OBJECT.match(line.strip())
        if m and m.group(2) not in objects:
            objects.append(m.group(2))
    lines = [ln for ln in (result.stdout + result.stderr).splitlines() if ln.strip()]
    # A page whose checksum fails stops that relation's check with this ERROR
    bad_pages = [ln.strip() for ln in lines if BAD_PAGE.search(ln)]
    evidence = {"exit_code": result.returncode, "corrupt_objects": objects, "output": lines[:20],
                "bad_pages": bad_pages[:50]}
    return result.returncode == 0, evidence


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "t" if value else "f"
    return "" if value is None else str(value)


def expected_text(expect: str | bool | float) -> str:
    if isinstance(expect, bool):
        return "t" if expect else "f"
    text = str(expect)
    return {"true": "t", "false": "f"}.get(text.lower(), text)


def user_check(instance: Instance, check: VerifyCheckConfig) -> tuple[bool, str, dict[str, Any]]:
    """Run a smoke query read-only; compare the first column of the first row as text."""
    want = expected_text(check.expect)
    try:
        with session(instance.conninfo(check.database), statement_timeout=0) as conn, conn.transaction():
            conn.execute("set transaction read only")
            cur = conn.execute(check.sql)  # the operator's own SQL, from pgdr.toml
            row = cur.fetchone() if cur.description else None
    except PgdrError as exc:
        return False, exc.message, {"database": check.database, "expected": want}
    except psycopg.Error as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return False, f"query failed: {msg}", {"database": check.database, "expected": want}
    got = None if row is None else _as_text(next(iter(row.values())))
    evidence = {"database": check.database, "expected": want, "got": got}
    if got is None:
        return False, f"returned no row, expected {want!r}", evidence
    if got != want:
        return False, f"returned {got!r}, expected {want!r}", evidence
    return True, f"returned {got!r}", evidence


# ---- data checksums, online -----------------------------------------------------------
# With data checksums on, PostgreSQL verifies a page's checksum every time it reads the
# page into shared buffers (ignore_checksum_failure = off: a bad one is an ERROR naming
# block and file). pg_amcheck's verify_heapam reads every block, 0 to the end, of the
# main fork of every permanent heap table and materialized view and of their TOAST tables,
# in every database it connects to: those reads prove those pages' checksums.
# checksum_sweep reads everything else that has storage through shared buffers with
# pg_prewarm: free space maps, visibility maps, init forks, sequences, every index (B-tree
# ones too: bt_index_check walks the pages linked in the tree, not deleted pages waiting
# for reuse), unlogged relations and the shared catalogs. A valid B-tree is read with
# pgstatindex instead, which reads every block (deleted ones included) through a small
# ring of buffers, where pg_prewarm's reads evict (and write out) dirty shared buffers:
# 20-52 ms against 62-94 ms for pgbench scale 30's 64 MB primary key. Together they cover every block
# of every relation fork pg_class knows, as pg_checksums --check would, without a clean
# shutdown and a second pass over the tables.
# A page already in shared buffers is not re-read: it was either read (and verified) by
# recovery or an earlier scan, or rebuilt from a full-page image, whose on-disk copy
# (possibly torn in the backup) PostgreSQL overwrites at its next checkpoint anyway.
# What is NOT covered: files in the data directory that no pg_class entry names
# (orphans left by a crashed transaction: no query can ever read them).

_UNCOVERED_FORKS = """
with heap_read as (  -- the main forks pg_amcheck --all reads in full (verify_heapam)
  select c.oid from pg_class c
  where c.relkind in ('r', 'm') and c.relam = (select oid from pg_am where amname = 'heap')
    and c.relpersistence = 'p' and not c.relisshared
    and c.relnamespace <> 'pg_toast'::regnamespace::oid
  union all
  select c.reltoastrelid from pg_class c
  where c.reltoastrelid <> 0 and c.relkind in ('r', 'm')
    and c.relam = (select oid from pg_am where amname = 'heap')
    and c.relpersistence = 'p' and not c.relisshared
)
select c.oid::bigint as oid, f.fork,
       f.fork = 'main' and c.relam = 403 and coalesce(i.indisvalid, false) as btree
from pg_class c
cross join (values ('main'), ('fsm'), ('vm'), ('init')) f(fork)
left join pg_index i on i.indexrelid = c.oid
where c.relkind in ('r', 'm', 't', 'i', 'S')
  and c.relpersistence <> 't'
  and (not c.relisshared or %(shared)s)
  and pg_relation_size(c.oid, f.fork) > 0
  and not (f.fork = 'main' and c.oid in (select oid from heap_read))
order by 1, 2
"""

# One statement per database; each fork in a subtransaction, so one bad page is reported
# (as a NOTICE, collected by the caller) and the sweep goes on.
_SWEEP = """
do $$
declare r record; n bigint := 0; f int := 0;
begin
  for r in {query} loop
    begin
      if r.btree then  -- every block, through a small ring of buffers: cheaper than pg_prewarm
        perform pgstatindex(r.oid::oid::regclass);
        n := n + pg_relation_size(r.oid::oid::regclass) / current_setting('block_size')::int;
      else
        n := n + pg_prewarm(r.oid::oid::regclass, 'buffer', r.fork);
      end if;
      f := f + 1;
    exception when others then
      raise notice 'pgdr-bad-page: %', sqlerrm;
    end;
  end loop;
  raise notice 'pgdr-swept: % %', f, n;
end $$
"""

BAD_PAGE = re.compile(r"invalid page in block (\d+) of relation ([\w/.]+)")


EXTENSIONS = ("amcheck", "pg_prewarm", "pgstattuple")


# Bytes of heap not marked all-visible by the last VACUUM (pg_class.relallvisible): pages
# whose tuples may still lack hint bits, which the first read sets (see
# verify._restart_read_only). An estimate: a page changed since that VACUUM counts as
# all-visible here; it decides only where the checks run, never what they check.
# Unlogged tables count too: a restart into recovery empties them (and a hot standby
# refuses to read them), so their presence rules the restart out.
_UNVACUUMED = """
select coalesce(sum(greatest(pg_relation_size(c.oid)
                             - c.relallvisible::bigint * current_setting('block_size')::int, 0))
                filter (where c.relpersistence = 'p'), 0)::bigint as n,
       count(*) filter (where c.relpersistence = 'u') as unlogged
from pg_class c
where c.relkind in ('r', 'm', 't')
"""


@dataclass
class Prepared:
    problems: list[str] = field(default_factory=list)  # one line per database that failed
    unvacuumed_bytes: int = 0
    unlogged_tables: int = 0


def install_extensions(instance: Instance) -> Prepared:
    """Create the extensions the checks call in every database that accepts connections
    (template0 too, once allow_template0 was called), while the scratch copy is still
    writable, and estimate how much heap no VACUUM has marked all-visible. A database
    where that failed is named in problems (its checks then fail and say why)."""
    with session(instance.conninfo(), statement_timeout=0) as conn:
        dbs = [r["datname"] for r in conn.execute(
            "select datname from pg_database where datallowconn order by 1")]
    def one(dbname: str) -> tuple[str | None, tuple[int, int]]:
        try:
            with session(instance.conninfo(dbname), statement_timeout=0) as conn:
                conn.execute("set synchronous_commit = on")  # before an immediate stop
                for ext in EXTENSIONS:
                    conn.execute(sql.SQL("create extension if not exists {}").format(sql.Identifier(ext)))
                row = conn.execute(_UNVACUUMED).fetchone()
                return None, (int(row["n"]), int(row["unlogged"])) if row else (0, 0)
        except PgdrError as exc:
            return f"{dbname}: {exc.message}", (0, 0)
        except psycopg.Error as exc:
            return f"{dbname}: {type(exc).__name__}: {str(exc).strip()}", (0, 0)

    with ThreadPoolExecutor(max_workers=max(1, min(len(dbs), 4))) as pool:  # one database each
        found = list(pool.map(one, dbs))
    return Prepared([p for p, _ in found if p], sum(n for _, (n, _u) in found),
                    sum(u for _, (_n, u) in found))


def allow_template0(instance: Instance, allow: bool) -> None:
    """template0 accepts no connections; in the scratch copy it must, to be checked."""
    with session(instance.conninfo(), statement_timeout=0) as conn:
        # the scratch server runs with synchronous_commit off and verify stops it
        # immediately: this commit must reach the WAL before that, for a kept copy
        conn.execute("set synchronous_commit = on")
        conn.execute(sql.SQL("alter database template0 allow_connections {}").format(
            sql.SQL("true" if allow else "false")))


def checksum_sweep(instance: Instance) -> dict[str, Any]:
    """Read, through shared buffers, every relation fork pg_amcheck does not read, in
    every database (template0 included, once allow_template0 was called; pg_prewarm and
    pgstattuple installed by install_extensions); returns
    {"forks", "blocks", "databases", "bad_pages": [...], "errors": [...]}."""
    with session(instance.conninfo(), statement_timeout=0) as conn:
        dbs = [r["datname"] for r in conn.execute(
            "select datname from pg_database where datallowconn order by datname = 'postgres' desc, 1")]
    out: dict[str, Any] = {"forks": 0, "blocks": 0, "databases": len(dbs), "bad_pages": [], "errors": []}
    for i, dbname in enumerate(dbs):
        notices: list[str] = []
        try:
            with session(instance.conninfo(dbname), statement_timeout=0) as conn:
                in_background(conn)

                def collect(diag: psycopg.errors.Diagnostic, notices: list[str] = notices) -> None:
                    notices.append(diag.message_primary or "")
                conn.add_notice_handler(collect)
                query = _UNCOVERED_FORKS.replace("%(shared)s", "true" if i == 0 else "false")
                conn.execute(_SWEEP.replace("{query}", query))
        except PgdrError as exc:
            out["errors"].append(f"{dbname}: {exc.message}")
        except psycopg.Error as exc:
            out["errors"].append(f"{dbname}: {type(exc).__name__}: {str(exc).strip()}")
        for note in notices:
            if note.startswith("pgdr-swept: "):
                forks, blocks = note.split()[1:3]
                out["forks"] += int(forks)
                out["blocks"] += int(blocks)
            elif note.startswith("pgdr-bad-page: "):
                text = note.removeprefix("pgdr-bad-page: ")
                if BAD_PAGE.search(text):
                    out["bad_pages"].append(f"{dbname}: {text}")
                else:
                    out["errors"].append(f"{dbname}: {text}")
    return out
