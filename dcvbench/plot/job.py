"""``dcvbench plot`` as a whole: read every run below a directory, draw what its data allows,
write the figures and the summary."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib
import pandas as pd
from matplotlib.figure import Figure

from dcvbench.plot.aggregate import curve_frame, summary_frame, temperature_frame, time_frame, variance_frame
from dcvbench.plot.draw import (
    draw_cost_variance,
    draw_curves,
    draw_temperature,
    draw_time,
    draw_variance_ratio,
    metrics_of,
)
from dcvbench.plot.runs import BASELINE, RUNS, Results, Skipped, combine, load_results
from dcvbench.plot.style import STYLE
from dcvbench.plot.summary import summary_markdown
from dcvbench.runtime import ConfigError

FORMATS = ("png", "pdf", "svg")


@dataclass
class PlotReport:
    """What :func:`plot_results` did: figures written, the summary, and what it skipped."""

    out_dir: Path
    figures: list[Path]
    summary: pd.DataFrame
    variance: pd.DataFrame
    temperature: pd.DataFrame
    skipped: list[Skipped]
    warnings: list[str]


def plot_results(
    root: Path | str,
    out_dir: Path | str | None = None,
    fmt: str = "png",
    baseline: Path | str | None = None,
) -> PlotReport:
    """Read every run below ``root``, draw every figure its data allows, write the summary.

    Figures go to ``out_dir`` (default ``root/plots``), named ``<group>-<metric>.<fmt>``;
    ``summary.md`` and ``summary.csv`` (and ``variance-summary.csv`` for variance studies,
    ``temperature-summary.csv`` and ``<group>-temperature-study`` for a relaxation run at several
    temperatures) beside them. Runs under ``baseline`` are drawn dashed in the same colours,
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
    out.mkdir(parents=True, exist_ok=True)
    figures: list[Path] = []
    with matplotlib.rc_context(STYLE):
        figures += _draw_training(results, out, fmt)
        figures += _draw_variance(variance, out, fmt)
        figures += _draw_temperature(temperature, out, fmt)
    summary.to_csv(out / "summary.csv", index=False)
    if len(temperature):
        temperature.to_csv(out / "temperature-summary.csv", index=False)
    if len(variance):
        variance.to_csv(out / "variance-summary.csv", index=False)
    (out / "summary.md").write_text(summary_markdown(summary, variance, temperature))
    return PlotReport(out, figures, summary, variance, temperature, results.skipped, results.warnings)


def _check_output(out: Path, results: Results) -> None:
    """Refuse an output directory inside a run directory: figures must never mix with inputs."""
    resolved = out.resolve()
    studies = results.variance["path"].tolist() if "path" in results.variance else []
    for path in [*results.runs["path"].tolist(), *studies]:
        run = Path(path).resolve()
        if resolved == run or run in resolved.parents:
            raise ConfigError(f"--out {out} is inside the run directory {path}; choose another directory")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a directory; choose a directory")


def _save(fig: Figure, path: Path, figures: list[Path]) -> None:
    fig.savefig(path)
    figures.append(path)


def _draw_training(results: Results, out: Path, fmt: str) -> list[Path]:
    figures: list[Path] = []
    runs = results.runs
    if runs.empty:
        return figures
    main_groups = runs.loc[runs["source"] == RUNS, ["group", "title", "problem"]].drop_duplicates("group")
    metrics = metrics_of(results.trace.columns)
    curves = {metric.column: curve_frame(results, metric.column) for metric in metrics}
    timing = time_frame(results)
    for row in main_groups.sort_values("group").itertuples():
        for metric in metrics:
            frame = curves[metric.column]
            frame = frame[frame["group"] == row.group]
            if not (frame["source"] == RUNS).any():
                continue  # only figures for which these runs hold data
            fig = draw_curves(frame, metric, row.title)
            _save(fig, out / f"{row.group}-{metric.column}.{fmt}", figures)
        frame = timing[timing["group"] == row.group]
        if (frame["source"] == RUNS).any():
            _save(draw_time(frame, row.title), out / f"{row.group}-sec_per_step.{fmt}", figures)
    return figures


def _draw_temperature(temperature: pd.DataFrame, out: Path, fmt: str) -> list[Path]:
    figures: list[Path] = []
    for group, frame in temperature.groupby("group", sort=True):
        if (frame["source"] == RUNS).any():
            fig = draw_temperature(frame[frame["source"] == RUNS], frame["title"].iloc[0])
            _save(fig, out / f"{group}-temperature-study.{fmt}", figures)
    return figures


def _draw_variance(variance: pd.DataFrame, out: Path, fmt: str) -> list[Path]:
    figures: list[Path] = []
    if variance.empty:
        return figures
    for group, frame in variance.groupby("group", sort=True):
        if not (frame["source"] == RUNS).any():
            continue
        title = frame["title"].iloc[0]
        if frame["variance_ratio_mean"].notna().any():
            _save(draw_variance_ratio(frame, title), out / f"{group}-ratio.{fmt}", figures)
        _save(draw_cost_variance(frame, title), out / f"{group}-cost.{fmt}", figures)
    return figures
