"""A database's schema as data: a fingerprint (hash of `pg_dump --schema-only`) that says
whether anything changed, and a table/column snapshot whose diff says what changed.

The diff is what decides how a migration is rolled back: a dropped table or column, or
a column whose type changed, may have taken data with it (a downgrade cannot bring it
back); anything else is schema only.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

from pgdr.pg import sql as queries
from pgdr.pg.connect import session
from pgdr.pg.programs import Programs

Snapshot = dict[str, dict[str, dict[str, Any]]]   # "schema.table" -> column -> facts


def snapshot(conninfo: str, ignore: list[str] | tuple[str, ...] = ()) -> Snapshot:
    """Every user table's columns (type, NOT NULL, default), minus the ignored tables
    (the migration tool's own bookkeeping, e.g. public.alembic_version)."""
    out: Snapshot = {}
    with session(conninfo, what="the schema's tables and columns") as conn:
        for row in conn.execute(queries.load("migrate_columns")):
            name = f"{row['schema']}.{row['table']}"
            if name in ignore:
                continue
            out.setdefault(name, {})[row["column"]] = {
                "type": row["type"], "not_null": row["not_null"], "default": row["default"]}
    return out


def fingerprint(programs: Programs, conninfo: str, timeout: float = 600) -> str:
    """sha256 of `pg_dump --schema-only`: equal fingerprints, equal schemas. pg_dump 15.14+
    writes psql `\\restrict KEY` lines with a random key on every run: left out of the hash."""
    done = programs.run("pg_dump", ["--schema-only", "--no-comments", "-d", conninfo], timeout=timeout)
    lines = [ln for ln in done.stdout.splitlines() if not ln.startswith(("\\restrict ", "\\unrestrict "))]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


@dataclass
class SchemaDiff:
    tables_added: list[str] = field(default_factory=list)
    tables_dropped: list[str] = field(default_factory=list)
    columns_added: list[str] = field(default_factory=list)      # "schema.table.column"
    columns_dropped: list[str] = field(default_factory=list)
    columns_altered: list[str] = field(default_factory=list)    # "schema.table.column: what changed"

    @property
    def empty(self) -> bool:
        return not any((self.tables_added, self.tables_dropped, self.columns_added,
                        self.columns_dropped, self.columns_altered))

    @property
    def destructive(self) -> bool:
        """Data may be gone: a dropped table or column, or a column's type changed."""
        return bool(self.tables_dropped or self.columns_dropped
                    or any(": type " in c for c in self.columns_altered))

    def summary(self) -> str:
        parts = [f"{label} {', '.join(items)}" for label, items in (
            ("tables added:", self.tables_added), ("tables dropped:", self.tables_dropped),
            ("columns added:", self.columns_added), ("columns dropped:", self.columns_dropped),
            ("columns altered:", self.columns_altered)) if items]
        return "; ".join(parts) if parts else "no table or column changed"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "destructive": self.destructive, "summary": self.summary()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SchemaDiff:
        return cls(**{k: list(data.get(k) or []) for k in (
            "tables_added", "tables_dropped", "columns_added", "columns_dropped", "columns_altered")})


def diff(before: Snapshot, after: Snapshot) -> SchemaDiff:
    result = SchemaDiff(tables_added=sorted(set(after) - set(before)),
                        tables_dropped=sorted(set(before) - set(after)))
    for table in sorted(set(before) & set(after)):
        old, new = before[table], after[table]
        result.columns_added += [f"{table}.{c}" for c in new if c not in old]
        result.columns_dropped += [f"{table}.{c}" for c in old if c not in new]
        for column in (c for c in old if c in new):
            changes = [f"{what} {old[column][what]} -> {new[column][what]}"
                       for what in ("type", "not_null", "default") if old[column][what] != new[column][what]]
            if changes:
                result.columns_altered.append(f"{table}.{column}: {', '.join(changes)}")
    return result
