"""Conninfo handling: building, masking and splitting out passwords.

Passwords must never reach logs, output or a child's command line (where `ps`
shows it), so every conninfo that leaves pgdr goes through `mask` or `split_password`.

The keyword=value form (what configs hold) is parsed and built here in Python, by libpq's
own rules (fe-connect.c conninfo_parse; the result equals psycopg's, which tests prove on
the installed libpq): importing psycopg costs ~50 ms, which `pgdr backup` would otherwise
pay before pg_basebackup can start. URIs and keywords not listed here go to psycopg.
"""

from __future__ import annotations

import re
from typing import Any

from pgdr.errors import ConfigError

# psycopg is imported inside the functions: mask_text is on the CLI's start-up path.

# libpq's keywords in the order of its option table (PQconninfoOptions), which is the
# order PQconninfoParse returns them in, and so the order of psycopg's conninfo_to_dict.
KEYWORDS = (
    "service", "user", "password", "passfile", "channel_binding", "connect_timeout", "dbname", "host",
    "hostaddr", "port", "client_encoding", "options", "application_name", "fallback_application_name",
    "keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count", "tcp_user_timeout",
    "sslmode", "sslnegotiation", "sslcompression", "sslcert", "sslkey", "sslcertmode", "sslpassword",
    "sslrootcert", "sslcrl", "sslcrldir", "sslsni", "requirepeer", "require_auth", "min_protocol_version",
    "max_protocol_version", "ssl_min_protocol_version", "ssl_max_protocol_version", "gssencmode",
    "krbsrvname", "gsslib", "gssdelegation", "replication", "target_session_attrs", "load_balance_hosts",
)
_ORDER = {k: i for i, k in enumerate(KEYWORDS)}
_SPACE = " \t\n\v\f\r"  # C isspace()
_URI = ("postgresql://", "postgres://")


class _NotPlain(Exception):
    """Not for the Python parser (a URI, an unlisted keyword, a syntax error): libpq decides."""


def _parse_plain(conninfo: str) -> dict[str, str]:
    """conninfo_parse of libpq, for the keyword=value form."""
    if conninfo.lstrip(_SPACE).startswith(_URI):
        raise _NotPlain
    found: dict[str, str] = {}
    i, n = 0, len(conninfo)
    while True:
        while i < n and conninfo[i] in _SPACE:
            i += 1
        if i >= n:
            break
        start = i
        while i < n and conninfo[i] != "=" and conninfo[i] not in _SPACE:
            i += 1
        name = conninfo[start:i]
        while i < n and conninfo[i] in _SPACE:
            i += 1
        if i >= n or conninfo[i] != "=" or name not in _ORDER:
            raise _NotPlain  # psycopg says what is wrong, in libpq's words
        i += 1
        while i < n and conninfo[i] in _SPACE:
            i += 1
        value: list[str] = []
        if i < n and conninfo[i] == "'":
            i += 1
            while True:
                if i >= n:
                    raise _NotPlain  # unterminated quoted string
                ch = conninfo[i]
                if ch == "\\":
                    i += 1
                    if i < n:
                        value.append(conninfo[i])
                        i += 1
                    continue
                i += 1
                if ch == "'":
                    break
                value.append(ch)
        else:
            while i < n and conninfo[i] not in _SPACE:
                if conninfo[i] == "\\":
                    i += 1
                    if i < n:
                        value.append(conninfo[i])
                        i += 1
                else:
                    value.append(conninfo[i])
                    i += 1
            i += 1  # the space that ended it
        found[name] = "".join(value)
    return {k: found[k] for k in sorted(found, key=_ORDER.__getitem__)}


_NEEDS_QUOTES = re.compile(r"\s")
_ESCAPE = re.compile(r"([\\'])")


def _escape(value: str) -> str:
    """A value as libpq reads it back (psycopg's _param_escape)."""
    if not value:
        return "''"
    value = _ESCAPE.sub(r"\\\1", value)
    return f"'{value}'" if _NEEDS_QUOTES.search(value) else value


def make_conninfo(**params: Any) -> str:
    """keyword=value pairs (None dropped), in the given order, as psycopg.make_conninfo."""
    pairs = {k: v for k, v in params.items() if v is not None}
    if not all(k in _ORDER for k in pairs):
        from psycopg.conninfo import make_conninfo as make

        return make(**params)  # raises libpq's error for an unknown keyword
    return " ".join(f"{k}={_escape(str(v))}" for k, v in pairs.items())


def parse(conninfo: str) -> dict[str, str]:
    try:
        return _parse_plain(conninfo)
    except _NotPlain:
        pass
    from psycopg.conninfo import conninfo_to_dict

    try:
        return {k: str(v) for k, v in conninfo_to_dict(conninfo).items()}
    except Exception as exc:  # psycopg raises ProgrammingError with libpq's message
        raise ConfigError(f"invalid conninfo: {mask_text(str(exc))}") from None


def mask(conninfo: str) -> str:
    """The conninfo as it may be shown: password replaced by '********'."""
    params = parse(conninfo)
    if "password" in params:
        params["password"] = "********"
    return make_conninfo(**params)


def mask_text(text: str) -> str:
    """Best effort for free text (error messages) that may quote a conninfo."""
    import re

    text = re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1********", text)
    # postgresql+psycopg://: SQLAlchemy's URLs, which migration tools print
    text = re.sub(r"(postgres(?:ql)?(?:\+\w+)?://[^:/@\s]+:)[^@\s]+@", r"\1********@", text)
    # redis://:secret@host or redis://user:secret@host (the user may be empty)
    return re.sub(r"(rediss?://[^:/@\s]*:)[^@\s]+@", r"\1********@", text)


def split_password(conninfo: str) -> tuple[str, str | None]:
    """(conninfo without password, password) so the password can go via PGPASSWORD."""
    params = parse(conninfo)
    password = params.pop("password", None)
    return make_conninfo(**params), password


def with_params(conninfo: str, **overrides: str | int | None) -> str:
    params: dict[str, object] = dict(parse(conninfo))
    for key, value in overrides.items():
        if value is None:
            params.pop(key, None)
        else:
            params[key] = value
    return make_conninfo(**params)
