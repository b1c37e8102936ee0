"""pgdr.toml as a dict, before (and without) pydantic: finding the file, reading it, the
paths made relative to the file, ${NAME} references expanded, and durations parsed.

config.py validates this dict with its models (load_config); `pgdr backup` also reads a
few keys of it by hand (backup/early.py) to start pg_basebackup while pydantic is still
being imported, and then holds that reading to the validated config. Both start from the
one dict read here, so the file is read once and in one way.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any

from pgdr.errors import ConfigError

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


def parse_duration(text: str | int | float) -> float:
    """'90s', '5m', '12h', '7d', '2w' or a number of seconds -> seconds."""
    if isinstance(text, int | float):
        return float(text)
    match = _DURATION_RE.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 5m, 12h, 7d)")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def find_config_path(explicit: Path | None) -> Path:
    if explicit is not None:
        return explicit
    env = os.environ.get("PGDR_CONFIG")
    if env:
        return Path(env)
    return Path("pgdr.toml")


def read_config_file(path: Path) -> dict[str, Any]:
    """The file's TOML with relative paths resolved and ${NAME} expanded; a ConfigError
    (one line, exit 2) when it cannot be read or is not TOML."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}",
                          hint="pass --config, set PGDR_CONFIG, or run `pgdr sandbox up`") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    resolve_paths(raw, path.resolve().parent)
    try:
        expand_all_env_refs(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc.message}", hint=exc.hint) from None
    return raw


def resolve_paths(raw: dict[str, object], base: Path) -> None:
    """Make the file's relative paths relative to the file itself."""
    def fix(section: object, key: str) -> None:
        if isinstance(section, dict) and isinstance(section.get(key), str):
            p = Path(section[key]).expanduser()
            section[key] = str(p if p.is_absolute() else (base / p))
    fix(raw.get("repository"), "path")
    fix(raw.get("pg"), "bindir")
    fix(raw.get("drill"), "dir")
    failover = raw.get("failover")
    if isinstance(failover, dict) and isinstance(failover.get("repoint"), list):
        for target in failover["repoint"]:
            fix(target, "ini_file")
            fix(target, "path")
    fix(raw.get("verify"), "scratch_dir")
    nodes = raw.get("nodes")
    if isinstance(nodes, list):
        for node in nodes:
            fix(node, "data_dir")
            fix(node, "log_file")
    redis = raw.get("redis")
    if isinstance(redis, list):
        for entry in redis:
            fix(entry, "data_dir")


_ENV_REF_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env_refs(value: str, where: str) -> str:
    """${NAME} -> the environment variable NAME; a missing one is a ConfigError naming
    where it was used and the variable, never a value. Also for conninfos given on the
    command line (restore --into '${TARGET_URL}'), so secrets stay off argv."""
    def expand(match: re.Match[str]) -> str:
        name = match.group(1)
        found = os.environ.get(name)
        if found is None:
            raise ConfigError(f"{where}: environment variable {name} is not set",
                              hint=f"export {name}=... before running pgdr")
        return found
    return _ENV_REF_RE.sub(expand, value)


def expand_all_env_refs(raw: object, where: str = "") -> None:
    """Replace ${NAME} in every *conninfo value by the environment variable NAME.

    Managed databases hand out a DATABASE_URL with the password in it; referring to
    it keeps the secret out of pgdr.toml.
    """
    items: list[tuple[str | int, object]]
    if isinstance(raw, dict):
        items = list(raw.items())
    elif isinstance(raw, list):
        items = list(enumerate(raw))
    else:
        return
    for key, value in items:
        here = f"{where}.{key}" if where else str(key)
        # redis.N.url: a Redis URL may carry a password too ("redis://:secret@host:6379/0")
        is_secret_ref = str(key).endswith("conninfo") or (where.startswith("redis.") and key == "url")
        if isinstance(raw, dict) and isinstance(value, str) and is_secret_ref:
            raw[key] = expand_env_refs(value, here)
        else:
            expand_all_env_refs(value, here)
