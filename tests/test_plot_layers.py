"""``dcvbench plot`` and ``dcvbench sweep`` over the Concrete paper's experiments: structured
prediction runs, two-layer VAE runs, the K-sample objective's groups, and temperature studies.

The runs are real ones, made by the jobs on the embedded data with tiny step counts.
"""

from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from dcvbench.cli import main
from dcvbench.config import PredictConfig, VaeConfig
from dcvbench.jobs.predict import run_predict
from dcvbench.jobs.vae import run_vae
from dcvbench.plot import curve_frame, load_results
from dcvbench.plot.runs import series_label
from dcvbench.results import TIMING_COLUMNS, find_runs, read_manifest, read_trace

ONE_LAYER, TWO_LAYERS = "392V-240H-392V", "392V~240H~240H~392V"
VAE_ARCH = "200H-200H-784V"
TINY = {
    "steps": 4,
    "batch_size": 20,
    "log_every": 2,
    "eval_every": 4,
    "var_every": 4,
    "var_samples": 2,
    "eval_samples": 2,
    "checkpoint_every": 4,
    "device": "cpu",
}
TINY_PREDICT = PredictConfig(arch=ONE_LAYER, **TINY)
TINY_VAE = VaeConfig.for_protocol("dcv", arch=VAE_ARCH, **TINY)
# Each group of the runs below and the estimators (series) in it.
GROUPS = {
    f"predict-mnist-subset-{TWO_LAYERS}-k2": ["rloo-dcv", "vimco"],
    f"vae-mnist-subset-{VAE_ARCH}-k2": ["rloo-dcv", "vimco"],
    f"vae-mnist-subset-{VAE_ARCH}-iwae-k2": ["concrete"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Tiny runs of every group of :data:`GROUPS`, one seed each."""
    root = tmp_path_factory.mktemp("layers") / "results"
    predict, vae = str(root / "predict"), str(root / "vae")
    run_predict(replace(TINY_PREDICT, arch=TWO_LAYERS, estimators=("rloo-dcv", "vimco"), out=predict))
    run_vae(replace(TINY_VAE, estimators=("rloo-dcv", "vimco"), out=vae))
    run_vae(replace(TINY_VAE, estimators=("concrete",), objective="iwae", out=vae))
    return root


def test_plot_draws_the_prediction_and_two_layer_groups(runs, tmp_path, capsys):
    results = load_results(runs)
    assert results.skipped == [] and results.warnings == []
    for group, estimators in GROUPS.items():
        assert sorted(results.runs.loc[results.runs["group"] == group, "estimator"]) == sorted(estimators)
    titles = dict(zip(results.runs["group"], results.runs["title"], strict=True))
    assert titles[f"predict-mnist-subset-{TWO_LAYERS}-k2"] == (
        f"structured prediction mnist-subset, {TWO_LAYERS}, K=2"
    )
    assert titles[f"vae-mnist-subset-{VAE_ARCH}-k2"] == f"VAE mnist-subset, {VAE_ARCH}, K=2"
    assert titles[f"vae-mnist-subset-{VAE_ARCH}-iwae-k2"] == (
        f"VAE mnist-subset, {VAE_ARCH}, K-sample bound, K=2"
    )

    out = tmp_path / "figures"
    assert main(["plot", str(runs), "--out", str(out), "--format", "svg", "-q"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    written = {Path(line).name for line in captured.out.split()}
    markdown = (out / "summary.md").read_text()
    for group, estimators in GROUPS.items():
        for metric in ("test_bound", "train_elbo", "grad_var_resample", "sec_per_step"):
            assert f"{group}-{metric}.svg" in written, (group, metric)
            assert (out / f"{group}-{metric}.svg").stat().st_size > 0
        assert f"\n## {group}\n" in markdown
        for estimator in estimators:
            assert f"| {estimator} | 1 | finished |" in markdown, (group, estimator)
    for group in (f"predict-mnist-subset-{TWO_LAYERS}-k2", f"vae-mnist-subset-{VAE_ARCH}-k2"):
        assert f"{group}-alpha.svg" in written  # rloo-dcv's α
    assert {"summary.md", "summary.csv"} <= written


def test_series_label_names_a_temperature_other_than_the_default():
    annealed = {"estimator_settings": {"temperature": 2.0}, "anneal": "exp", "anneal_floor": 0.5}
    assert series_label("concrete", {"estimator_settings": {"temperature": 0.1}}) == "concrete λ=0.1"
    assert series_label("concrete", {"estimator_settings": {"temperature": 1.0}}) == "concrete λ=1"
    assert series_label("concrete", annealed) == "concrete λ=2→0.5 exp"
    assert series_label("st-concrete", {"estimator_settings": {"temperature": 0.5}}) == "st-concrete λ=0.5"
    assert series_label("concrete", {"estimator_settings": {"temperature": 2 / 3}}) == "concrete"
    assert series_label("concrete", {}) == "concrete"  # written before the option: the default
    assert series_label("rloo", annealed) == "rloo"  # an estimator that does not relax has no λ


def test_a_temperature_study_is_one_series_per_temperature(tmp_path):
    # Four concrete runs of one group, all seed 0: each temperature is a series, not a repeated seed.
    config = replace(TINY_PREDICT, estimators=("concrete",), out=str(tmp_path))
    for temperature, schedule in (
        (0.1, {}),
        (1.0, {}),
        (2.0, {"anneal": "exp", "anneal_floor": 0.5}),
        (None, {}),
    ):
        settings = {} if temperature is None else {"temperature": temperature}
        run_predict(replace(config, estimator_settings=settings, **schedule))
    results = load_results(tmp_path)
    assert results.warnings == []  # no "several runs, using the newest", no mixed settings
    labels = ["concrete λ=0.1", "concrete λ=1", "concrete λ=2→0.5 exp", "concrete"]
    assert sorted(results.runs["estimator"]) == sorted(labels)
    assert set(results.runs["group"]) == {f"predict-mnist-subset-{ONE_LAYER}-k2"}
    final = curve_frame(results, "test_bound").query("step == 4")
    assert sorted(final["estimator"]) == sorted(labels) and (final["n"] == 1).all()


SPEC = f"""
job = "predict"

[options]
arch = "{ONE_LAYER}"
steps = 4
batch-size = 20
log-every = 2
eval-every = 4
var-every = 4
var-samples = 2
eval-samples = 2
checkpoint-every = 4
device = "cpu"
seed = 0

[grid]
estimator = ["rloo", "vimco"]
"""


def test_a_predict_sweep_runs_its_grid_and_a_relaunch_skips_it(tmp_path, capsys):
    # rloo's run is made by hand first: the sweep skips it and starts vimco's only (each run the
    # sweep starts is a fresh process, seconds of imports).
    spec, out = tmp_path / "sweep.toml", tmp_path / "runs"
    spec.write_text(SPEC)
    (by_hand,) = run_predict(replace(TINY_PREDICT, estimators=("rloo",), out=str(out)))
    assert main(["sweep", str(spec), "--out", str(out), "--workers", "1"]) == 0
    table = capsys.readouterr().out
    assert (table.count("│ skipped "), table.count("│ finished ")) == (1, 1)
    made = find_runs(out)
    manifests = {read_manifest(run)["estimator"]: read_manifest(run) for run in made}
    assert sorted(manifests) == ["rloo", "vimco"] and by_hand.path in made
    assert {(m["job"], m["arch"], m["status"]) for m in manifests.values()} == {
        ("predict", ONE_LAYER, "finished")
    }
    # The sweep's run is the run typed by hand: the same trace.
    (swept,) = (run for run in made if run != by_hand.path)
    (vimco,) = run_predict(replace(TINY_PREDICT, estimators=("vimco",), out=str(tmp_path / "by-hand")))
    pd.testing.assert_frame_equal(
        read_trace(swept).drop(columns=TIMING_COLUMNS), read_trace(vimco.path).drop(columns=TIMING_COLUMNS)
    )

    assert main(["sweep", str(spec), "--out", str(out), "--workers", "1"]) == 0
    assert capsys.readouterr().out.count("│ skipped ") == 2
    assert find_runs(out) == made
