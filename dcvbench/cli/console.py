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


def report_model_runs(title: str, summaries: list, quiet: bool, test_column: str, test_sign: float) -> None:
    """The end of a model job (vae, predict): run directories when quiet, else one row per run.

    ``test_column`` names the held-out column, ``test_bound`` times ``test_sign`` (−1: an NLL)."""
    if quiet:
        for summary in summaries:
            print(summary.path)
        return
    columns = ("estimator", "K", "seed", "status", "train bound", test_column, "grad var (resample)")
    table = results_table(title, (*columns, "grad var (ema)", "α", "s/step"))
    for s in summaries:
        m = s.metrics
        bound = m.get("test_bound")
        table.add_row(
            s.estimator,
            str(s.k),
            str(s.seed),
            s.status,
            number(m.get("train_elbo"), 5),
            number(None if bound is None else test_sign * bound, 5),
            number(m.get("grad_var_resample"), 3),
            number(m.get("grad_var_ema"), 3),
            number(m.get("alpha"), 3),
            number(m.get("sec_per_step"), 2),
        )
    stdout.print(table)
    stdout.print(f"runs written under {summaries[0].path.parent}/")


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
