"""The data behind each figure and the summary: means and standard errors over seeds worked out by hand."""

import math

import pandas as pd
import pytest

from dcvbench.plot import (
    curve_frame,
    load_results,
    plot_results,
    summary_frame,
    time_frame,
    variance_frame,
)
from dcvbench.results import Run, prepare_output_root
from tests.plot.conftest import (
    TOY_METRICS,
    row_where,
    write_variance,
)


def test_curves_are_mean_and_standard_error_over_seeds(runs):
    results = load_results(runs)
    curves = curve_frame(results, "grad_var")
    row = row_where(curves, group="toy-separable-d8-k2", estimator="rloo", step=10)
    seed0, seed1 = 1e-8 * 1 / 11, 1e-8 * 2 / 11
    assert row["mean"] == pytest.approx((seed0 + seed1) / 2)
    assert row["se"] == pytest.approx(abs(seed1 - seed0) / 2)  # s.d. |a−b|/√2, over √2
    assert row["n"] == 2 and row["seeds"] == 2 and row["finished"]
    # Steps where grad_var was not measured are absent, not zero.
    assert set(curves.loc[curves["estimator"] == "rloo", "step"]) == {0, 10, 20}

    objective = curve_frame(results, "objective")
    row = row_where(objective, group="toy-separable-d8-k2", estimator="disarm", step=15)
    values = [0.25 + 1e-4 * 15 * 1, 0.25 + 1e-4 * 15 * 2]
    assert row["mean"] == pytest.approx(sum(values) / 2)
    assert row["se"] == pytest.approx(pd.Series(values).std() / math.sqrt(2))


def test_an_interrupted_run_is_drawn_as_far_as_it_went_and_marked(runs):
    curves = curve_frame(load_results(runs), "alpha")
    curves = curves[curves["group"] == "toy-separable-d8-k2"]
    dcv = curves[curves["estimator"] == "rloo-dcv"].set_index("step")
    assert set(curves["estimator"]) == {"rloo-dcv"}  # α only where an estimator logs it
    assert dcv.loc[10, "n"] == 2 and dcv.loc[20, "n"] == 1  # seed 1 stopped at step 10
    assert math.isnan(dcv.loc[20, "se"]) and dcv.loc[20, "mean"] == pytest.approx(-0.2)
    assert not dcv["finished"].any()
    assert dcv["statuses"].iloc[0] == "finished 1, interrupted 1"


def test_vae_curves_and_time(runs):
    results = load_results(runs)
    bound = curve_frame(results, "test_bound")
    row = row_where(bound, group="vae-mnist-subset-linear-k2", estimator="rloo", step=100)
    assert row["mean"] == pytest.approx((-200.0 + -201.0) / 2) and row["se"] == pytest.approx(0.5)
    timing = time_frame(results)
    vae = row_where(timing, group="vae-mnist-subset-linear-k2", estimator="rloo-dcv")
    assert vae["mean"] == pytest.approx((0.010 + 0.011) / 2) and vae["se"] == pytest.approx(0.0005)


def test_variance_study_frame(runs):
    variance = variance_frame(load_results(runs))
    row = row_where(variance, estimator="rloo-dcv", k=4)
    assert row["group"] == "variance-toy-separable-d8-theta0.7"
    assert row["variance_ratio_mean"] == pytest.approx(0.25)
    assert row["cost_variance_mean"] == pytest.approx(1.0) and row["n"] == 1
    assert math.isnan(row["variance_ratio_se"])  # one study: no standard error
    # ... but its quality measures have one, from its draws.
    assert (row["bias_norm_mean"], row["bias_norm_se"]) == pytest.approx((0.2, 0.01))
    assert (row["mse_mean"], row["mse_se"], row["cosine_mean"]) == pytest.approx((2.0, 0.025, 1.0))


def test_quality_of_several_studies_is_their_mean_with_the_propagated_se(runs):
    write_variance(runs / "variance", seed=4)  # the same study again: the same group, n = 2
    frame = pd.read_csv(plot_results(runs, fmt="svg").out_dir / "variance-summary.csv")
    row = row_where(frame, estimator="rloo-dcv", k=2)
    assert row["n"] == 2 and row["variance_ratio_se"] == 0.0  # equal studies: no spread
    # Independent studies' own s.e.s combine as √(Σ se²) / n, not as their (here nil) spread.
    assert row["bias_norm_mean"] == pytest.approx(0.2)
    assert row["bias_norm_se"] == pytest.approx(math.sqrt(2 * 0.01**2) / 2)
    assert row["cosine_se"] == pytest.approx(math.sqrt(2 * 0.02**2) / 2)


def test_summary_of_the_synthetic_runs_lists_every_estimator(runs):
    summary = summary_frame(load_results(runs))
    assert list(summary.loc[summary["group"] == "toy-separable-d8-k2", "estimator"]) == [
        "rloo",
        "rloo-dcv",
        "disarm",
    ]  # registry order


def test_step_time_is_each_runs_median_then_mean_over_seeds(tmp_path):
    # One slow row (a variance measurement, another process) moves a run's mean, not its median: the
    # median is what the jobs' final tables report too.
    root = prepare_output_root(tmp_path / "runs")
    identity = {"problem": "toy", "estimator": "rloo", "k": 2, "grad_var_method": "resample"}
    config = {"problem": {"objective": "separable", "dim": 8, "target": 0.499}, "k": 2, "steps": 40}
    manifest = {"job": "toy", "objective_direction": "maximize", "config": config}
    rows = {0: [0.001, 0.001, 0.002, 0.5], 1: [0.003, 0.003, 0.003, 0.003]}  # medians 0.001 5, 0.003
    for seed, times in rows.items():
        with Run.create(
            root, f"toy-rloo-k2-seed{seed}", identity | {"seed": seed}, TOY_METRICS, manifest
        ) as run:
            for step, seconds in enumerate(times, start=1):
                run.log(step * 10, objective=0.25, sec_per_step=seconds)
    report = plot_results(root, tmp_path / "plots", fmt="svg")
    row = row_where(report.summary, estimator="rloo")
    assert row["sec_per_step_median_mean"] == pytest.approx((0.0015 + 0.003) / 2)
    assert row["sec_per_step_median_se"] == pytest.approx(0.0015 / 2)
    assert "| s/step (median) |" in (tmp_path / "plots" / "summary.md").read_text()


def test_the_jobs_final_table_and_the_summary_give_the_same_step_time(tmp_path):
    # One definition everywhere: a real job's summary (what its final table prints) and plot's.
    from dcvbench.config import ToyConfig, ToyProblem
    from dcvbench.jobs.toy import run_toy

    config = ToyConfig(
        problem=ToyProblem(dim=10), estimators=("rloo", "rloo-dcv"), steps=40, log_every=5, var_every=20,
        var_samples=50, seeds=(1, 2), device="cpu", out=str(tmp_path / "runs"),
    )  # fmt: skip
    summaries = run_toy(config)
    frame = summary_frame(load_results(tmp_path / "runs"))
    for estimator in config.estimators:
        times = [s.metrics["sec_per_step"] for s in summaries if s.estimator == estimator]
        row = row_where(frame, estimator=estimator)
        assert row["sec_per_step_median_mean"] == pytest.approx(sum(times) / len(times), rel=1e-12)
