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
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from dcvbench.estimators import REFERENCE_ESTIMATOR, estimator_info, estimator_names
from dcvbench.plot.runs import BASELINE, RUNS
from dcvbench.plot.style import (
    BAND_ALPHA,
    BASELINE_ALPHA,
    FIGSIZE,
    LEGEND_COLUMN_CHARS,
    LEGEND_ROW_INCHES,
    MARKERS_BELOW,
    NOT_FINISHED,
    REFERENCE_COLOR,
    estimator_order,
    estimator_style,
)

# The reference's curve is drawn first, this much wider, under the others: a curve lying on it shows
# as a coloured line inside a black border instead of hiding it (rloo and disarm on the toy).
REFERENCE_WIDTH = 1.9
OPTIMUM_COLOR = "0.45"


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
    Metric("train_objective", "training objective (mean f, a loss)", zoom=True),
)
# A variance study's quality against the exact gradient, each drawn against f-evaluations per estimate
# (aggregate.QUALITY_MEASURES), so that cheap biased and costly unbiased estimators meet at equal cost.
QUALITY_FIGURES = (
    Metric("mse", "mean squared error E‖ĝ − ∇‖²", log=True),
    Metric("cosine", "cosine to the exact gradient"),
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
    # A user model's own evaluation (``dcvbench train``: its evaluate() metrics, ``eval_<name>``).
    drawn += [
        Metric(c, f"{c.removeprefix('eval_')} (your evaluate())")
        for c in sorted(present)
        if c.startswith("eval_")
    ]
    return drawn + [STATS.get(name, Metric(name, name)) for name in stats if name in present]


def _seeds_phrase(counts: Iterable[int]) -> str:
    counts = sorted(set(int(n) for n in counts))
    if not counts:
        return ""
    if counts == [1]:
        return "one seed (no band)"
    if len(counts) == 1:
        return f"mean ± s.e. over {counts[0]} seeds"
    return f"mean ± s.e. over {counts[0]}–{counts[-1]} seeds"


def _new_figure() -> tuple[Figure, Any]:
    fig = Figure(figsize=FIGSIZE, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _look(estimator: str, baseline: bool, marker: bool) -> dict[str, Any]:
    """Keyword arguments of ``plot``/``errorbar`` for one series: the estimator's colour, line style
    and marker (:func:`~dcvbench.plot.style.estimator_style`); baseline runs faded, hollow markers."""
    style = estimator_style(estimator)
    look: dict[str, Any] = {"color": style.color, "linestyle": style.linestyle}
    if marker:
        look |= {"marker": style.marker, "markersize": 3}
        look["markerfacecolor"] = "none" if baseline else style.color
    if baseline:
        look |= {"alpha": BASELINE_ALPHA, "linewidth": 0.9}
    return look


def _series_label(estimator: str, source: str, finished: bool, statuses: str, seeds: int) -> str:
    """``rloo-dcv (baseline) † (interrupted 1 of 2)``: unfinished runs are named in the legend."""
    label = estimator + (" (baseline)" if source == BASELINE else "")
    if not finished:
        unfinished = [part for part in statuses.split(", ") if not part.startswith("finished")]
        label += f" {NOT_FINISHED} ({', '.join(unfinished)} of {seeds})"
    return label


def _points(ax, x, y, se, **look) -> None:
    """Points (and lines, per ``look``) with ± s.e. bars where a standard error exists; without one
    (a single seed or study), plain points, so the legend shows no error-bar glyph for absent bars."""
    se = np.asarray(se, dtype=float)
    if np.isfinite(se).any():
        ax.errorbar(x, y, yerr=np.nan_to_num(se), capsize=2, elinewidth=0.8, **look)
    else:
        ax.plot(x, y, **look)


def _legend(fig: Figure, ax) -> None:
    """Inside the axes for a few series; below them, in two columns, for more (taller figure).

    At one paper column's width a legend of five or more entries covers the curves.
    """
    handles, labels = ax.get_legend_handles_labels()
    if len(labels) <= 4:
        ax.legend(frameon=False, loc="best", handlelength=2.4)
        return
    _legend_below(fig, handles, labels)


def _legend_below(fig: Figure, handles: list, labels: list[str]) -> None:
    columns = 2 if max(map(len, labels)) <= LEGEND_COLUMN_CHARS else 1  # two long labels overflow 3.5 in
    fig.set_figheight(FIGSIZE[1] + LEGEND_ROW_INCHES * math.ceil(len(labels) / columns))
    fig.legend(handles, labels, loc="outside lower center", ncols=columns, frameon=False, handlelength=2.4)


def tick_label(value: float, _position: Any = None) -> str:
    """A log axis's tick as a reader writes it: ``0.5``, ``2``, ``0.01`` from 10⁻³ to 10⁴, and
    ``10⁻⁸`` or ``2×10⁻⁸`` beyond (matplotlib's default writes ``9×10⁻¹`` for 0.9)."""
    if value <= 0 or not math.isfinite(value):
        return ""
    if 1e-3 <= value < 1e4:
        return f"{value:g}"
    exponent = math.floor(math.log10(value) + 1e-9)
    mantissa = value / 10.0**exponent
    if math.isclose(mantissa, 1.0, rel_tol=1e-6):
        return f"$10^{{{exponent}}}$"
    return f"${mantissa:.2g}\\times10^{{{exponent}}}$"


def _readable_log_axis(ax, which: str) -> None:
    """Label a log axis with :func:`tick_label` at 1-2-5 steps when it spans under three decades
    (every digit under one), at powers of ten otherwise; minor ticks unlabelled."""
    low, high = ax.get_ylim() if which == "y" else ax.get_xlim()
    decades = math.log10(high / low) if 0 < low < high else 0.0
    subs = tuple(range(1, 10)) if decades < 1 else (1.0, 2.0, 5.0) if decades < 3 else (1.0,)
    axis = ax.yaxis if which == "y" else ax.xaxis
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(tick_label))
    axis.set_minor_formatter(NullFormatter())


def draw_curves(curves: pd.DataFrame, metric: Metric, title: str, optimum: float | None = None) -> Figure:
    """One panel: a line per (source, estimator), the s.e. band shaded, baselines faded.

    ``optimum`` (the toy's best achievable ``E_q[f]``) is drawn as a dotted level when given. Where
    the y axis is fitted past the first steps (:attr:`Metric.zoom`) and cuts earlier values off, the
    x label says from which step.
    """
    fig, ax = _new_figure()
    main = curves[curves["source"] == RUNS]
    for (source, estimator), series in sorted(
        curves.groupby(["source", "estimator"], sort=False),
        key=lambda item: (item[0][0] != RUNS, estimator_order(item[0][1])),
    ):
        series = series.sort_values("step")
        step, mean, se = (
            series["step"].to_numpy(),
            series["mean"].to_numpy(float),
            series["se"].to_numpy(float),
        )
        if metric.log:
            keep = mean > 0  # a log axis cannot show non-positive means
            step, mean, se = step[keep], mean[keep], se[keep]
        baseline = source == BASELINE
        look = _look(estimator, baseline, marker=len(step) < MARKERS_BELOW)
        if estimator == REFERENCE_ESTIMATOR and not baseline:
            look |= {"linewidth": REFERENCE_WIDTH, "zorder": 1.9}  # under the others (lines: 2)
        first = series.iloc[0]
        ax.plot(
            step,
            mean,
            label=_series_label(
                estimator, source, bool(first["finished"]), first["statuses"], int(first["seeds"])
            ),
            **look,
        )
        if np.isfinite(se).any():
            low, high = mean - se, mean + se
            if metric.log:
                low = np.maximum(low, mean / 100)  # keep the band on a log axis: clip at mean/100
            ax.fill_between(
                step, low, high, color=look["color"], alpha=BAND_ALPHA / (2 if baseline else 1), lw=0
            )
    if optimum is not None:
        ax.axhline(
            optimum,
            color=OPTIMUM_COLOR,
            linestyle=(0, (1, 1.5)),
            lw=0.9,
            zorder=1,
            label=f"optimum {optimum:.6g}",
        )
    xlabel = "step"
    if metric.log:
        ax.set_yscale("log")
        _readable_log_axis(ax, "y")
    elif metric.zoom:
        cut = _zoom_past_start(ax, curves)
        if cut is not None:
            xlabel = f"step (values before step {cut:g} off-scale)"
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric.label)
    seeds = _seeds_phrase(main.drop_duplicates("estimator")["seeds"]) if len(main) else ""
    ax.set_title(f"{title}\n{seeds}" if seeds else title)
    _legend(fig, ax)
    return fig


