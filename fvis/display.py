"""Printing for the command line: lines as they are, and tables whose cells are never cut short
(a box table where the terminal is wide enough, tab-separated lines otherwise)."""

from __future__ import annotations

from collections.abc import Collection

import typer
from rich.cells import cell_len
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)  # progress bars

# In a table, a column that may wrap (a description) keeps at least this many characters.
WRAP_MIN = 12


def say(line: str) -> None:
    """One line on stdout as it is (a path, a name, tabs): never wrapped, cut or restyled."""
    typer.echo(line)


def note(line: str) -> None:
    """One line on stderr as it is (a summary, a warning, an error)."""
    typer.echo(line, err=True)


def show(table: Table, wrap: Collection[int] = (), titled: bool = True) -> None:
    """Print a table with every word whole: names, shapes, paths and numbers are never cut short.

    In a terminal wide enough for it, rich's table: the columns `wrap` (descriptions) wrap
    between words, every other column stays on one line. Otherwise (a pipe, a file, a terminal
    too narrow for the longest names): plain lines for grep and cut, a `# title` line (when
    `titled`) and then one line per row, its cells separated by tabs.
    """
    cells = [[_plain(cell) for cell in column.cells] for column in table.columns]
    if out.is_terminal and _fit(table, cells, wrap, out.width):
        out.print(table)
        return
    if titled and table.title:
        say(f"# {_plain(table.title)}")
    for row in zip(*cells, strict=True):
        say("\t".join(cell.replace("\t", " ").replace("\n", " ") for cell in row))


def _fit(table: Table, cells: list[list[str]], wrap: Collection[int], width: int) -> bool:
    """Size the table's columns for `width` with no word cut; False when that cannot be done.

    Rich would rather cut a cell with "…" than overflow; here a column outside `wrap` is as wide
    as its longest cell, and one in `wrap` at least as wide as its longest word (and WRAP_MIN);
    the wrapped columns share what is left in proportion to what they lack.
    """
    columns = table.columns
    texts = [[_plain(column.header), *cells[index]] for index, column in enumerate(columns)]
    longest = [max(map(cell_len, text)) for text in texts]
    floors = {
        index: max(
            [min(longest[index], WRAP_MIN)] + [cell_len(w) for t in texts[index] for w in t.split()]
        )
        for index in wrap
    }
    room = width - (len(columns) + 1) - 2 * len(columns)  # less the borders and the padding
    room -= sum(size for index, size in enumerate(longest) if index not in floors)
    spare = room - sum(floors.values())
    if spare < 0:
        return False
    lacking = sum(longest[index] - floor for index, floor in floors.items())
    for index, column in enumerate(columns):
        if index in floors:
            short = longest[index] - floors[index]
            column.width = floors[index] + (short if lacking <= spare else spare * short // lacking)
            column.overflow = "fold"  # never "…", should a word still not fit
        else:
            column.no_wrap = True
    return True


def _plain(cell: RenderableType | None) -> str:
    """A table cell's text without styles."""
    return cell.plain if isinstance(cell, Text) else str(cell or "")
