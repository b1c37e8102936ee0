"""Conninfo handling: building, masking and splitting out passwords.

Passwords must never reach logs, output or a child's command line (where `ps`
shows it), so every conninfo that leaves pgdr goes through `mask` or `split_password`.
"""

from __future__ import annotations

from typing import Any

from pgdr.errors import ConfigError

# psycopg is imported inside the functions: mask_text is on the CLI's start-up path.


def make_conninfo(**params: Any) -> str:
    from psycopg.conninfo import make_conninfo as make

    return make(**params)


def parse(conninfo: str) -> dict[str, str]:
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