def _zoom_past_start(ax, curves: pd.DataFrame) -> float | None:
    """Fit the y axis to the curves after the first tenth of the steps; the first step kept, if
    that cuts an earlier value off (else ``None``).

    Training curves (ELBO, bounds) move by hundreds of nats in the first steps and by a fraction of
    a nat between estimators at the end; scaling to the start would flatten the comparison.
    """
    steps = curves["step"]
    if steps.nunique() < 5:
        return None
    start = steps.min() + 0.1 * (steps.max() - steps.min())
    later = curves[steps >= start]
    low = (later["mean"] - later["se"].fillna(0.0)).min()
    high = (later["mean"] + later["se"].fillna(0.0)).max()
    if not (np.isfinite([low, high]).all() and high > low):
        return None
    pad = 0.05 * (high - low)
    ax.set_ylim(low - pad, high + pad)
    earlier = curves.loc[steps < start, "mean"]
    cut = ((earlier < low - pad) | (earlier > high + pad)).any()
    return float(later["step"].min()) if cut else None


def draw_time(timing: pd.DataFrame, title: str) -> Figure:
    """Bars of seconds per step per estimator (each run's median, mean ± s.e. over seeds);
    baseline bars hatched beside them."""
    fig, ax = _new_figure()
    estimators = sorted(timing["estimator"].unique(), key=estimator_order)
    has_baseline = (timing["source"] == BASELINE).any()
    width = 0.4 if has_baseline else 0.7
    for i, estimator in enumerate(estimators):
        color = estimator_style(estimator).color
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
                color="none" if baseline else color,
                edgecolor=color,
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
    ax.set_ylabel("seconds per step (median of each run)")
    main = timing[timing["source"] == RUNS]
    seeds = _seeds_phrase(main["seeds"]) if len(main) else ""
    heading = f"{title}: wall time per step"
    ax.set_title(f"{heading}\n{seeds}" if seeds else heading)
    if has_baseline:
        ax.legend(frameon=False, loc="best")
    return fig


