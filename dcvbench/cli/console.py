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

from dcvbench.estimators import REFERENCE_ESTIMATOR, estimator_order

# The time column of every table: each run's median seconds per step, as plot and summary.md give it.
STEP_TIME = "s/step (median)"

# Tables are for people: outside a terminal (pipes, logs) rich would wrap them at 80 columns.
stdout = Console(width=None if Console().is_terminal else 150)
stderr = Console(stderr=True)


class RichProgress:
    """Rich progress bars on stderr: one per run ("run 2 of 4"), and one for the whole job with its
    total time remaining when it has several runs; silent when quiet or not on a terminal."""

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
        self.overall = None
        self.runs = self.started = 0

    def __enter__(self) -> RichProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)

    def plan(self, runs: int, total: int) -> None:
        self.runs = runs
        if runs > 1:
            self.overall = self.bar.add_task(f"all {runs} runs", total=total)

    def start(self, description: str, total: int, done: int = 0) -> None:
        self.started += 1
        if self.runs > 1:
            description = f"run {self.started} of {self.runs}: {description}"
        self.task = self.bar.add_task(description, total=total, completed=done)

    def advance(self, steps: int = 1) -> None:
        self.bar.advance(self.task, steps)
        if self.overall is not None:
            self.bar.advance(self.overall, steps)


def report_model_runs(title: str, summaries: list, quiet: bool, test_column: str, test_sign: float) -> None:
    """The end of a model job (vae, predict): run directories when quiet, else one row per run.

    ``test_column`` names the held-out column, ``test_bound`` times ``test_sign`` (−1: an NLL)."""
    if quiet:
        for summary in summaries:
            print(summary.path)
        return
    columns = ("estimator", "K", "seed", "status", "train bound", test_column, "grad var (resample)")
    table = results_table(title, (*columns, "grad var (ema)", "α", STEP_TIME))
    for s in in_registry_order(summaries):
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


def report_toy_runs(title: str, summaries: list, quiet: bool) -> None:
    """The end of a toy job: run directories when quiet, else one row per run, with each run's
    final variance over that of ``rloo`` at the same seed and K."""
    if quiet:
        for summary in summaries:
            print(summary.path)
        return
    reference = {
        (s.seed, s.k): s.metrics.get("grad_var") for s in summaries if s.estimator == REFERENCE_ESTIMATOR
    }
    columns = ("estimator", "seed", "status", "final E f", "final grad var", "vs rloo", STEP_TIME)
    table = results_table(title, columns)
    for s in in_registry_order(summaries):
        variance = s.metrics.get("grad_var")
        base = reference.get((s.seed, s.k))
        ratio = variance / base if variance is not None and base else None
        table.add_row(
            s.estimator,
            str(s.seed),
            s.status,
            number(s.metrics.get("objective"), 7),
            number(variance, 3),
            number(ratio, 3),
            number(s.metrics.get("sec_per_step"), 2),
        )
    stdout.print(table)
    stdout.print(f"runs written under {summaries[0].path.parent}/")


def in_registry_order(summaries: list) -> list:
    """Runs in the order ``plot`` and ``summary.md`` list them: the registry's estimators, then seeds."""
    return sorted(summaries, key=lambda s: (estimator_order(s.estimator), s.k, s.seed))


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
