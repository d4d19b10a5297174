"""Tables on the terminal, for the ``flowscope`` commands that list things and those plugins add."""

from __future__ import annotations

import click


def print_table(rows: list[tuple[str, ...]]) -> None:
    """Left-aligned columns separated by two spaces; the first row is the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
