"""Which standby must hold every acknowledged commit, from synchronous_standby_names.

A commit acknowledged under `ANY k (s1..sn)` was flushed by at least k of the n
listed standbys. Any n−k+1 of them intersect every such k-set, so once n−k+1 listed
standbys are reached, the most advanced of them holds every acknowledged commit
(Patroni's quorum rule, patroni/quorum.py). Under `FIRST k (...)` the k synchronous
standbys are the first k *connected* ones in list order, and which those were at the
crash depends on who was connected then — a standby cut off for a moment hands its
place to the next one. pgdr cannot see that history once the primary is dead, so it
applies the same intersection rule (n−k+1 reached), which is safe for any k-set, and
picks the most advanced of them. A plain list `a, b` is `FIRST 1 (a, b)`; `k (...)` is
the pre-9.6 spelling of `FIRST k`; `*` matches every standby.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SPEC_RE = re.compile(r"^\s*(?:(ANY|FIRST)\s+)?(\d+)\s*\((.*)\)\s*$", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class SyncSpec:
    """synchronous_standby_names, parsed. method is 'any', 'first' or 'off' (asynchronous)."""

    method: str
    num: int
    names: tuple[str, ...]

    @property
    def synchronous(self) -> bool:
        return self.method != "off" and self.num > 0 and bool(self.names)

    def listed(self, standbys: list[str]) -> list[str]:
        """The standbys (by name) this spec can wait for; `*` means all of them."""
        if "*" in self.names:
            return list(standbys)
        return [n for n in self.names if n in standbys] + [n for n in self.names if n not in standbys]

    def render(self) -> str:
        if not self.synchronous:
            return ""
        names = ", ".join(_quote(n) for n in self.names)
        return f"{self.method.upper()} {self.num} ({names})"


def _quote(name: str) -> str:
    return name if name == "*" or re.fullmatch(r"[a-z_][a-z0-9_]*", name) else '"' + name.replace('"', '""') + '"'


def _split_names(body: str) -> tuple[str, ...]:
    names, current, quoted = [], "", False
    for ch in body:
        if ch == '"':
            quoted = not quoted
            continue
        if ch == "," and not quoted:
            names.append(current.strip())
            current = ""
            continue
        current += ch
    names.append(current.strip())
    return tuple(n for n in names if n)


def parse_sync(setting: str | None) -> SyncSpec:
    """Parse synchronous_standby_names the way PostgreSQL does (syncrep_gram.y)."""
    if setting is None or not setting.strip():
        return SyncSpec("off", 0, ())
    match = _SPEC_RE.match(setting)
    if match:
        method = (match.group(1) or "FIRST").lower()
        return SyncSpec(method, int(match.group(2)), _split_names(match.group(3)))
    return SyncSpec("first", 1, _split_names(setting))


@dataclass(frozen=True)
class QuorumVerdict:
    """Who is safe to promote: `safe` lists the reached standbys; `need` how many must be reached."""

    need: int
    listed: tuple[str, ...]
    reached: tuple[str, ...]

    @property
    def proven(self) -> bool:
        return len(self.reached) >= self.need

    def explain(self) -> str:
        return (f"{len(self.reached)} of the {len(self.listed)} listed standbys reached "
                f"({', '.join(self.reached) or 'none'}); {self.need} are needed to know which holds "
                "every acknowledged commit")


def quorum(spec: SyncSpec, standbys: list[str], reached: list[str]) -> QuorumVerdict:
    """How many of the listed standbys must be reached (n−k+1) and which were."""
    listed = spec.listed(standbys)
    k = min(spec.num, len(listed)) if listed else spec.num
    need = max(1, len(listed) - k + 1)
    return QuorumVerdict(need, tuple(listed), tuple(n for n in listed if n in reached))