def draw_temperature(study: pd.DataFrame, title: str) -> Figure:
    """The final held-out bound against the relaxation's temperature λ (log axis), one line per
    estimator and schedule: fixed λ solid with filled markers, annealed to the floor λ dashed with
    hollow ones; ± s.e. over seeds where there are several."""
    fig, ax = _new_figure()
    for (estimator, annealed), frame in study.groupby(["estimator", "annealed"], sort=True):
        frame = frame.sort_values("temperature")
        style = estimator_style(estimator)
        _points(
            ax,
            frame["temperature"],
            frame["mean"],
            frame["se"],
            color=style.color,
            linestyle="--" if annealed else "-",
            marker=style.marker,
            markerfacecolor="none" if annealed else style.color,
            markersize=3,
            label=f"{estimator}, {'annealed to λ' if annealed else 'fixed λ'}",
        )
    ax.set_xscale("log")
    _readable_log_axis(ax, "x")
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


def _studies_phrase(variance: pd.DataFrame) -> str:
    n = variance.loc[variance["source"] == RUNS, "n"]
    if n.empty:
        return ""
    return "one study, no error bars" if n.max() <= 1 else f"mean ± s.e. over {int(n.max())} studies"


def _compared_along(variance: pd.DataFrame) -> str:
    """What a study's estimators are compared at: ``"budget"`` (equal cost, each at its own K) or ``"k"``."""
    return "budget" if variance["budget"].notna().any() else "k"


def draw_variance_ratio(variance: pd.DataFrame, title: str) -> Figure:
    """Dots of variance relative to rloo per estimator and K, or budget (log y); rloo itself is the
    level 1 (its ratio is 1 by definition, so it is a line, not a column of dots)."""
    fig, ax = _new_figure()
    along = _compared_along(variance)
    ks = sorted(variance[along].unique())
    compared = variance[variance["estimator"] != REFERENCE_ESTIMATOR]
    estimators = sorted(compared["estimator"].unique(), key=estimator_order)
    positions = _k_positions(ks, estimators)
    ax.axhline(
        1.0,
        color=REFERENCE_COLOR,
        linestyle=(0, (1, 1.5)),
        linewidth=0.8,
        label=f"{REFERENCE_ESTIMATOR} (= 1)",
    )
    for (source, estimator), rows in compared.groupby(["source", "estimator"], sort=False):
        rows = rows.dropna(subset=["variance_ratio_mean"])
        rows = rows[rows["variance_ratio_mean"] > 0]
        if rows.empty:
            continue
        baseline = source == BASELINE
        look = _look(estimator, baseline, marker=True) | {"linestyle": "none", "markersize": 4}
        _points(
            ax,
            [positions[(k, estimator)] + (0.05 if baseline else 0.0) for k in rows[along]],
            rows["variance_ratio_mean"],
            rows["variance_ratio_se"],
            label=estimator + (" (baseline)" if baseline else ""),
            **look,
        )
    ax.set_yscale("log")
    _readable_log_axis(ax, "y")
    ax.set_xticks(range(len(ks)), [f"K={k}" if along == "k" else f"{k:.0f} evals" for k in ks])
    ax.set_xlim(-0.5, len(ks) - 0.5)
    ax.set_ylabel(f"variance / variance of {REFERENCE_ESTIMATOR}")
    studies = _studies_phrase(variance)
    ax.set_title(f"{title}\n{studies}" if studies else title)
    _ordered_legend(ax)
    return fig


