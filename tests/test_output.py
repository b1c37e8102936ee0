"""Rendering: what a person sees in a table is the value, never markup."""

from __future__ import annotations


def test_table_cells_show_text_as_is_and_styled_cells_without_markup() -> None:
    import io

    from rich.console import Console

    from pgdr.cli import output

    buffer = io.StringIO()
    output._consoles["console"] = Console(file=buffer, width=200)
    try:
        output.table("t", ["name", "result"], [["[x]", output.styled("pass", "green")]])
    finally:
        del output._consoles["console"]
    text = buffer.getvalue()
    assert "[x]" in text and "pass" in text and "[green]" not in text
