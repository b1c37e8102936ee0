"""Rendering: Rich tables for people, JSON for machines, one line for errors."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from pgdr.checks import Check
from pgdr.pg.conninfo import mask_text

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

_consoles: dict[str, Console] = {}


def __getattr__(name: str) -> Any:
    """`console` and `err_console` are made on first use: importing Rich costs start-up
    time that `pgdr --help` and quiet commands should not pay (PEP 562)."""
    if name in ("console", "err_console"):
        if name not in _consoles:
            from rich.console import Console

            stream = sys.stderr if name == "err_console" else sys.stdout
            # Off a terminal Rich would wrap at 80 columns; logs and CI read better unwrapped.
            _consoles[name] = Console(stderr=name == "err_console", width=None if stream.isatty() else 200)
        return _consoles[name]
    raise AttributeError(name)


def _table(title: str | None) -> Table:
    from rich.table import Table

    return Table(title=title, title_justify="left", header_style="bold")

STATUS_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red"}


def print_json(data: Any) -> None:
    sys.stdout.write(mask_text(json.dumps(data, indent=2, default=str)) + "\n")


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    t = _table(title)
    for col in columns:
        t.add_column(col)
    from rich.text import Text

    for row in rows:  # Text: a value like a table named '[x]' is shown, not read as markup
        t.add_row(*[v if isinstance(v, Text) else Text("" if v is None else mask_text(str(v))) for v in row])
    __getattr__("console").print(t)


def styled(text: str, style: str) -> Any:
    """A table cell shown in a style (e.g. pass in green): the one way to colour a cell,
    since plain strings are never read as markup."""
    from rich.text import Text

    return Text(text, style=style)


@contextmanager
def progress_bar(what: str, enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on stderr for long scans; None (no bar) off a terminal."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress(f"[bold]{what}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=__getattr__("err_console"), transient=True) as bar:
        task = bar.add_task(what, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def checks_table(title: str, checks: Sequence[Check]) -> None:
    t = _table(title)
    for col in ("check", "status", "detail"):
        t.add_column(col)
    for c in checks:
        style = STATUS_STYLE[c.status]
        from rich.markup import escape

        detail = escape(mask_text(c.summary)) + (f"\n[dim]→ {escape(mask_text(c.hint))}[/dim]"
                                                 if c.hint and c.status != "ok" else "")
        t.add_row(escape(c.name), f"[{style}]{c.status}[/{style}]", detail)
    __getattr__("console").print(t)


def error_line(message: str, hint: str | None = None) -> None:
    from rich.markup import escape

    # escaped: a message naming "[[redis]]" or "[pg] bindir" is text, not Rich markup
    text = escape(mask_text(message) + (f" — {mask_text(hint)}" if hint else ""))
    __getattr__("err_console").print(f"[bold red]pgdr:[/bold red] {text}", highlight=False, soft_wrap=True)


def human_bytes(n: int | float | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"
