"""Drawing: aggregated frames into matplotlib figures.

Figures are built with :class:`matplotlib.figure.Figure` and the Agg canvas, never through
``pyplot``: there is no global figure registry to leak into, and style settings are applied through
``matplotlib.rc_context`` (by the caller) so nothing global changes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dcvbench.estimators import REFERENCE_ESTIMATOR, estimator_info, estimator_names
from dcvbench.plot.runs import BASELINE, RUNS
from dcvbench.plot.style import FIGSIZE, estimator_color, estimator_order

BAND_ALPHA = 0.2
MARKERS_BELOW = 30  # curves with fewer points than this get markers (sparse metrics such as bounds)
NOT_FINISHED = "†"
LEGEND_COLUMN_CHARS = 26  # longest label that still fits two legend columns in one paper column
LEGEND_ROW_INCHES = 0.14  # the figure grows by this per legend row placed below the axes


@dataclass(frozen=True)
class Metric:
    """A traced quantity and how to draw it."""

    column: str
    label: str
    log: bool = False
    zoom: bool = False  # fit y to the curves past their first tenth (see _zoom_past_start)


# The jobs' own measurements worth a figure, in figure order; any other column is drawn only if it is
# an estimator's stat (what its estimates report: ``EstimatorInfo.stats``), after these.
MEASUREMENTS = (
    Metric("grad_var", "gradient variance (resample)", log=True),
    Metric("objective", "E_q[f] (exact)"),
    Metric("grad_var_resample", "encoder gradient variance (resample)", log=True),
    Metric("grad_var_ema", "encoder gradient variance (EMA)", log=True),
    Metric("train_elbo", "training ELBO", zoom=True),
    Metric("test_bound", "test bound (IWAE)", zoom=True),
)
# Stats drawn better than under their column's name; any other stat gets a plain figure.
STATS = {
    "alpha": Metric("alpha", "α"),
    "train_bound": Metric("train_bound", "training K-sample bound (vimco's objective)", zoom=True),
    "temperature": Metric("temperature", "relaxation temperature λ"),
}


def metrics_of(columns: Iterable[str]) -> list[Metric]:
    """What to draw of a trace with these ``columns``: the measurements, then every registered
    estimator's stats (listing order), each where present."""
    present = set(columns)
    stats = dict.fromkeys(stat.name for name in estimator_names() for stat in estimator_info(name).stats)
    drawn = [metric for metric in MEASUREMENTS if metric.column in present]
    return drawn + [STATS.get(name, Metric(name, name)) for name in stats if name in present]


def _seeds_phrase(counts: Iterable[int]) -> str:
    counts = sorted(set(int(n) for n in counts))
    if not counts:
        return ""
    if counts == [1]:
        return "single seed (no band)"
    if len(counts) == 1:
        return f"mean ± s.e. over {counts[0]} seeds"
    return f"mean ± s.e. over {counts[0]}–{counts[-1]} seeds"


