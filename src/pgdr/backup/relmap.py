"""The relation map: relfilenode -> database.schema.table for every relation.

Recorded with each backup so that later, reading WAL with pg_waldump, a block
reference like 1663/16384/16390 can be named even after its table was dropped.
"""

from __future__ import annotations

from pgdr.pg.connect import session
from pgdr.pg.conninfo import with_params
from pgdr.pg.sql import load
from pgdr.repo.manifest import Relation


def connectable_databases(conninfo: str) -> list[str]:
    with session(conninfo) as conn:
        rows = conn.execute(
            "select datname from pg_database where datallowconn and not datistemplate order by 1"
        ).fetchall()
    return [r["datname"] for r in rows]


def relation_map(conninfo: str, databases: list[str]) -> dict[str, Relation]:
    relations: dict[str, Relation] = {}
    sql = load("relations")
    for dbname in databases:
        with session(with_params(conninfo, dbname=dbname)) as conn:
            for row in conn.execute(sql):
                key = f"{row['spc']}/{row['db']}/{row['filenode']}"
                relations[key] = Relation(database=dbname, schema_name=row["schema_name"],
                                          name=row["name"], kind=row["kind"])
    return relations
