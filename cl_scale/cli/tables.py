"""Tables the CLI prints: rich on a terminal, plain aligned text when piped or redirected (a rich
table squeezed into a non-TTY's 80 columns wraps into something unreadable)."""

from __future__ import annotations

import sys


def show(title: str, columns: list[str], rows: list[list[str]], *, bold_last: bool = False) -> None:
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for i, column in enumerate(columns):
            table.add_column(column, justify="left" if i == 0 else "right", no_wrap=True)
        for n, row in enumerate(rows):
            table.add_row(*row, style="bold" if bold_last and n == len(rows) - 1 else None)
        Console().print(table)
        return
    print(plain(title, columns, rows))


def plain(title: str, columns: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)), *(len(str(r[i])) for r in rows)) if rows else len(str(c)) for i, c in enumerate(columns)]
    line = lambda cells: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return "\n".join([title, line(columns), *(line(r) for r in rows)])
