"""Repointing clients: pgbouncer, env files, commands.

Each target can pause (before the promotion), apply (once the new primary is
writable) and resume. pgbouncer pauses for real so clients wait instead of
failing; the others only act in apply. Files are rewritten atomically and keep
their owner, group and mode.

pgbouncer waits `server_login_retry` (15 s by default) after a failed login before
it tries a server again — and while the primary was dead, every client attempt
failed one. So after RELOAD pgdr sets server_login_retry to 0 until a query through
pgbouncer reaches the new primary, then puts the configured value back: clients see
the new primary at once instead of 15 s later (DESIGN.md reference figures).
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import make_conninfo

from pgdr.config import NodeConfig, RepointTarget
from pgdr.errors import PgdrError
from pgdr.fsutil import replace_file_keeping_owner
from pgdr.pg import process
from pgdr.pg.conninfo import parse, split_password, with_params


class RepointFailed(PgdrError):
    """A client could not be pointed at the new primary."""


@dataclass
class RepointResult:
    target: str
    action: str
    detail: str


def _label(target: RepointTarget) -> str:
    return target.name or f"{target.kind}:{target.database or target.path or (target.command or [''])[0]}"


def _admin(target: RepointTarget, command: str, timeout: float,
           rows: list[tuple[object, ...]] | None = None) -> str | None:
    """Run one pgbouncer admin command with a deadline; returns an error text or None.
    rows, when given, receives what the command returned (SHOW ...)."""
    admin_conninfo = target.admin_conninfo
    assert admin_conninfo is not None
    failure: list[str] = []

    def go() -> None:
        try:
            with psycopg.connect(admin_conninfo, autocommit=True, connect_timeout=3) as conn:
                cur = conn.execute(command, prepare=False)
                if rows is not None and cur.description:
                    rows.extend(cur.fetchall())
        except psycopg.Error as exc:
            failure.append(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)

    worker = threading.Thread(target=go, daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        return f"{command} did not complete within {timeout:.0f}s"
    return failure[0] if failure else None


def _login_retry(target: RepointTarget) -> str | None:
    rows: list[tuple[object, ...]] = []
    if _admin(target, "SHOW CONFIG", 5, rows):
        return None
    return next((str(r[1]) for r in rows if r and r[0] == "server_login_retry"), None)


def client_conninfo(target: RepointTarget) -> str:
    """How a client reaches `database` through this pgbouncer (the admin address, that database)."""
    assert target.admin_conninfo is not None
    return with_params(target.admin_conninfo, dbname=target.database)


def wait_client_sees_primary(target: RepointTarget, timeout: float = 10) -> str | None:
    """Until a query through pgbouncer reaches a writable server: None, or why not in time."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    conninfo = with_params(client_conninfo(target), connect_timeout=2)
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(conninfo, autocommit=True, prepare_threshold=None) as conn:
                row = conn.execute("select pg_is_in_recovery()").fetchone()
                if row is not None and row[0] is False:
                    return None
                last = "reached a server in recovery"
        except psycopg.Error as exc:
            last = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        time.sleep(0.05)
    return f"clients through {_label(target)} did not reach the new primary within {timeout:.0f}s: {last}"


def rewrite_pgbouncer_ini(text: str, database: str, host: str, port: str) -> str:
    """Change host and port of one [databases] entry, keeping its other options."""
    out, section, done = [], "", False
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            section = stripped[1:-1].strip().lower()
        elif section == "databases" and re.match(rf"^\s*{re.escape(database)}\s*=", line):
            key, value = line.split("=", 1)
            params = dict(tok.split("=", 1) for tok in value.split() if "=" in tok)
            params["host"], params["port"] = host, port
            line = f"{key.rstrip()} = " + " ".join(f"{k}={v}" for k, v in params.items()) + "\n"
            done = True
        out.append(line)
    if not done:
        raise RepointFailed(f"pgbouncer ini has no [databases] entry {database!r}")
    return "".join(out)


