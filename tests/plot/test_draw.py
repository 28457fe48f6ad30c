"""What the figures show: reference levels, optimum, readable ticks, cut axes."""

import math

import matplotlib
import pandas as pd
import pytest

from dcvbench.plot import (
    MEASUREMENTS,
    RUNS,
    Metric,
    curve_frame,
    draw_curves,
    draw_variance_ratio,
    load_results,
    plot_results,
    variance_frame,
)
from dcvbench.plot.draw import QUALITY_FIGURES, draw_quality, tick_label


def test_the_ratio_figure_has_no_reference_dots_and_plain_ticks(runs):
    variance = variance_frame(load_results(runs))
    fig = draw_variance_ratio(variance, "study")
    ax = fig.axes[0]
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert labels == ["rloo (= 1)", "rloo-dcv", "disarm"]  # rloo's ratio is 1: a level, no dots
    assert ax.containers == []  # one study: no error bars, so none in the legend either
    fig.canvas.draw()
    ticks = [label.get_text() for label in ax.get_yticklabels() if label.get_text()]
    assert "1" in ticks and "0.5" in ticks and all("10^" not in tick for tick in ticks)


def test_tick_labels_are_plain_numbers_where_short():
    assert [tick_label(v) for v in (0.9, 1.0, 2.0, 0.05, 1e-3, 5000.0)] == [
        "0.9",
        "1",
        "2",
        "0.05",
        "0.001",
        "5000",
    ]
    assert tick_label(1e-8) == "$10^{-8}$" and tick_label(2e-10) == "$2\\times10^{-10}$"
    assert tick_label(0.0) == "" and tick_label(-1.0) == ""


def test_the_objective_figure_shows_the_toy_optimum(runs, tmp_path):
    results = load_results(runs)
    toy = results.runs[results.runs["problem"] == "toy"]
    assert toy["optimum"].tolist() == pytest.approx([0.501**2] * len(toy))  # max of t², (1−t)² at t = 0.499
    assert results.runs.loc[results.runs["problem"] == "vae", "optimum"].isna().all()
    objective = next(metric for metric in MEASUREMENTS if metric.column == "objective")
    curves = curve_frame(results, "objective")
    fig = draw_curves(curves[curves["group"] == "toy-separable-d8-k2"], objective, "toy", optimum=0.501**2)
    (level,) = [line for line in fig.axes[0].get_lines() if line.get_label().startswith("optimum")]
    assert level.get_label() == "optimum 0.251001" and set(level.get_ydata()) == {0.501**2}
    # plot_results draws it on the toy's objective figure only (SVG text kept as text, to be read).
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        plot_results(runs / "toy", tmp_path, fmt="svg")
    assert "optimum 0.251001" in (tmp_path / "toy-separable-d8-k2-objective.svg").read_text()
    assert "optimum" not in (tmp_path / "toy-separable-d8-k2-grad_var.svg").read_text()


def test_a_zoomed_axis_says_which_early_steps_it_cut():
    steps = list(range(0, 101, 10))
    later = [-100.0 + step / 10 for step in steps[1:]]  # -99 … -90
    curves = pd.DataFrame(
        {"source": RUNS, "estimator": "rloo", "step": steps, "mean": [-500.0, *later], "se": math.nan,
         "seeds": 1, "finished": True, "statuses": "finished"}
    )  # fmt: skip
    bound = Metric("test_bound", "test bound", zoom=True)
    assert draw_curves(curves, bound, "vae").axes[0].get_xlabel() == "step (values before step 10 off-scale)"
    within = curves.assign(mean=[-95.0, *later])  # the first value inside the fitted range: nothing cut
    assert draw_curves(within, bound, "vae").axes[0].get_xlabel() == "step"


@pytest.mark.parametrize("metric", QUALITY_FIGURES, ids=lambda metric: metric.column)
def test_the_quality_figures_have_a_point_per_estimator_and_k_at_its_cost(runs, metric: Metric):
    variance = variance_frame(load_results(runs))
    ax = draw_quality(variance, metric, "study").axes[0]
    levels = ["exact (= 1)"] if metric.column == "cosine" else []  # the exact gradient's own cosine
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert legend == [*levels, "rloo", "rloo-dcv", "disarm"]
    # Error bars on every series: each point has its s.e. from the draws.
    series = {container.get_label(): container.lines[0] for container in ax.containers}
    for name in ("rloo", "rloo-dcv", "disarm"):
        rows = variance[variance["estimator"] == name].sort_values("evals")
        x, y = series[name].get_data()
        assert list(x) == rows["evals"].tolist() == [2, 4]  # one point per K, at its f-evaluations
        assert list(y) == pytest.approx(rows[f"{metric.column}_mean"].tolist())
    assert ax.get_xlabel() == "evaluations of f per estimate"
    assert ax.get_yscale() == ("log" if metric.column == "mse" else "linear")
