"""The toy job end to end, through the library."""

from dataclasses import replace

import pandas as pd
import pytest

from dcvbench.config import ToyConfig, ToyProblem
from dcvbench.estimators import EstimatorSettings
from dcvbench.jobs.toy import run_toy
from dcvbench.problems.toy import make_objective
from dcvbench.results import read_manifest, read_trace

SMALL = ToyConfig(
    problem=ToyProblem(dim=10),
    estimators=("rloo", "rloo-dcv"),
    steps=30,
    log_every=5,
    var_every=10,
    var_samples=200,
    device="cpu",
)


def test_toy_writes_one_finished_run_per_estimator_and_seed(tmp_path):
    config = replace(SMALL, seeds=(1, 2), out=str(tmp_path))
    summaries = run_toy(config)
    assert [(s.estimator, s.seed) for s in summaries] == [
        ("rloo", 1),
        ("rloo-dcv", 1),
        ("rloo", 2),
        ("rloo-dcv", 2),
    ]
    for summary in summaries:
        manifest = read_manifest(summary.path)
        assert manifest["status"] == "finished"
        assert manifest["objective_direction"] == "maximize"
        assert manifest["config"]["problem"]["dim"] == 10
        assert {"torch", "python", "dcvbench"} <= set(manifest["versions"])
        trace = read_trace(summary.path)
        assert list(trace["step"]) == [0, 5, 10, 15, 20, 25, 30]
        measured = trace.dropna(subset=["grad_var"])
        assert list(measured["step"]) == [0, 10, 20, 30]
        assert (measured["grad_var"] > 0).all()
        assert set(trace["grad_var_method"]) == {"resample"}
    dcv = read_trace(summaries[1].path)
    assert dcv["alpha"].notna().all()
    assert read_trace(summaries[0].path)["alpha"].isna().all()


def test_objective_column_is_the_exact_expectation_and_it_improves(tmp_path):
    config = replace(SMALL, estimators=("exact-baseline",), steps=200, out=str(tmp_path))
    (summary,) = run_toy(config)
    trace = read_trace(summary.path)
    # At η = 0 every θ is ½: E f = ((1−t)² + t²)/2 exactly.
    t = config.problem.target
    assert trace["objective"].iloc[0] == pytest.approx(((1 - t) ** 2 + t**2) / 2, rel=1e-12)
    assert trace["objective"].iloc[-1] > trace["objective"].iloc[0]


def test_same_seed_same_trace(tmp_path):
    config = replace(SMALL, estimators=("rloo-dcv", "disarm"), seeds=(5,))
    first = run_toy(replace(config, out=str(tmp_path / "a")))
    second = run_toy(replace(config, out=str(tmp_path / "b")))
    timing = ["run_id", "wall_s", "sec_per_step"]
    for a, b in zip(first, second, strict=True):
        pd.testing.assert_frame_equal(
            read_trace(a.path).drop(columns=timing), read_trace(b.path).drop(columns=timing)
        )


def test_minimize_runs_downhill(tmp_path):
    config = replace(SMALL, estimators=("exact-baseline",), steps=200, maximize=False, out=str(tmp_path))
    (summary,) = run_toy(config)
    trace = read_trace(summary.path)
    assert read_manifest(summary.path)["objective_direction"] == "minimize"
    assert trace["objective"].iloc[-1] < trace["objective"].iloc[0]


def test_divergence_stops_the_run_cleanly_and_says_why(tmp_path, monkeypatch):
    settings = EstimatorSettings(alpha=float("inf"))  # refused by the config…
    with pytest.raises(ValueError, match="--alpha"):
        replace(SMALL, estimator_settings=settings)
    # …so make the objective itself blow up: a NaN target poisons every gradient.
    config = replace(SMALL, estimators=("rloo",), out=str(tmp_path))
    objective = make_objective("separable", 10, float("nan"))
    monkeypatch.setattr("dcvbench.jobs.toy.make_objective", lambda *args, **kwargs: objective)
    (summary,) = run_toy(config)
    manifest = read_manifest(summary.path)
    assert summary.status == "diverged" == manifest["status"]
    assert manifest["diverged_at"] == 5
    assert manifest["non_finite"] in ("logits", "gradient")
    assert list(read_trace(summary.path)["step"]) == [0]