def _new_figure() -> tuple[Figure, Any]:
    fig = Figure(figsize=FIGSIZE, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _series_label(estimator: str, source: str, finished: bool, statuses: str, seeds: int) -> str:
    """``rloo-dcv (baseline) † (interrupted 1 of 2)``: unfinished runs are named in the legend."""
    label = estimator + (" (baseline)" if source == BASELINE else "")
    if not finished:
        unfinished = [part for part in statuses.split(", ") if not part.startswith("finished")]
        label += f" {NOT_FINISHED} ({', '.join(unfinished)} of {seeds})"
    return label


def _legend(fig: Figure, ax) -> None:
    """Inside the axes for a few series; below them, in two columns, for more (taller figure).

    At one paper column's width a legend of five or more entries covers the curves.
    """
    handles, labels = ax.get_legend_handles_labels()
    if len(labels) <= 4:
        ax.legend(frameon=False, loc="best", handlelength=2.0)
        return
    _legend_below(fig, handles, labels)


def _legend_below(fig: Figure, handles: list, labels: list[str]) -> None:
    columns = 2 if max(map(len, labels)) <= LEGEND_COLUMN_CHARS else 1  # two long labels overflow 3.5 in
    fig.set_figheight(FIGSIZE[1] + LEGEND_ROW_INCHES * math.ceil(len(labels) / columns))
    fig.legend(handles, labels, loc="outside lower center", ncols=columns, frameon=False, handlelength=2.0)


def draw_curves(curves: pd.DataFrame, metric: Metric, title: str) -> Figure:
    """One panel: a line per (source, estimator), the s.e. band shaded, baselines dashed."""
    fig, ax = _new_figure()
    main = curves[curves["source"] == RUNS]
    for (source, estimator), series in sorted(
        curves.groupby(["source", "estimator"], sort=False),
        key=lambda item: (item[0][0] != RUNS, estimator_order(item[0][1])),
    ):
        series = series.sort_values("step")
        color = estimator_color(estimator)
        step, mean, se = (
            series["step"].to_numpy(),
            series["mean"].to_numpy(float),
            series["se"].to_numpy(float),
        )
        if metric.log:
            keep = mean > 0  # a log axis cannot show non-positive means
            step, mean, se = step[keep], mean[keep], se[keep]
        first = series.iloc[0]
        ax.plot(
            step,
            mean,
            color=color,
            linestyle="--" if source == BASELINE else "-",
            marker="o" if len(step) < MARKERS_BELOW else None,
            markersize=2.5,
            label=_series_label(
                estimator, source, bool(first["finished"]), first["statuses"], int(first["seeds"])
            ),
        )
        if np.isfinite(se).any():
            low, high = mean - se, mean + se
            if metric.log:
                low = np.maximum(low, mean / 100)  # keep the band on a log axis: clip at mean/100
            ax.fill_between(
                step, low, high, color=color, alpha=BAND_ALPHA / (2 if source == BASELINE else 1), lw=0
            )
    if metric.log:
        ax.set_yscale("log")
    elif metric.zoom:
        _zoom_past_start(ax, curves)
    ax.set_xlabel("step")
    ax.set_ylabel(metric.label)
    seeds = _seeds_phrase(main.drop_duplicates("estimator")["seeds"]) if len(main) else ""
    ax.set_title(f"{title}\n{seeds}" if seeds else title)
    _legend(fig, ax)
    return fig


def _zoom_past_start(ax, curves: pd.DataFrame) -> None:
    """Fit the y axis to the curves after the first tenth of the steps.

    Training curves (ELBO, bounds) move by hundreds of nats in the first steps and by a fraction of
    a nat between estimators at the end; scaling to the start would flatten the comparison.
    """
    steps = curves["step"]
    if steps.nunique() < 5:
        return
    later = curves[steps >= steps.min() + 0.1 * (steps.max() - steps.min())]
    low = (later["mean"] - later["se"].fillna(0.0)).min()
    high = (later["mean"] + later["se"].fillna(0.0)).max()
    if np.isfinite([low, high]).all() and high > low:
        pad = 0.05 * (high - low)
        ax.set_ylim(low - pad, high + pad)


def draw_time(timing: pd.DataFrame, title: str) -> Figure:
    """Bars of mean seconds per step per estimator; baseline bars hatched beside them."""
    fig, ax = _new_figure()
    estimators = sorted(timing["estimator"].unique(), key=estimator_order)
    has_baseline = (timing["source"] == BASELINE).any()
    width = 0.4 if has_baseline else 0.7
    for i, estimator in enumerate(estimators):
        for source, offset in ((RUNS, 0.0), (BASELINE, width)):
            row = timing[(timing["estimator"] == estimator) & (timing["source"] == source)]
            if row.empty:
                continue
            row = row.iloc[0]
            x = i + offset - (width / 2 if has_baseline else 0.0)
            baseline = source == BASELINE
            ax.bar(
                x,
                row["mean"],
                width=width,
                yerr=None if pd.isna(row["se"]) else row["se"],
                color="none" if baseline else estimator_color(estimator),
                edgecolor=estimator_color(estimator),
                linestyle="--" if baseline else "-",
                hatch="///" if baseline else None,
                capsize=2,
                error_kw={"elinewidth": 0.8},
                label="baseline (hatched)" if baseline and i == 0 else None,
            )
    labels = []
    for estimator in estimators:
        rows = timing[(timing["estimator"] == estimator) & (timing["source"] == RUNS)]
        finished = rows["finished"].all() if len(rows) else True
        labels.append(estimator + ("" if finished else f" {NOT_FINISHED}"))
    ax.set_xticks(range(len(estimators)), labels, rotation=30, ha="right")
    ax.set_ylabel("seconds per step")
    main = timing[timing["source"] == RUNS]
    seeds = _seeds_phrase(main["seeds"]) if len(main) else ""
    ax.set_title(f"{title}: wall time per step\n{seeds}" if seeds else f"{title}: wall time per step")
    if has_baseline:
        ax.legend(frameon=False, loc="best")
    return fig


def draw_temperature(study: pd.DataFrame, title: str) -> Figure:
    """The final held-out bound against the relaxation's temperature λ (log axis), one line per
    estimator and schedule: fixed λ solid with filled circles, annealed to the floor λ dashed with
    open squares; ± s.e. over seeds."""
    fig, ax = _new_figure()
    for (estimator, annealed), frame in study.groupby(["estimator", "annealed"], sort=True):
        frame = frame.sort_values("temperature")
        ax.errorbar(
            frame["temperature"],
            frame["mean"],
            yerr=frame["se"].fillna(0.0),
            color=estimator_color(estimator),
            linestyle="--" if annealed else "-",
            marker="s" if annealed else "o",
            markerfacecolor="none" if annealed else estimator_color(estimator),
            markersize=3,
            capsize=2,
            label=f"{estimator}, {'annealed to λ' if annealed else 'fixed λ'}",
        )
    ax.set_xscale("log")
    ax.set_xlabel("temperature λ (annealed: its floor)")
    ax.set_ylabel("final test bound")
    seeds = _seeds_phrase(study["n"])
    ax.set_title(f"{title}: temperature\n{seeds}" if seeds else f"{title}: temperature")
    _legend(fig, ax)
    return fig


def _k_positions(ks: Sequence[int], estimators: Sequence[str], width: float = 0.8):
    """x of each (K, estimator): K at integer positions, estimators spread within ``width``."""
    step = width / max(len(estimators), 1)
    return {
        (k, name): i + (j - (len(estimators) - 1) / 2) * step
        for i, k in enumerate(ks)
        for j, name in enumerate(estimators)
    }


def draw_variance_ratio(variance: pd.DataFrame, title: str) -> Figure:
    """Dots of variance relative to rloo per estimator and K (log y), rloo's level dashed at 1."""
    fig, ax = _new_figure()
    ks = sorted(variance["k"].unique())
    estimators = sorted(variance["estimator"].unique(), key=estimator_order)
    positions = _k_positions(ks, estimators)
    for (source, estimator), rows in variance.groupby(["source", "estimator"], sort=False):
        rows = rows.dropna(subset=["variance_ratio_mean"])
        rows = rows[rows["variance_ratio_mean"] > 0]
        if rows.empty:
            continue
        baseline = source == BASELINE
        ax.errorbar(
            [positions[(k, estimator)] + (0.05 if baseline else 0.0) for k in rows["k"]],
            rows["variance_ratio_mean"],
            yerr=rows["variance_ratio_se"].fillna(0.0).to_numpy(),
            fmt="o",
            color=estimator_color(estimator),
            markerfacecolor="none" if baseline else estimator_color(estimator),
            markersize=4,
            capsize=2,
            linestyle="none",
            label=estimator + (" (baseline)" if baseline else ""),
        )
    ax.axhline(1.0, color="0.5", linestyle=":", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(ks)), [f"K={k}" for k in ks])
    ax.set_ylabel(f"variance / variance of {REFERENCE_ESTIMATOR}")
    n = variance.loc[variance["source"] == RUNS, "n"]
    seeds = "" if n.empty or n.max() <= 1 else f"\nmean ± s.e. over {int(n.max())} studies"
    ax.set_title(f"{title}{seeds}")
    _ordered_legend(ax)
    return fig


