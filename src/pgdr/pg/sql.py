"""SQL lives in .sql files (pg_activity's habit): readable, diffable, loaded by name."""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def load(name: str) -> str:
    return resources.files("pgdr.sql").joinpath(f"{name}.sql").read_text()