def draw_cost_variance(variance: pd.DataFrame, title: str) -> Figure:
    """Variance × evaluations of f against K, or the budget, per estimator (log y, log₂ x)."""
    fig, ax = _new_figure()
    along = _compared_along(variance)
    for (source, estimator), rows in variance.groupby(["source", "estimator"], sort=False):
        rows = rows.sort_values(along)
        rows = rows[rows["cost_variance_mean"] > 0]
        if rows.empty:
            continue
        baseline = source == BASELINE
        _points(
            ax,
            rows[along],
            rows["cost_variance_mean"],
            rows["cost_variance_se"],
            label=estimator + (" (baseline)" if baseline else ""),
            **_look(estimator, baseline, marker=True),
        )
    ks = sorted(variance[along].unique())
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [f"{k:.0f}" for k in ks])
    ax.minorticks_off()
    ax.set_yscale("log")
    _readable_log_axis(ax, "y")
    ax.set_xlabel("K (samples per estimate)" if along == "k" else "budget (evaluations of f per estimate)")
    ax.set_ylabel("variance × evaluations of f")
    studies = _studies_phrase(variance)
    ax.set_title(f"{title}\ncost-normalised variance" + (f", {studies}" if studies else ""))
    _ordered_legend(ax)
    return fig


def draw_quality(variance: pd.DataFrame, metric: Metric, title: str) -> Figure:
    """A quality measure (:data:`QUALITY_FIGURES`) against f-evaluations per estimate (log₂ x), one
    point per (estimator, K) joined per estimator, ± its s.e. from the draws; the cosine with the exact
    gradient's own level 1."""
    fig, ax = _new_figure()
    if metric.column == "cosine":
        ax.axhline(1.0, color=REFERENCE_COLOR, linestyle=(0, (1, 1.5)), linewidth=0.8, label="exact (= 1)")
    for (source, estimator), rows in variance.groupby(["source", "estimator"], sort=False):
        rows = rows.dropna(subset=[f"{metric.column}_mean"]).sort_values("evals")
        if metric.log:
            rows = rows[rows[f"{metric.column}_mean"] > 0]
        if rows.empty:
            continue
        baseline = source == BASELINE
        _points(
            ax,
            rows["evals"],
            rows[f"{metric.column}_mean"],
            rows[f"{metric.column}_se"],
            label=estimator + (" (baseline)" if baseline else ""),
            **_look(estimator, baseline, marker=True),
        )
    evals = sorted(variance.dropna(subset=[f"{metric.column}_mean"])["evals"].unique())
    ax.set_xscale("log", base=2)
    ax.set_xticks(evals, [str(e) for e in evals])
    ax.minorticks_off()
    if metric.log:
        ax.set_yscale("log")
        _readable_log_axis(ax, "y")
    ax.set_xlabel("evaluations of f per estimate")
    ax.set_ylabel(metric.label)
    ax.set_title(f"{title}\n± s.e. from the draws")
    _ordered_legend(ax)
    return fig


def _ordered_legend(ax) -> None:
    """Legend entries in registry order, baselines after; a reference level first."""
    handles, labels = ax.get_legend_handles_labels()

    def key(i: int):
        return (not labels[i].endswith("(= 1)"), "(baseline)" in labels[i], estimator_order(labels[i]))

    order = sorted(range(len(labels)), key=key)
    handles, labels = [handles[i] for i in order], [labels[i] for i in order]
    if len(labels) <= 6:  # dots and short lines leave room for a few more entries inside
        ax.legend(handles, labels, frameon=False, loc="best")
        return
    _legend_below(ax.get_figure(), handles, labels)
