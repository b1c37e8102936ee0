"""Table names as PostgreSQL reads them: the one place pgdr parses and prints them.

`--table` takes `name`, `schema.name` or SQL-quoted parts (`"Sales Dept"."Order Items"`):
unquoted parts fold to lower case, quoted parts keep their case and spaces, `""` inside
quotes is one `"`. What pgdr prints is quoted the same way (only where needed), so a
name from `find-disaster` can be pasted into `salvage --table` as it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pgdr.errors import UsageError

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_PLAIN = re.compile(r"[a-z_][a-z0-9_$]*")
# Reserved words PostgreSQL refuses as bare table names; quoting them keeps printed names valid.
_RESERVED = frozenset("""all analyse analyze and any array as asc asymmetric authorization binary both case
cast check collate collation column concurrently constraint create cross current_catalog current_date
current_role current_schema current_time current_timestamp current_user default deferrable desc distinct
do else end except false fetch for foreign freeze from full grant group having ilike in initially inner
intersect into is isnull join lateral leading left like limit localtime localtimestamp natural not notnull
null offset on only or order outer overlaps placing primary references returning right select session_user
similar some symmetric table tablesample then to trailing true union unique user using variadic verbose
when where window with""".split())  # noqa: SIM905


@dataclass(frozen=True)
class TableName:
    """A table as the user named it: schema None means 'any schema' (or search_path)."""

    schema: str | None
    name: str

    def matches(self, schema: str, name: str) -> bool:
        return self.name == name and (self.schema is None or self.schema == schema)

    def __str__(self) -> str:
        return qualified(self.schema, self.name) if self.schema is not None else quote(self.name)


def quote(part: str) -> str:
    """One identifier, quoted only when PostgreSQL would not read it back unchanged."""
    if _PLAIN.fullmatch(part) and part not in _RESERVED:
        return part
    return '"' + part.replace('"', '""') + '"'


def qualified(schema: str, name: str) -> str:
    return f"{quote(schema)}.{quote(name)}"


def parse_table(text: str, what: str = "--table") -> TableName:
    """`name`, `schema.name`, either part SQL-quoted; bad syntax is a UsageError (one line)."""
    parts: list[str] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i < n and text[i] == '"':
            j, buf = i + 1, []
            while True:
                k = text.find('"', j)
                if k < 0:
                    raise UsageError(f"{what} {text!r}: unterminated quoted identifier")
                buf.append(text[j:k])
                if k + 1 < n and text[k + 1] == '"':
                    buf.append('"')
                    j = k + 2
                    continue
                i = k + 1
                break
            part = "".join(buf)
            if not part:
                raise UsageError(f"{what} {text!r}: zero-length quoted identifier")
        else:
            j = i
            while j < n and text[j] not in '."' and not text[j].isspace():
                j += 1
            part = text[i:j]
            if not part or not (part[0].isalpha() or part[0] == "_") \
                    or not all(ch.isalnum() or ch in "_$" for ch in part):
                raise UsageError(f"{what} {text!r}: expected a table name, schema.table or "
                                 '"Quoted Name"')
            # PostgreSQL folds only ASCII letters (downcase_identifier); 'Ä' stays 'Ä'
            part = part.translate(_ASCII_LOWER)
            i = j
        parts.append(part)
        while i < n and text[i].isspace():
            i += 1
        if i < n and text[i] == ".":
            i += 1
            continue
        if i != n:
            raise UsageError(f"{what} {text!r}: unexpected {text[i:]!r} (quote names with spaces: "
                             '"Order Items")')
        break
    if len(parts) > 2:
        raise UsageError(f"{what} {text!r}: expected table or schema.table, not {len(parts)} parts")
    return TableName(parts[0], parts[1]) if len(parts) == 2 else TableName(None, parts[0])
