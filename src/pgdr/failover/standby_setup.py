"""Pointing a standby at a (new) primary, running or stopped, without losing its settings.

primary_conninfo keeps what the operator gave the standby — replication user,
passfile, sslmode, application_name — and only host and port change (or the node's
`replication_conninfo` is used as configured); pgdr's own conninfo, usually a
superuser's, is never written there. The setting is replaced, never appended a second
time: `ALTER SYSTEM` on a running standby (PostgreSQL 13+ reloads primary_conninfo),
a single-line, atomic rewrite of postgresql.auto.conf that keeps owner and mode when
it is stopped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from psycopg import sql

from pgdr.config import NodeConfig
from pgdr.errors import PgdrError
from pgdr.failover.fence import mark_standby
from pgdr.failover.slots import ensure_slot, slot_name
from pgdr.fsutil import replace_file_keeping_owner
from pgdr.pg.connect import session
from pgdr.pg.conninfo import parse, split_password
from pgdr.pg.programs import Programs

# pg_rewind and pg_basebackup copy these from the source; a node keeps its own.
OWN_CONFIG_FILES = ("postgresql.conf", "postgresql.auto.conf", "pg_hba.conf", "pg_ident.conf")
# A standby retries a failed WAL source after this long; PostgreSQL's default (5 s) can
# add 5 s to a promotion or a follow (DESIGN.md reference figures).
RETRY_INTERVAL = "500ms"
_ADDRESS_KEYS = ("host", "hostaddr", "port")


def replication_conninfo(node: NodeConfig, primary: NodeConfig, current: str | None,
                         borrowed: str | None = None) -> str:
    """What `node`'s primary_conninfo should be to follow `primary`.

    In order: the node's configured replication_conninfo; its own primary_conninfo; the
    replication settings the cluster already uses (`borrowed`: another standby's, e.g.
    the new primary's own from before its promotion, without its application_name) --
    a former primary has none of its own; last, pgdr's user without its password."""
    from psycopg.conninfo import make_conninfo

    target = {k: v for k, v in parse(primary.conninfo).items() if k in _ADDRESS_KEYS}
    if node.replication_conninfo:
        params = {k: v for k, v in parse(node.replication_conninfo).items() if k not in _ADDRESS_KEYS}
    elif current and current.strip():
        params = {k: v for k, v in parse(current).items() if k not in _ADDRESS_KEYS}
    elif borrowed and borrowed.strip():
        params = {k: v for k, v in parse(borrowed).items() if k not in _ADDRESS_KEYS + ("application_name",)}
    else:  # nothing to keep: pgdr's address and user, never its password
        plain, _ = split_password(primary.conninfo)
        params = {k: v for k, v in parse(plain).items() if k not in _ADDRESS_KEYS + ("dbname",)}
    params.setdefault("application_name", node.name)
    return make_conninfo(**{**params, **target})


def application_name(conninfo: str, default: str) -> str:
    return parse(conninfo).get("application_name") or default


def save_own_config(data_dir: Path) -> dict[str, bytes]:
    return {name: (data_dir / name).read_bytes() for name in OWN_CONFIG_FILES if (data_dir / name).exists()}


def restore_own_config(data_dir: Path, saved: dict[str, bytes], programs: Programs) -> None:
    for name, content in saved.items():
        (data_dir / name).write_bytes(content)
        programs.run_as.chown(data_dir / name)


def _unquote(value: str) -> str:
    value = value.strip()
    if value.startswith("'") and value.endswith("'"):
        return value[1:-1].replace("''", "'").replace("\\'", "'")
    return value


def read_auto_conf(data_dir: Path) -> dict[str, str]:
    """The settings of postgresql.auto.conf (the last assignment of each wins, as in the server)."""
    out: dict[str, str] = {}
    path = data_dir / "postgresql.auto.conf"
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        match = re.match(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*=?\s*(.*?)\s*$", line)
        if match and not line.lstrip().startswith("#"):
            out[match.group(1).lower()] = _unquote(match.group(2))
    return out


def rewrite_auto_conf(data_dir: Path, settings: Mapping[str, str | None]) -> None:
    """Replace each setting's line (dropping duplicates) or add it once; a None value drops
    the setting; atomic, owner and mode kept."""
    path = data_dir / "postgresql.auto.conf"
    lines = path.read_text().splitlines() if path.exists() else []
    kept, done = [], set()
    for line in lines:
        match = re.match(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*=", line)
        key = match.group(1).lower() if match and not line.lstrip().startswith("#") else None
        if key is not None and key in settings:
            value = settings[key]
            if key not in done and value is not None:
                kept.append(f"{key} = '{value.replace(chr(39), chr(39) * 2)}'")
            done.add(key)
            continue
        kept.append(line)
    kept += [f"{k} = '{v.replace(chr(39), chr(39) * 2)}'" for k, v in settings.items()
             if k not in done and v is not None]
    replace_file_keeping_owner(path, ("\n".join(kept) + "\n").encode())


def configure_as_standby(data_dir: Path, node: NodeConfig, primary: NodeConfig, programs: Programs) -> str:
    """A stopped data directory becomes a standby of `primary`; returns its application_name."""
    current = read_auto_conf(data_dir)
    own = current.get("primary_conninfo")
    borrowed = None if node.replication_conninfo or (own and own.strip()) else cluster_replication_settings(primary)
    conninfo = replication_conninfo(node, primary, own, borrowed)
    slot = current.get("primary_slot_name") or slot_name(node.name)
    ensure_slot(primary.conninfo, slot)
    rewrite_auto_conf(data_dir, {"primary_conninfo": conninfo, "primary_slot_name": slot,
                                 "recovery_target_timeline": "latest",
                                 "wal_retrieve_retry_interval": RETRY_INTERVAL,
                                 # a former primary must not wait for standbys once it is one again
                                 "synchronous_standby_names": ""})
    mark_standby(data_dir, programs)
    return application_name(conninfo, node.name)


def cluster_replication_settings(primary: NodeConfig) -> str | None:
    """The primary_conninfo the (new) primary itself kept from its time as a standby: how
    this cluster's standbys authenticate (replication role, passfile, sslmode)."""
    try:
        with session(primary.conninfo, what="the replication settings the cluster uses") as conn:
            row = conn.execute("select current_setting('primary_conninfo') as ci").fetchone()
    except PgdrError:
        return None
    return str(row["ci"]) if row and row["ci"] else None


def follow(standby: NodeConfig, primary: NodeConfig) -> str:
    """Point a running standby at the new primary (primary_conninfo reloads since PG 13);
    returns the application_name the new primary will see it under."""
    with session(standby.conninfo) as conn:
        row = conn.execute("select current_setting('primary_conninfo') as ci, "
                           "current_setting('primary_slot_name') as slot").fetchone()
        assert row is not None
        conninfo = replication_conninfo(standby, primary, row["ci"])
        slot = row["slot"] or slot_name(standby.name)
        ensure_slot(primary.conninfo, slot)
        for name, value in (("primary_conninfo", conninfo), ("primary_slot_name", slot),
                            ("wal_retrieve_retry_interval", RETRY_INTERVAL)):
            conn.execute(sql.SQL("alter system set {} = {}").format(sql.Identifier(name), sql.Literal(value)))
        conn.execute("select pg_reload_conf()")
    return application_name(conninfo, standby.name)
