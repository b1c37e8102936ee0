"""The default bounds of every session (connect, statement and TCP timeouts) from [pg].

Apart from pg/connect.py so that loading the config does not import psycopg (~50 ms that
`pgdr backup` would pay before pg_basebackup starts); connect.py reads DEFAULTS here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pgdr.config import PgConfig


@dataclass(frozen=True)
class Bounds:
    """Seconds; 0 means no limit (statement_timeout, tcp_user_timeout)."""

    connect: float = 5.0
    statement: float = 300.0
    tcp_user: float = 10.0


DEFAULTS = Bounds()


def apply_config(pg: PgConfig) -> None:
    """Make [pg]'s timeouts the defaults of every session this process opens."""
    global DEFAULTS
    DEFAULTS = Bounds(pg.connect_timeout, pg.statement_timeout, pg.tcp_user_timeout)
