"""What `pgdr backup` reads from pgdr.toml by hand, to start pg_basebackup before pydantic.

pydantic and the config models cost ~90 ms to import and validate, about a third of a
small backup's start; pg_basebackup needs a handful of keys. `read_early` takes exactly
those from the file's dict (config_file.read_config_file), strictly: anything it does not
expect (a wrong type, a second primary, an object-store repository, mode = "logical")
makes it answer None, and the backup validates first, as every other command does, so
the error reads as it always has. The full config is validated beside the copy; the copy
is published only if `CopyPlan.of(validated config)` equals this reading, field by field
(otherwise the copy ends and the backup exits 2). The models stay the one source of
truth: EARLY_DEFAULTS names every key read here with the default it assumes, and
tests/test_backup_early.py holds each one to the model's own default and type.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pgdr.config_file import parse_duration
from pgdr.errors import ConfigError

if TYPE_CHECKING:
    from pgdr.config import Config

# (section, key) -> the default the model gives when the key is absent.
EARLY_DEFAULTS: dict[tuple[str, str], Any] = {
    ("cluster", "mode"): "auto",
    ("repository", "url"): None,
    ("repository", "encryption_key_env"): None,
    ("backup", "compression"): "server-zstd:1",
    ("backup", "checkpoint"): "fast",
    ("pg", "bindir"): None,
    ("pg", "os_user"): "postgres",
    ("pg", "stall_timeout"): 120.0,
    ("nodes", "role"): "standby",
}
# Required keys read here (no default): [repository] path, and name and conninfo of the
# [[nodes]] entry whose role is "primary".
NODE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")  # NodeConfig.name's pattern (the test compares them)


@dataclass(frozen=True)
class CopyPlan:
    """Everything the copy depends on before the checks answer: pg_basebackup's argv and
    environment, where it writes, who runs it, and the mode's early refusal."""

    mode: str
    primary: str
    conninfo: str
    repository: Path
    store: bool          # an object store or encryption: never read early
    bindir: Path | None
    os_user: str
    stall_timeout: float
    compression: str
    checkpoint: str

    @classmethod
    def of(cls, config: Config) -> CopyPlan:
        """The same reading, from the validated config."""
        node = config.configured_primary
        repo = config.repository
        return cls(config.cluster.mode, node.name, node.conninfo, repo.path,
                   repo.url is not None or repo.encryption_key_env is not None,
                   config.pg.bindir, config.pg.os_user, config.pg.stall_timeout,
                   config.backup.compression, config.backup.checkpoint)

    def hold_to(self, config: Config, path: Path) -> None:
        """ConfigError (exit 2) unless the validated config says what was read early."""
        validated = CopyPlan.of(config)
        differ = [f.name for f in fields(self) if getattr(self, f.name) != getattr(validated, f.name)]
        if differ:
            raise ConfigError(f"{path}: the backup started from a reading of {', '.join(differ)} that "
                              "the validated config does not confirm; nothing was published",
                              hint="report this as a bug in pgdr (backup/early.py); "
                                   "`pgdr backup --incremental` and the other commands are not affected")


def _section(raw: dict[str, Any], name: str) -> dict[str, Any] | None:
    value = raw.get(name, {})
    return value if isinstance(value, dict) else None


def _value(raw: dict[str, Any], section: str, key: str) -> Any:
    found = _section(raw, section)
    return EARLY_DEFAULTS[(section, key)] if found is None else found.get(key, EARLY_DEFAULTS[(section, key)])


def read_early(raw: dict[str, Any]) -> CopyPlan | None:
    """The plan from the file's dict, or None when anything is not as expected."""
    if any(_section(raw, s) is None for s in ("cluster", "repository", "backup", "pg")):
        return None
    mode = _value(raw, "cluster", "mode")
    if mode not in ("auto", "physical"):
        return None  # "logical" refuses before anything starts; anything else is invalid
    repo = _section(raw, "repository")
    if not repo or not isinstance(repo.get("path"), str) or \
            _value(raw, "repository", "url") is not None or _value(raw, "repository", "encryption_key_env") is not None:
        return None
    nodes = raw.get("nodes")
    if not isinstance(nodes, list) or not all(isinstance(n, dict) for n in nodes):
        return None
    primaries = [n for n in nodes if n.get("role", EARLY_DEFAULTS[("nodes", "role")]) == "primary"]
    if len(primaries) != 1:
        return None
    name, conninfo = primaries[0].get("name"), primaries[0].get("conninfo")
    if not isinstance(name, str) or not NODE_NAME.match(name) or not isinstance(conninfo, str):
        return None
    from pgdr.pg.conninfo import parse

    try:
        parse(conninfo)
    except ConfigError:
        return None
    compression, checkpoint = _value(raw, "backup", "compression"), _value(raw, "backup", "checkpoint")
    bindir, os_user = _value(raw, "pg", "bindir"), _value(raw, "pg", "os_user")
    stall = _value(raw, "pg", "stall_timeout")
    if not isinstance(compression, str) or checkpoint not in ("fast", "spread") \
            or not (bindir is None or isinstance(bindir, str)) or not isinstance(os_user, str) \
            or isinstance(stall, bool) or not isinstance(stall, int | float | str):
        return None
    try:
        stall_timeout = parse_duration(stall)
    except ValueError:
        return None
    if not stall_timeout > 0:
        return None
    return CopyPlan(mode, name, conninfo, Path(repo["path"]), False, Path(bindir) if bindir is not None else None,
                    os_user, stall_timeout, compression, checkpoint)
