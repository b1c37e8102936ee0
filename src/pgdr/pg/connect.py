"""Opening psycopg connections with a cause a tired operator can act on."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import errors as pgerrors
from psycopg.rows import dict_row

from pgdr.errors import ConnectionFailed
from pgdr.pg.conninfo import mask, mask_text, with_params
from pgdr.pg.credentials import connect_error


def describe_failure(exc: Exception) -> str:
    """Name the cause by SQLSTATE where there is one, by libpq's text otherwise."""
    if isinstance(exc, pgerrors.InvalidPassword | pgerrors.InvalidAuthorizationSpecification):
        return "authentication failed"
    if isinstance(exc, pgerrors.TooManyConnections):
        return "too many clients already"
    if isinstance(exc, pgerrors.CannotConnectNow):
        return "the server is starting up or shutting down"
    if isinstance(exc, pgerrors.InvalidCatalogName):
        return "database does not exist"
    full = str(exc).strip()
    if "Connection refused" in full or "No such file or directory" in full:
        return "connection refused (server not running or wrong host/port)"
    if "timeout expired" in full:
        return "connection timed out"
    lines = [ln.strip() for ln in full.splitlines() if ln.strip()]
    return mask_text(lines[0] if lines else type(exc).__name__)


def connect(conninfo: str, *, timeout: float = 5, autocommit: bool = True, **kw: Any) -> psycopg.Connection[Any]:
    """Connect or raise ConnectionFailed naming the server (password masked) and the cause."""
    target = with_params(conninfo, connect_timeout=max(1, int(timeout)))
    try:
        return psycopg.connect(target, autocommit=autocommit, row_factory=dict_row, **kw)
    except psycopg.Error as exc:
        refused = connect_error(conninfo, exc)
        if refused is not None:
            raise refused from None
        raise ConnectionFailed(f"cannot connect to {mask(conninfo)}: {describe_failure(exc)}") from None


@contextmanager
def session(conninfo: str, *, timeout: float = 5, autocommit: bool = True) -> Iterator[psycopg.Connection[Any]]:
    conn = connect(conninfo, timeout=timeout, autocommit=autocommit)
    try:
        yield conn
    finally:
        conn.close()


def query_one(conninfo: str, sql: str, params: Any = None, *, timeout: float = 5) -> dict[str, Any]:
    with session(conninfo, timeout=timeout) as conn:
        row = conn.execute(sql, params).fetchone()
        assert row is not None
        return dict(row)
