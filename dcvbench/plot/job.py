"""``dcvbench plot`` as a whole: read every run below a directory, draw what its data allows,
write the figures, the summary and (on request) the HTML report."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import pandas as pd
from matplotlib.figure import Figure

from dcvbench.estimators import REFERENCE_ESTIMATOR
from dcvbench.plot.aggregate import curve_frame, summary_frame, temperature_frame, time_frame, variance_frame
from dcvbench.plot.draw import (
    QUALITY_FIGURES,
    draw_cost_variance,
    draw_curves,
    draw_quality,
    draw_temperature,
    draw_time,
    draw_variance_ratio,
    metrics_of,
)
from dcvbench.plot.report import html_report
from dcvbench.plot.runs import BASELINE, RUNS, Results, Skipped, combine, load_results
from dcvbench.plot.style import STYLE
from dcvbench.plot.summary import summary_markdown, summary_tables
from dcvbench.results import prepare_output_root
from dcvbench.runtime import ConfigError

FORMATS = ("png", "pdf", "svg")
REPORT = "report.html"


@dataclass(frozen=True)
class FigureFile:
    """A figure written: the group it belongs to, what it shows, where it is."""

    group: str
    label: str
    path: Path


@dataclass
class PlotReport:
    """What :func:`plot_results` did: figures and reports written, the summary, what it skipped."""

    out_dir: Path
    figures: list[FigureFile]
    summary: pd.DataFrame
    variance: pd.DataFrame
    temperature: pd.DataFrame
    skipped: list[Skipped]
    warnings: list[str]
    html: Path | None = None  # report.html, when asked for


class _Figures:
    """Saves each figure to a file, and keeps its PNG for the HTML report when one is wanted."""

    def __init__(self, out: Path, fmt: str, keep_png: bool):
        self.out, self.fmt, self.keep_png = out, fmt, keep_png
        self.files: list[FigureFile] = []
        self.png: dict[str, list[tuple[str, bytes]]] = {}

    def save(self, fig: Figure, group: str, name: str, label: str) -> None:
        path = self.out / f"{group}-{name}.{self.fmt}"
        fig.savefig(path)
        self.files.append(FigureFile(group, label, path))
        if self.keep_png:
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png")
            self.png.setdefault(group, []).append((label, buffer.getvalue()))


def plot_results(
    root: Path | str,
    out_dir: Path | str | None = None,
    fmt: str = "png",
    baseline: Path | str | None = None,
    html: bool = False,
) -> PlotReport:
    """Read every run below ``root``, draw every figure its data allows, write the summary.

    Figures go to ``out_dir`` (default ``root/plots``), named ``<group>-<metric>.<fmt>``;
    ``summary.md`` (linking them) and ``summary.csv`` (and ``variance-summary.csv`` for variance
    studies, ``temperature-summary.csv`` and ``<group>-temperature-study`` for a relaxation run at
    several temperatures) beside them; with ``html``, ``report.html`` too: the tables and every
    figure in one self-contained file. Runs under ``baseline`` are drawn faded in the same styles,
    labelled "(baseline)", in the groups that ``root`` has. Nothing is written if ``root`` holds no
    readable run.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    root = Path(root)
    results = load_results(root, RUNS)
    if baseline is not None:
        results = combine(results, load_results(baseline, BASELINE))
    out = Path(out_dir) if out_dir is not None else root / "plots"
    _check_output(out, results)
    summary = summary_frame(results)
    variance = variance_frame(results)
    temperature = temperature_frame(results)
    prepare_output_root(out)  # a read-only or unwritable --out: one line, before any figure is drawn
    figures = _Figures(out, fmt, keep_png=html)
    with matplotlib.rc_context(STYLE):
        _draw_training(results, figures)
        _draw_variance(variance, figures)
        _draw_temperature(temperature, figures)
    summary.to_csv(out / "summary.csv", index=False)
    if len(temperature):
        temperature.to_csv(out / "temperature-summary.csv", index=False)
    if len(variance):
        variance.to_csv(out / "variance-summary.csv", index=False)
    tables = summary_tables(summary, variance, temperature)
    links: dict[str, list[tuple[str, Path]]] = {}
    for file in figures.files:
        links.setdefault(file.group, []).append((file.label, file.path))
    (out / "summary.md").write_text(summary_markdown(tables, links))
    report = out / REPORT if html else None
    if report is not None:
        report.write_text(html_report(tables, figures.png, str(root)))
    return PlotReport(
        out, figures.files, summary, variance, temperature, results.skipped, results.warnings, report
    )


def _check_output(out: Path, results: Results) -> None:
    """Refuse an output directory inside a run directory: figures must never mix with inputs."""
    resolved = out.resolve()
    studies = results.variance["path"].tolist() if "path" in results.variance else []
    for path in [*results.runs["path"].tolist(), *studies]:
        run = Path(path).resolve()
        if resolved == run or run in resolved.parents:
            raise ConfigError(f"--out {out} is inside the run directory {path}; choose another directory")


def _optimum(runs: pd.DataFrame) -> float | None:
    """The group's best achievable objective, if its runs agree on one."""
    values = runs["optimum"].dropna().unique()
    return float(values[0]) if len(values) == 1 else None


def _draw_training(results: Results, figures: _Figures) -> None:
    runs = results.runs
    if runs.empty:
        return
    main = runs[runs["source"] == RUNS]
    metrics = metrics_of(results.trace.columns)
    curves = {metric.column: curve_frame(results, metric.column) for metric in metrics}
    timing = time_frame(results)
    for group, rows in sorted(main.groupby("group", sort=False), key=lambda item: item[0]):
        title = rows["title"].iloc[0]
        for metric in metrics:
            frame = curves[metric.column]
            frame = frame[frame["group"] == group]
            if not (frame["source"] == RUNS).any():
                continue  # only figures for which these runs hold data
            optimum = _optimum(rows) if metric.column == "objective" else None
            fig = draw_curves(frame, metric, title, optimum)
            figures.save(fig, group, metric.column, metric.label)
        frame = timing[timing["group"] == group]
        if (frame["source"] == RUNS).any():
            figures.save(draw_time(frame, title), group, "sec_per_step", "seconds per step")


def _draw_temperature(temperature: pd.DataFrame, figures: _Figures) -> None:
    for group, frame in temperature.groupby("group", sort=True):
        if (frame["source"] == RUNS).any():
            fig = draw_temperature(frame[frame["source"] == RUNS], frame["title"].iloc[0])
            figures.save(fig, group, "temperature-study", "final test bound against temperature")


def _draw_variance(variance: pd.DataFrame, figures: _Figures) -> None:
    if variance.empty:
        return
    for group, frame in variance.groupby("group", sort=True):
        if not (frame["source"] == RUNS).any():
            continue
        title = frame["title"].iloc[0]
        compared = frame[frame["estimator"] != REFERENCE_ESTIMATOR]
        if compared["variance_ratio_mean"].notna().any():
            figures.save(
                draw_variance_ratio(frame, title),
                group,
                "ratio",
                f"variance relative to {REFERENCE_ESTIMATOR}",
            )
        figures.save(draw_cost_variance(frame, title), group, "cost", "variance × evaluations")
        measured = frame[frame["source"] == RUNS]
        for metric in QUALITY_FIGURES:
            if measured[f"{metric.column}_mean"].notna().any():
                fig = draw_quality(frame, metric, title)
                figures.save(fig, group, metric.column, f"{metric.label} against f-evaluations")
