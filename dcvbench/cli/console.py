"""Where the command line writes: tables on stdout, progress on stderr."""

from __future__ import annotations

import pandas as pd
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

# Tables are for people: outside a terminal (pipes, logs) rich would wrap them at 80 columns.
stdout = Console(width=None if Console().is_terminal else 150)
stderr = Console(stderr=True)


class RichProgress:
    """A rich progress bar on stderr, one task per run; silent when quiet or not on a terminal."""

    def __init__(self, quiet: bool):
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=stderr,
            disable=quiet or not stderr.is_terminal,
            transient=False,
        )
        self.task = None

    def __enter__(self) -> RichProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)

    def start(self, description: str, total: int) -> None:
        self.task = self.bar.add_task(description, total=total)

    def advance(self, steps: int = 1) -> None:
        self.bar.advance(self.task, steps)


def number(value: float | None, digits: int = 4) -> str:
    """A table cell: ``digits`` significant digits, ``–`` where nothing was measured."""
    if value is None or pd.isna(value):
        return "–"
    return f"{value:.{digits}g}"


def results_table(
    title: str, columns: tuple[str, ...], left: tuple[str, ...] = ("estimator", "status")
) -> Table:
    """A summary table: names left-aligned, numbers right-aligned."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="left" if column in left else "right")
    return table
