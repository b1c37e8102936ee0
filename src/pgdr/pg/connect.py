"""The one way pgdr opens a SQL session: bounded, masked, with a cause a tired operator can act on.

Every session gets
- connect_timeout: a server that does not answer the connection;
- keepalives and tcp_user_timeout: a peer that vanishes (SIGSTOPped, cable pulled)
  mid-session fails within seconds instead of the kernel's ~15 minutes;
- statement_timeout: a statement that runs too long is cancelled by the server.
Defaults come from [pg] in pgdr.toml (pg/bounds.py `apply_config`); each call can override them
(verify's checks pass statement_timeout=0, "no limit"). A failure raises
ConnectionFailed naming the server (password masked), what pgdr waited for, and the
cause, classified by SQLSTATE where there is one.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import psycopg
from psycopg import errors as pgerrors
from psycopg.rows import dict_row

from pgdr.errors import ConnectionFailed
from pgdr.pg import bounds as _defaults
from pgdr.pg.bounds import Bounds
from pgdr.pg.conninfo import mask, mask_text, parse, with_params
from pgdr.pg.credentials import connect_error

# Causes of a failed session (diagnose maps them to the runbooks' common-errors table).
REFUSED = "refused"
AUTH_FAILED = "auth_failed"
STARTING_UP = "starting_up"
TOO_MANY_CLIENTS = "too_many_clients"
NO_DATABASE = "no_database"
TIMEOUT = "timeout"
READ_ONLY = "read_only"
WRAPAROUND = "wraparound_protection"
STATEMENT_TIMEOUT = "statement_timeout"
LOST = "connection_lost"
OTHER = "other"

_TEXT = {
    REFUSED: "connection refused (server not running or wrong host/port)",
    AUTH_FAILED: "authentication failed",
    STARTING_UP: "the server is starting up or shutting down",
    TOO_MANY_CLIENTS: "too many clients already",
    NO_DATABASE: "database does not exist",
    TIMEOUT: "connection timed out",
    STATEMENT_TIMEOUT: "statement_timeout expired (or the statement was cancelled)",
    LOST: "the server stopped answering or closed the connection",
}


def classify(exc: BaseException) -> str:
    """The cause of a failed connection or statement, by SQLSTATE where the server sent one."""
    if isinstance(exc, pgerrors.InvalidPassword | pgerrors.InvalidAuthorizationSpecification):
        return AUTH_FAILED
    if isinstance(exc, pgerrors.TooManyConnections):
        return TOO_MANY_CLIENTS
    if isinstance(exc, pgerrors.CannotConnectNow):
        return STARTING_UP
    if isinstance(exc, pgerrors.InvalidCatalogName):
        return NO_DATABASE
    if isinstance(exc, pgerrors.ProgramLimitExceeded):
        return WRAPAROUND
    if isinstance(exc, pgerrors.ReadOnlySqlTransaction):
        return READ_ONLY
    if isinstance(exc, pgerrors.QueryCanceled):
        return STATEMENT_TIMEOUT
    # No SQLSTATE: libpq's own failure before (or instead of) the server's answer.
    text = str(exc)
    if "authentication failed for user" in text or "no password supplied" in text:
        return AUTH_FAILED  # psycopg's connect errors carry no SQLSTATE
    if "Connection refused" in text or "No such file or directory" in text:
        return REFUSED
    if "timeout expired" in text:
        return TIMEOUT
    if "Connection timed out" in text or "server closed the connection" in text or "consuming input failed" in text:
        return LOST
    return OTHER


def describe_failure(exc: BaseException) -> str:
    """One line for the cause: the classified text, else libpq's first line (masked)."""
    cause = classify(exc)
    if cause in _TEXT:
        return _TEXT[cause]
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return mask_text(lines[0] if lines else type(exc).__name__)


def _bounded(conninfo: str, bounds: Bounds) -> str:
    params: dict[str, str | int | None] = {"connect_timeout": max(1, round(bounds.connect))}
    # UTF-8 on every session: a SQL_ASCII database would otherwise hand psycopg bytes
    # instead of str (and refuse non-ASCII names in queries); the server converts other
    # encodings (LATIN1, EUC_JP…) to UTF-8 itself. A conninfo that sets its own wins.
    if "client_encoding" not in parse(conninfo):
        params["client_encoding"] = "UTF8"
    if bounds.tcp_user:  # libpq ignores these on a unix socket
        idle = max(1, round(bounds.tcp_user / 3))
        params.update(keepalives=1, keepalives_idle=idle, keepalives_interval=idle, keepalives_count=3,
                      tcp_user_timeout=round(bounds.tcp_user * 1000))
    if bounds.statement:
        options = parse(conninfo).get("options", "")
        params["options"] = f"{options} -c statement_timeout={round(bounds.statement * 1000)}".strip()
    return with_params(conninfo, **params)


