"""`pgdr salvage`: copy rows from a restored instance into the live primary.

Rows stream with COPY (binary) from the source straight into the target, never
through a file. By default they land in a NEW table `<table>_recovered_<timestamp>`
(with _2, _3... when that name is taken, e.g. by a salvage in the same second) with
the source table's columns - types, NOT NULL, defaults (not a serial's nextval) and
generated columns, which PostgreSQL recomputes - so the live table is never touched; with merge,
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
from pgdr.pg.ident import TableName, parse_table, qualified
from pgdr.restore.prepared import holding


class SalvageFailed(PgdrError):
    """Rows could not be copied; nothing was committed."""


LOCK_WAIT_S = 30  # lock_timeout on both sessions: a lock held elsewhere fails the salvage, named


def _refuse_if_prepared_holds(conn: psycopg.Connection[Any], oid: int, mode: str, table: str, where: str) -> None:
    """A prepared transaction (e.g. the DROP/TRUNCATE a restore stopped just before the
    COMMIT PREPARED of) holding a conflicting lock would make the copy wait for ever:
    refuse at once, naming it and the statement that ends it (pgdr never picks one)."""
    held = holding(conn, oid, mode)
    if held:
        p = held[0]
        raise SalvageFailed(f"{table} is locked in the {where} database by {p.describe()}: salvage would wait "
                            "for it for ever; nothing was changed",
                            hint=f"end it first, in database {p.database} there: {p.rollback} "
                                 f"(or {p.commit})")


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
    not_null: bool = False
    default: str | None = None      # an expression, as pg_get_expr prints it
    generated: bool = False         # GENERATED ALWAYS AS (default) STORED: never copied

    def definition(self) -> sql.Composable:
        parts: list[sql.Composable] = [sql.Identifier(self.name), sql.SQL(self.type)]
        if self.generated and self.default:
            parts.append(sql.SQL("generated always as ({}) stored").format(sql.SQL(self.default)))
        elif self.default:
            parts.append(sql.SQL("default {}").format(sql.SQL(self.default)))
        if self.not_null:
            parts.append(sql.SQL("not null"))
        return sql.SQL(" ").join(parts)


def _resolve(conn: psycopg.Connection[Any], table: TableName, where: str) -> tuple[str, str, int]:
    """The table's schema, name and oid; without a schema, as the search_path finds it."""
    ref = sql.Identifier(table.schema, table.name) if table.schema else sql.Identifier(table.name)
    row = conn.execute(
        "select c.oid::int as oid, n.nspname as schema_name, c.relname as name from pg_class c "
        "join pg_namespace n on n.oid = c.relnamespace where c.oid = to_regclass(%s)",
        (ref.as_string(conn),)).fetchone()
    if row is None:
        raise UsageError(f"table {table} does not exist in the {where} database")
    return row["schema_name"], row["name"], row["oid"]


def _columns(conn: psycopg.Connection[Any], oid: int) -> list[_Column]:
    rows = conn.execute(
        "select a.attname, format_type(a.atttypid, a.atttypmod) as type, a.attnotnull, "
        "a.attgenerated <> '' as generated, pg_get_expr(d.adbin, d.adrelid) as expr "
        "from pg_attribute a left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum "
        "where a.attrelid = %s and a.attnum > 0 and not a.attisdropped order by a.attnum",
        (oid,)).fetchall()
    return [_Column(r["attname"], r["type"], r["attnotnull"], _portable_default(r["expr"], r["generated"]),
                    r["generated"]) for r in rows]


def _portable_default(expr: str | None, generated: bool) -> str | None:
    """A serial's nextval() default names the source's sequence, which a dropped table
    took with it (and which would tie the copy to the live table's): the copy gets the
    values, not the default."""
    if expr is None or generated or "nextval(" not in expr:
        return expr
    return None


MAX_IDENT = 63  # PostgreSQL truncates longer names, which would make distinct names collide


def _new_table_name(base: str, attempt: int) -> str:
    suffix = f"_recovered_{datetime.now(UTC).strftime('%Y%m%d%H%M%S')}" + (f"_{attempt}" if attempt > 1 else "")
    head = base.encode()[:MAX_IDENT - len(suffix)].decode(errors="ignore")
    return head + suffix


