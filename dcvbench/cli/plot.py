"""``dcvbench plot``: figures and a summary of the runs below a directory."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.table import Table

from dcvbench.cli.app import app, reports_user_errors
from dcvbench.cli.console import stdout


@app.command()
@reports_user_errors
def plot(
    directory: Annotated[
        str, typer.Argument(metavar="DIR", help="Directory of runs, searched at any depth.")
    ],
    out: Annotated[
        str | None, typer.Option(help="Where figures and summary go (default: DIR/plots).")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="Figure format: png, pdf or svg.")] = "png",
    baseline: Annotated[
        str | None, typer.Option(help="Directory of reference runs, overlaid dashed as '(baseline)'.")
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No table; print the files written, one a line.")
    ] = False,
) -> None:
    """Figures (variance, objective, α, time; variance studies) and a summary table of runs in DIR."""
    from dcvbench.plot import plot_results, summary_tables

    report = plot_results(directory, out, fmt=fmt, baseline=baseline)
    for skipped in report.skipped:
        print(f"dcvbench: {skipped}", file=sys.stderr)
    for warning in report.warnings:
        print(f"dcvbench: warning: {warning}", file=sys.stderr)
    written = [*report.figures, report.out_dir / "summary.md", report.out_dir / "summary.csv"]
    if quiet:
        for path in written:
            print(path)
        return
    for title, frame in summary_tables(report.summary, report.variance, report.temperature):
        table = Table(title=f"{title} (mean ± s.e. over seeds)")
        for column in frame.columns:
            left = column in ("estimator", "status")
            table.add_column(column, justify="left" if left else "right", no_wrap=not left)
        for row in frame.itertuples(index=False):
            table.add_row(*map(str, row))
        stdout.print(table)
    stdout.print(f"{len(report.figures)} figures in {report.out_dir}/:")
    for path in report.figures:
        stdout.print(f"  {path.name}")
