"""Rendering: Rich tables for people, JSON for machines, one line for errors."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from pgdr.checks import Check
from pgdr.pg.conninfo import mask_text

# Off a terminal Rich would wrap at 80 columns; logs and CI read better unwrapped.
_WIDTH = None if sys.stdout.isatty() else 200
console = Console(width=_WIDTH)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)

STATUS_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red"}


def print_json(data: Any) -> None:
    sys.stdout.write(mask_text(json.dumps(data, indent=2, default=str)) + "\n")


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    t = Table(title=title, title_justify="left", header_style="bold")
    for col in columns:
        t.add_column(col)
    for row in rows:
        t.add_row(*["" if v is None else mask_text(str(v)) for v in row])
    console.print(t)


def checks_table(title: str, checks: Sequence[Check]) -> None:
    t = Table(title=title, title_justify="left", header_style="bold")
    for col in ("check", "status", "detail"):
        t.add_column(col)
    for c in checks:
        style = STATUS_STYLE[c.status]
        detail = c.summary + (f"\n[dim]→ {c.hint}[/dim]" if c.hint and c.status != "ok" else "")
        t.add_row(c.name, f"[{style}]{c.status}[/{style}]", mask_text(detail))
    console.print(t)


def error_line(message: str, hint: str | None = None) -> None:
    text = mask_text(message) + (f" — {mask_text(hint)}" if hint else "")
    err_console.print(f"[bold red]pgdr:[/bold red] {text}", highlight=False, soft_wrap=True)


def human_bytes(n: int | float | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"