def _bounds(timeout: float | None, statement_timeout: float | None) -> Bounds:
    bounds = _defaults.DEFAULTS
    if timeout is not None:
        bounds = replace(bounds, connect=timeout)
    if statement_timeout is not None:
        bounds = replace(bounds, statement=statement_timeout)
    return bounds


# How long past statement_timeout pgdr waits before it cuts the connection itself: the
# server enforces statement_timeout, but a stopped server (SIGSTOP, a hung VM) cannot.
CLIENT_MARGIN = 2.0


class BoundedConnection(psycopg.Connection[Any]):
    """A connection whose execute() is bounded on the client side too: when a statement
    has not returned statement_timeout + CLIENT_MARGIN seconds later, a timer shuts the
    socket down, the call fails at once and the session names the peer. The kernel keeps
    ACKing for a SIGSTOPped server, so neither keepalives nor tcp_user_timeout fire."""

    client_bound: float = 0.0
    peer: str = "?"
    what: str | None = None
    _cut: bool = False

    def execute(self, query: Any, params: Any = None, *, prepare: bool | None = None,
                binary: bool = False) -> psycopg.Cursor[Any]:
        if not self.client_bound:
            return super().execute(query, params, prepare=prepare, binary=binary)
        timer = threading.Timer(self.client_bound, self._shutdown)
        timer.daemon = True
        timer.start()
        try:
            return super().execute(query, params, prepare=prepare, binary=binary)
        except psycopg.OperationalError:
            if self._cut:
                doing = f" while waiting for {self.what}" if self.what else ""
                raise ConnectionFailed(f"{self.peer} did not answer within {self.client_bound:.0f}s{doing}",
                                       hint="is the server stopped or overloaded? "
                                            "[pg] statement_timeout bounds every statement") from None
            raise
        finally:
            timer.cancel()

    def _shutdown(self) -> None:
        self._cut = True
        try:
            with socket.socket(fileno=os.dup(self.pgconn.socket)) as sock:
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def open_raw(conninfo: str, *, timeout: float | None = None, statement_timeout: float | None = None,
             autocommit: bool = True, what: str | None = None, **kw: Any) -> BoundedConnection:
    """A bounded connection that raises psycopg's own errors, for callers that classify
    failures themselves (diagnose, health); everyone else uses connect() or session()."""
    bounds = _bounds(timeout, statement_timeout)
    conn = BoundedConnection.connect(_bounded(conninfo, bounds), autocommit=autocommit,
                                     row_factory=dict_row, **kw)
    conn.client_bound = bounds.statement + CLIENT_MARGIN if bounds.statement else 0.0
    conn.peer = mask(conninfo)
    conn.what = what
    return conn


def connect(conninfo: str, *, timeout: float | None = None, statement_timeout: float | None = None,
            autocommit: bool = True, what: str | None = None, **kw: Any) -> BoundedConnection:
    """Connect or raise ConnectionFailed naming the server (password masked) and the cause.

    timeout: seconds to wait for the connection; statement_timeout: per statement
    (0: none); both default to [pg] in pgdr.toml.
    """
    try:
        return open_raw(conninfo, timeout=timeout, statement_timeout=statement_timeout,
                        autocommit=autocommit, what=what, **kw)
    except psycopg.Error as exc:
        refused = connect_error(conninfo, exc)
        if refused is not None:
            raise refused from None
        doing = f" ({what})" if what else ""
        raise ConnectionFailed(f"cannot connect to {mask(conninfo)}{doing}: {describe_failure(exc)}") from None


@contextmanager
def session(conninfo: str, *, timeout: float | None = None, statement_timeout: float | None = None,
            autocommit: bool = True, what: str | None = None) -> Iterator[BoundedConnection]:
    """A bounded session; a timeout or lost connection inside it becomes ConnectionFailed
    naming the server and what pgdr was waiting for (`what`)."""
    conn = connect(conninfo, timeout=timeout, statement_timeout=statement_timeout,
                   autocommit=autocommit, what=what)
    try:
        yield conn
    except (pgerrors.QueryCanceled, psycopg.OperationalError) as exc:
        doing = f" while waiting for {what}" if what else ""
        raise ConnectionFailed(f"{mask(conninfo)}{doing}: {describe_failure(exc)}") from None
    finally:
        conn.close()


def query_one(conninfo: str, sql: str, params: Any = None, *, timeout: float | None = None,
              statement_timeout: float | None = None, what: str | None = None) -> dict[str, Any]:
    with session(conninfo, timeout=timeout, statement_timeout=statement_timeout, what=what) as conn:
        row = conn.execute(sql, params).fetchone()
        assert row is not None
        return dict(row)
