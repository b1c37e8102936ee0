"""Logical-only mode: managed databases (RDS, Cloud SQL, Supabase, Render…) where pgdr's
role has neither REPLICATION nor superuser, so only pg_dump backups are possible.

Set by `[cluster] mode = "logical"`, or detected (mode = "auto", the default) from the
privileges of the role in the primary's conninfo. In that mode the daily check uses
the newest verified logical backup, the archiver and physical checks are "not
applicable", and physical-only commands refuse with one line saying what to do.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

from pgdr.config import Config
from pgdr.errors import PgdrError, UsageError

if TYPE_CHECKING:
    from pgdr.repo.layout import Repository

PRIVILEGES_SQL = """
select current_user as role, rolsuper or rolreplication as can_stream
from pg_roles where rolname = current_user
"""


@cache
def _can_stream(conninfo: str, timeout: float = 5) -> tuple[str, bool]:
    from pgdr.pg.connect import query_one

    row = query_one(conninfo, PRIVILEGES_SQL, timeout=timeout)
    return str(row["role"]), bool(row["can_stream"])


def is_logical_only(config: Config, timeout: float = 5) -> bool:
    """True when configured so, or when the primary's role can neither stream WAL nor
    is superuser. An unreachable primary in auto mode counts as physical: the
    physical commands then say why they cannot connect."""
    if config.cluster.mode != "auto":
        return config.cluster.mode == "logical"
    try:
        return not _can_stream(config.configured_primary.conninfo, timeout)[1]
    except PgdrError:
        return False


def require_physical(config: Config, what: str, instead: str, *, timeout: float = 5) -> None:
    """Refuse a physical-only command in logical-only mode, in one line. Failover passes a
    short timeout: a hung primary may delay it by that much, no more."""
    if not is_logical_only(config, timeout):
        return
    why = ('mode = "logical" in the config' if config.cluster.mode == "logical" else
           f"role {_can_stream(config.configured_primary.conninfo, timeout)[0]} has neither REPLICATION "
           "nor superuser")
    raise UsageError(f"{what} is not possible in logical-only mode ({why})", hint=instead)


def require_physical_restore(config: Config, repo: Repository, what: str, instead: str) -> None:
    """require_physical for a restore, which reads the repository, not the primary: a
    restore is run when the primary may be down, and asking a dead host about its role
    would hold the restore for the whole connect timeout first. So with a physical backup
    in the repository the primary is not asked; without one, it is (in auto mode), as
    its role is then the explanation the user needs."""
    if config.cluster.mode == "auto":
        from pgdr.repo.manifest import list_backups

        if list_backups(repo, kind="physical"):
            return
    require_physical(config, what, instead)