def rewrite_env_file(text: str, new_primary: NodeConfig) -> str:
    params = parse(new_primary.conninfo)
    host, port = params.get("host", "localhost"), params.get("port", "5432")
    out = []
    for line in text.splitlines(keepends=True):
        key = line.split("=", 1)[0].strip().removeprefix("export ").strip()
        if key == "PGHOST":
            line = re.sub(r"=.*", f"={host}", line, count=1)
        elif key == "PGPORT":
            line = re.sub(r"=.*", f"={port}", line, count=1)
        elif key == "DATABASE_URL":
            old = line.split("=", 1)[1].strip().strip("'\"")
            line = line.split("=", 1)[0] + "=" + _retarget_url(old, host, port) + "\n"
        out.append(line)
    return "".join(out)


def _retarget_url(url: str, host: str, port: str) -> str:
    """Keep user, password, database and options of a URL or conninfo; change only host and port."""
    if url.startswith(("postgres://", "postgresql://")):
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = (userinfo + "@" if userinfo else "") + f"{quote(host, safe='')}:{port}"
        return urlunsplit(parts._replace(netloc=netloc))
    params = parse(url)
    params["host"], params["port"] = host, port
    return make_conninfo(**params)


class Repointer:
    def __init__(self, targets: list[RepointTarget]) -> None:
        self.targets = targets
        self.paused: list[RepointTarget] = []
        self.login_retry: dict[int, str] = {}  # target index -> server_login_retry to restore

    def pause(self) -> list[RepointResult]:
        results = []
        for target in self.targets:
            if target.kind != "pgbouncer":
                continue
            error = _admin(target, "PAUSE", target.pause_timeout)
            # A PAUSE still draining keeps new queries waiting, which is what we want.
            self.paused.append(target)
            results.append(RepointResult(_label(target), "pause", error or "paused"))
        return results

    def apply(self, new_primary: NodeConfig) -> list[RepointResult]:
        params = parse(new_primary.conninfo)
        host, port = params.get("host", "localhost"), params.get("port", "5432")
        results = []
        for index, target in enumerate(self.targets):
            label = _label(target)
            if target.kind == "pgbouncer":
                assert target.ini_file is not None and target.database is not None
                text = target.ini_file.read_text()
                replace_file_keeping_owner(target.ini_file,
                                           rewrite_pgbouncer_ini(text, target.database, host, port).encode())
                error = _admin(target, "RELOAD", 10)
                if error:
                    raise RepointFailed(f"pgbouncer {label}: RELOAD failed: {error}")
                retry = _login_retry(target)
                if retry not in (None, "0") and not _admin(target, "SET server_login_retry = 0", 5):
                    self.login_retry[index] = str(retry)
                results.append(RepointResult(label, "rewrite+reload", f"{target.database} -> {host}:{port}"))
            elif target.kind == "env_file":
                assert target.path is not None
                replace_file_keeping_owner(target.path, rewrite_env_file(target.path.read_text(), new_primary).encode())
                results.append(RepointResult(label, "rewrite", f"{target.path} -> {host}:{port}"))
            else:
                assert target.command is not None
                plain, _ = split_password(new_primary.conninfo)
                env: dict[str, Any] = {k: v for k, v in os.environ.items() if k != "PGPASSWORD"}
                env.update(PGDR_PRIMARY_NAME=new_primary.name, PGDR_PRIMARY_HOST=host,
                           PGDR_PRIMARY_PORT=port, PGDR_PRIMARY_CONNINFO=plain)
                proc = process.run(target.command, env=env, timeout=120, ok_codes=range(256))
                if proc.returncode != 0:
                    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
                    raise RepointFailed(f"repoint command {label} failed: {tail[0]}")
                results.append(RepointResult(label, "command", f"exit 0 with {host}:{port}"))
        return results

    def resume(self) -> list[RepointResult]:
        results = []
        for target in self.paused:
            error = _admin(target, "RESUME", 10)
            results.append(RepointResult(_label(target), "resume", error or "resumed"))
        self.paused = []
        return results

    def clients_reach(self, timeout: float = 10) -> list[RepointResult]:
        """After resume: wait until clients through each pgbouncer reach the new primary
        (the client-visible end of the outage), then restore server_login_retry."""
        results = []
        for index, target in enumerate(self.targets):
            if target.kind != "pgbouncer":
                continue
            error = wait_client_sees_primary(target, timeout)
            if index in self.login_retry:
                _admin(target, f"SET server_login_retry = {int(float(self.login_retry.pop(index)))}", 5)
            results.append(RepointResult(_label(target), "client check", error or "clients reach the new primary"))
        return results