def _create_new_table(dst: psycopg.Connection[Any], schema: str, name: str, given: TableName | None,
                      cols: list[_Column]) -> tuple[str, str]:
    """Create the target table; a default name that is taken (a salvage in the same
    second) moves on to the next suffix, a name given with --as is refused."""
    body = sql.SQL(", ").join(c.definition() for c in cols)
    for attempt in range(1, 100):
        target = (given.schema or schema, given.name) if given else (schema, _new_table_name(name, attempt))
        dst.execute("savepoint pgdr_create")  # a name collision must not abort the salvage
        try:
            dst.execute(sql.SQL("create table {} ({})").format(sql.Identifier(*target), body))
            dst.execute("release savepoint pgdr_create")
            return target
        # a concurrent salvage creating the same name makes this one wait, then fail on
        # the table's row type ('type ... already exists') rather than with DuplicateTable
        except (psycopg.errors.DuplicateTable, psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
            dst.execute("rollback to savepoint pgdr_create")
            if given:
                raise UsageError(f"table {qualified(*target)} already exists in the target",
                                 hint="choose another name with --as") from None
    raise UsageError(f"no free name {name}_recovered_<time>_<n> in the target", hint="name one with --as")


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
    wanted = parse_table(table)
    given = parse_table(as_table, "--as") if as_table else None
    t0 = time.monotonic()
    src = connect(from_dsn, timeout=10, statement_timeout=0, autocommit=False)
    dst = connect(into_dsn, timeout=10, statement_timeout=0, autocommit=False)
    try:
        for conn in (src, dst):
            conn.execute(f"set lock_timeout = '{LOCK_WAIT_S}s'")
        schema, name, oid = _resolve(src, wanted, "source (restored)")
        _refuse_if_prepared_holds(src, oid, "AccessShareLock", qualified(schema, name), "source (restored)")
        cols = _columns(src, oid)
        copied_cols = [c for c in cols if not c.generated]  # PostgreSQL recomputes the others
        qualified_id = sql.Identifier(schema, name)
        col_list = sql.SQL(", ").join(sql.Identifier(c.name) for c in copied_cols)
        select = sql.SQL("select {} from {}").format(col_list, qualified_id)
        if where:
            select = sql.SQL("{} where {}").format(select, sql.SQL(where))  # the operator's own SQL
        if merge:
            _, _, target_oid = _resolve(dst, TableName(schema, name), "target")
            _refuse_if_prepared_holds(dst, target_oid, "RowExclusiveLock", qualified(schema, name), "target")
            pk = _primary_key(dst, target_oid)
            if not pk:
                raise UsageError(f"{qualified(schema, name)} has no primary key in the target: --merge cannot "
                                 "tell missing rows from present ones", hint="salvage into a new table (omit --merge)")
            dest = sql.Identifier("pgdr_salvage")
            dst.execute(sql.SQL("create temp table {} ({}) on commit drop").format(
                dest, sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.type))
                                         for c in copied_cols)))
            target_name = qualified(schema, name)
        else:
            target = _create_new_table(dst, schema, name, given, cols)
            dest = sql.Identifier(*target)
            target_name = qualified(*target)
        copied = _copy(src, dst, select, dest, col_list)
        inserted, skipped = copied, 0
        if merge:
            dst.execute(sql.SQL("analyze {}").format(dest))  # else the anti-join plans for 0 rows
            cond = sql.SQL(" and ").join(sql.SQL("t.{c} = s.{c}").format(c=sql.Identifier(k)) for k in pk)
            cur = dst.execute(sql.SQL(
                "insert into {t} ({cols}) overriding system value select {cols} from {s} s "
                "where not exists (select 1 from {t} t where {cond})").format(
                    t=qualified_id, cols=col_list, s=dest, cond=cond))
            inserted = cur.rowcount
            skipped = copied - inserted
        dst.commit()
        return SalvageResult(qualified(schema, name), target_name, "merge" if merge else "new-table", copied,
                             inserted, skipped, time.monotonic() - t0, mask(from_dsn), mask(into_dsn))
    except psycopg.errors.LockNotAvailable:
        dst.rollback()
        raise SalvageFailed(f"salvage of {table} waited {LOCK_WAIT_S}s for a lock on it (source or target) "
                            "and gave up; nothing was changed",
                            hint="see pg_locks on both servers for who holds it") from None
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