def draw_cost_variance(variance: pd.DataFrame, title: str) -> Figure:
    """Variance × evaluations of f against K, per estimator (log y, log₂ x)."""
    fig, ax = _new_figure()
    for (source, estimator), rows in variance.groupby(["source", "estimator"], sort=False):
        rows = rows.sort_values("k")
        rows = rows[rows["cost_variance_mean"] > 0]
        if rows.empty:
            continue
        baseline = source == BASELINE
        ax.errorbar(
            rows["k"],
            rows["cost_variance_mean"],
            yerr=rows["cost_variance_se"].fillna(0.0).to_numpy(),
            color=estimator_color(estimator),
            linestyle="--" if baseline else "-",
            marker="o",
            markerfacecolor="none" if baseline else estimator_color(estimator),
            markersize=3,
            capsize=2,
            label=estimator + (" (baseline)" if baseline else ""),
        )
    ks = sorted(variance["k"].unique())
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.minorticks_off()
    ax.set_yscale("log")
    ax.set_xlabel("K (samples per estimate)")
    ax.set_ylabel("variance × evaluations of f")
    ax.set_title(f"{title}\ncost-normalised variance")
    _ordered_legend(ax)
    return fig


def _ordered_legend(ax) -> None:
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: ("(baseline)" in labels[i], estimator_order(labels[i])))
    handles, labels = [handles[i] for i in order], [labels[i] for i in order]
    if len(labels) <= 6:  # dots and short lines leave room for a few more entries inside
        ax.legend(handles, labels, frameon=False, loc="best")
        return
    _legend_below(ax.get_figure(), handles, labels)
