"""`pgdr salvage`: copy rows from a restored instance into the live primary.

Rows stream with COPY (binary) from the source straight into the target, never
through a file. By default they land in a NEW table `<table>_recovered_<timestamp>`
with the source table's columns, so the live table is never touched; with merge,
they go through a temporary table into the live table, only the rows whose primary
key is missing there, in one transaction.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql

from pgdr.errors import PgdrError, UsageError
from pgdr.pg.connect import connect
from pgdr.pg.conninfo import mask


class SalvageFailed(PgdrError):
    """Rows could not be copied; nothing was committed."""


@dataclass
class SalvageResult:
    source_table: str
    target_table: str
    mode: str                 # new-table | merge
    copied: int
    inserted: int
    skipped: int
    seconds: float
    source: str
    target: str

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["seconds"] = round(self.seconds, 3)
        return d


@dataclass
class _Column:
    name: str
    type: str


def _resolve(conn: psycopg.Connection[Any], table: str, where: str) -> tuple[str, str, int]:
    row = conn.execute(
        "select c.oid::int as oid, n.nspname as schema_name, c.relname as name from pg_class c "
        "join pg_namespace n on n.oid = c.relnamespace where c.oid = to_regclass(%s)", (table,)).fetchone()
    if row is None:
        raise UsageError(f"table {table} does not exist in the {where} database")
    return row["schema_name"], row["name"], row["oid"]


def _columns(conn: psycopg.Connection[Any], oid: int) -> list[_Column]:
    rows = conn.execute(
        "select attname, format_type(atttypid, atttypmod) as type from pg_attribute "
        "where attrelid = %s and attnum > 0 and not attisdropped and attgenerated = '' order by attnum",
        (oid,)).fetchall()
    return [_Column(r["attname"], r["type"]) for r in rows]


def _primary_key(conn: psycopg.Connection[Any], oid: int) -> list[str]:
    rows = conn.execute(
        "select a.attname from pg_index i join pg_attribute a on a.attrelid = i.indrelid "
        "and a.attnum = any(i.indkey) where i.indrelid = %s and i.indisprimary order by a.attnum",
        (oid,)).fetchall()
    return [r["attname"] for r in rows]


def salvage(from_dsn: str, into_dsn: str, table: str, *, where: str | None = None,
            as_table: str | None = None, merge: bool = False) -> SalvageResult:
    if merge and as_table:
        raise UsageError("--as and --merge exclude each other")
    t0 = time.monotonic()
    src = connect(from_dsn, timeout=10, statement_timeout=0, autocommit=False)
    dst = connect(into_dsn, timeout=10, statement_timeout=0, autocommit=False)
    try:
        schema, name, oid = _resolve(src, table, "source (restored)")
        cols = _columns(src, oid)
        qualified = sql.Identifier(schema, name)
        col_list = sql.SQL(", ").join(sql.Identifier(c.name) for c in cols)
        select = sql.SQL("select {} from {}").format(col_list, qualified)
        if where:
            select = sql.SQL("{} where {}").format(select, sql.SQL(where))  # the operator's own SQL
        if merge:
            _, _, target_oid = _resolve(dst, f"{sql.Identifier(schema, name).as_string(dst)}", "target")
            pk = _primary_key(dst, target_oid)
            if not pk:
                raise UsageError(f"{schema}.{name} has no primary key in the target: --merge cannot tell "
                                 "missing rows from present ones", hint="salvage into a new table (omit --merge)")
            dest = sql.Identifier("pgdr_salvage")
            dst.execute(sql.SQL("create temp table {} ({}) on commit drop").format(
                dest, sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.type))
                                         for c in cols)))
            target_name = f"{schema}.{name}"
        else:
            new_name = as_table or f"{name}_recovered_{datetime.now(UTC).strftime('%Y%m%d%H%M%S')}"
            new_schema, _, new_rel = new_name.rpartition(".")
            dest = sql.Identifier(new_schema or schema, new_rel)
            exists = dst.execute("select to_regclass(%s) is not null as e",
                                 (dest.as_string(dst),)).fetchone()
            if exists and exists["e"]:
                raise UsageError(f"table {new_schema or schema}.{new_rel} already exists in the target",
                                 hint="choose another name with --as")
            dst.execute(sql.SQL("create table {} ({})").format(
                dest, sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.type))
                                         for c in cols)))
            target_name = f"{new_schema or schema}.{new_rel}"
        copied = _copy(src, dst, select, dest, col_list)
        inserted, skipped = copied, 0
        if merge:
            dst.execute(sql.SQL("analyze {}").format(dest))  # else the anti-join plans for 0 rows
            cond = sql.SQL(" and ").join(sql.SQL("t.{c} = s.{c}").format(c=sql.Identifier(k)) for k in pk)
            cur = dst.execute(sql.SQL(
                "insert into {t} ({cols}) overriding system value select {cols} from {s} s "
                "where not exists (select 1 from {t} t where {cond})").format(
                    t=qualified, cols=col_list, s=dest, cond=cond))
            inserted = cur.rowcount
            skipped = copied - inserted
        dst.commit()
        return SalvageResult(f"{schema}.{name}", target_name, "merge" if merge else "new-table", copied,
                             inserted, skipped, time.monotonic() - t0, mask(from_dsn), mask(into_dsn))
    except psycopg.Error as exc:
        dst.rollback()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SalvageFailed(f"salvage of {table} failed, nothing was changed: {first}") from None
    except BaseException:
        dst.rollback()
        raise
    finally:
        src.close()
        dst.close()


def _copy(src: psycopg.Connection[Any], dst: psycopg.Connection[Any], select: sql.Composable,
          dest: sql.Identifier, col_list: sql.Composable) -> int:
    with src.cursor() as scur, dst.cursor() as dcur:
        with scur.copy(sql.SQL("copy ({}) to stdout (format binary)").format(select)) as out, \
                dcur.copy(sql.SQL("copy {} ({}) from stdin (format binary)").format(dest, col_list)) as into:
            for data in out:
                into.write(data)
        return dcur.rowcount
