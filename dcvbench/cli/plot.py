"""``dcvbench plot``: figures and a summary of the runs below a directory."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.table import Table

from dcvbench.cli.app import app, reports_user_errors
from dcvbench.cli.console import stdout
from dcvbench.cli.options import choices

FORMATS = ("png", "pdf", "svg")  # dcvbench.plot.FORMATS, without importing matplotlib for --help


@app.command()
@reports_user_errors
def plot(
    directory: Annotated[
        str, typer.Argument(metavar="DIR", help="Directory of runs, searched at any depth.")
    ],
    out: Annotated[
        str | None, typer.Option(metavar="DIR", help="Where figures and summary go (default: DIR/plots).")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", metavar=choices(FORMATS), help="Figure format.")] = "png",
    baseline: Annotated[
        str | None,
        typer.Option(metavar="DIR", help="Directory of reference runs, overlaid faded as '(baseline)'."),
    ] = None,
    html: Annotated[
        bool,
        typer.Option(
            "--html", help="Also write report.html: tables and figures in one self-contained file to send."
        ),
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No table; print the files written, one a line.")
    ] = False,
) -> None:
    """Figures (variance, objective, α, time; variance studies) and a summary table of runs in DIR."""
    from dcvbench.plot import plot_results, summary_tables

    report = plot_results(directory, out, fmt=fmt, baseline=baseline, html=html)
    for skipped in report.skipped:
        print(f"dcvbench: {skipped}", file=sys.stderr)
    for warning in report.warnings:
        print(f"dcvbench: warning: {warning}", file=sys.stderr)
    written = [figure.path for figure in report.figures]
    written += [report.out_dir / "summary.md", report.out_dir / "summary.csv"]
    written += [report.html] if report.html is not None else []
    if quiet:
        for path in written:
            print(path)
        return
    for table in summary_tables(report.summary, report.variance, report.temperature):
        rich_table = Table(title=f"{table.title} ({table.note})" if table.note else table.title)
        for column in table.frame.columns:
            left = column in ("estimator", "status")
            rich_table.add_column(column, justify="left" if left else "right", no_wrap=not left)
        for row in table.frame.itertuples(index=False):
            rich_table.add_row(*map(str, row))
        stdout.print(rich_table)
    stdout.print(f"{len(report.figures)} figures in {report.out_dir}/:")
    for figure in report.figures:
        stdout.print(f"  {figure.path.name}")
    if report.html is not None:
        stdout.print(f"report: {report.html}")
