"""Prepared transactions (PREPARE TRANSACTION) left on a restored server.

A restore that stops before a COMMIT PREPARED (`restore --before-xid` of a two-phase
transaction, or any target between a PREPARE and its end) leaves that transaction
prepared on the restored server, with its locks, exactly as the primary held it at that
moment. pgdr never commits or rolls one back by itself: which end is right is the
operator's decision (the undo case wants ROLLBACK PREPARED, a plain point-in-time restore
may want COMMIT PREPARED). So restore reports each one with the statement that ends it,
and salvage names the one holding a lock on its table instead of waiting behind it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg


def literal(text: str) -> str:
    """A gid as an SQL string literal (standard_conforming_strings: only ' doubles)."""
    return "'" + text.replace("'", "''") + "'"


@dataclass
class Prepared:
    gid: str
    xid: int                  # 32-bit, as pg_prepared_xacts shows it
    owner: str
    database: str
    prepared_at: str
    locks: list[str] = field(default_factory=list)   # "public.t AccessExclusiveLock"

    @property
    def rollback(self) -> str:
        return f"ROLLBACK PREPARED {literal(self.gid)}"

    @property
    def commit(self) -> str:
        return f"COMMIT PREPARED {literal(self.gid)}"

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rollback"] = self.rollback
        d["commit"] = self.commit
        d["run_in_database"] = self.database
        return d

    def describe(self) -> str:
        held = f", holding {', '.join(self.locks)}" if self.locks else ""
        return (f"prepared transaction {self.gid!r} (xid {self.xid}, owner {self.owner}, database "
                f"{self.database}, prepared {self.prepared_at}){held}")


# Relation locks held by prepared transactions: their virtualtransaction is '-1/<xid>'
# and they have no pid (PostgreSQL's lock.c keeps them on a dummy PGPROC).
_PREPARED_SQL = """
select p.gid, p.transaction::text::bigint as xid, p.owner, p.database, p.prepared::text as prepared_at,
       array(select coalesce(c.oid::regclass::text, 'relation ' || lk.relation::text) || ' ' || lk.mode
             from pg_locks lk
             left join pg_database d on d.oid = lk.database
             left join pg_class c on c.oid = lk.relation and d.datname = current_database()
             where lk.locktype = 'relation' and lk.pid is null
               and lk.virtualtransaction = '-1/' || p.transaction::text
             order by 1) as locks
from pg_prepared_xacts p
order by p.prepared, p.gid
"""


def prepared_transactions(conn: psycopg.Connection[Any]) -> list[Prepared]:
    """Every prepared transaction of the server (pg_prepared_xacts is cluster-wide); lock
    names resolve for relations of conn's database, others show as `relation OID`."""
    rows = conn.execute(_PREPARED_SQL).fetchall()
    return [Prepared(r["gid"], int(r["xid"]), r["owner"], r["database"], r["prepared_at"], list(r["locks"]))
            for r in rows]


# Lock modes that conflict with the ACCESS SHARE lock a SELECT / COPY TO takes, and with the
# ROW EXCLUSIVE lock an INSERT takes (PostgreSQL's conflict table).
CONFLICTS = {
    "AccessShareLock": ("AccessExclusiveLock",),
    "RowExclusiveLock": ("ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock"),
}


def holding(conn: psycopg.Connection[Any], oid: int, wanted: str) -> list[Prepared]:
    """The prepared transactions holding a lock on relation oid (of conn's database)
    that conflicts with the `wanted` mode: a statement needing it would wait for them
    for ever, as nothing ends a prepared transaction but COMMIT/ROLLBACK PREPARED."""
    rows = conn.execute(
        "select distinct replace(virtualtransaction, '-1/', '')::bigint as xid from pg_locks "
        "where locktype = 'relation' and pid is null and virtualtransaction like '-1/%%' "
        "and database = (select oid from pg_database where datname = current_database()) "
        "and relation = %s and mode = any(%s)", (oid, list(CONFLICTS[wanted]))).fetchall()
    xids = {int(r["xid"]) for r in rows}
    return [p for p in prepared_transactions(conn) if p.xid in xids] if xids else []
