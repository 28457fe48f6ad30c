"""Categorical latents through the jobs: toy runs, VAE runs and variance studies, end to end."""

from dataclasses import replace

import pandas as pd
import pytest
import torch
from scipy.stats import norm

from dcvbench.checkpoints import CHECKPOINT, load_checkpoint
from dcvbench.config import ToyConfig, ToyProblem, VaeConfig, VarianceConfig
from dcvbench.estimators import estimator_info, estimator_names
from dcvbench.jobs.toy import resume_toy, run_toy
from dcvbench.jobs.vae import load_checkpointed_model, resume_vae, run_vae
from dcvbench.jobs.variance import VaePoint, run_variance
from dcvbench.problems import vae
from dcvbench.problems.categorical_toy import make_categorical_objective
from dcvbench.results import TIMING_COLUMNS, read_manifest, read_trace
from dcvbench.runtime import ConfigError

CATEGORICAL = estimator_names("categorical")
VAE_ESTIMATORS = tuple(name for name in CATEGORICAL if "vae" in estimator_info(name, "categorical").problems)
TOY = ToyConfig(
    problem=ToyProblem(dim=6, latent="categorical", classes=3),
    estimators=("rloo-dcv",),
    steps=20,
    log_every=5,
    var_every=10,
    var_samples=200,
    device="cpu",
)
VAE = VaeConfig.for_protocol(
    "dcv",
    latent="categorical",
    latent_vars=4,
    classes=3,
    batch_size=20,
    steps=10,
    log_every=5,
    var_every=10,
    eval_every=10,
    checkpoint_every=10,
    var_samples=4,
    eval_samples=2,
    device="cpu",
)


def _same_trace(a, b) -> None:
    pd.testing.assert_frame_equal(
        read_trace(a).drop(columns=TIMING_COLUMNS), read_trace(b).drop(columns=TIMING_COLUMNS)
    )


# -- toy ------------------------------------------------------------------------------------------


def test_categorical_toy_runs_every_estimator_and_says_what_it_ran(tmp_path):
    summaries = run_toy(replace(TOY, estimators=tuple(CATEGORICAL), out=str(tmp_path)))
    assert [s.estimator for s in summaries] == CATEGORICAL
    # E f at uniform class probabilities, from the closed form of the separable objective.
    targets = make_categorical_objective("separable", 6, 3).targets
    start = float((1 - 2 * targets.sum(-1) / 3 + targets.pow(2).sum(-1)).mean())
    # Unbiased estimators: no coordinate's mean may sit far from the exact gradient. Bonferroni over
    # every coordinate of every measured row of every unbiased run, at level 0.001.
    unbiased = [s for s in summaries if estimator_info(s.estimator, "categorical").unbiased]
    threshold = norm.isf(0.001 / (2 * 18 * 3 * len(unbiased)))
    for summary in summaries:
        manifest = read_manifest(summary.path)
        assert (summary.status, manifest["latent"]) == ("finished", "categorical")
        problem = manifest["config"]["problem"]
        assert (problem["latent"], problem["dim"], problem["classes"]) == ("categorical", 6, 3)
        trace = read_trace(summary.path)
        assert set(trace["latent"]) == {"categorical"}
        assert list(trace["step"]) == [0, 5, 10, 15, 20]
        assert trace["objective"].iloc[0] == pytest.approx(start, rel=1e-12)
        measured = trace.dropna(subset=["grad_var"])
        assert list(measured["step"]) == [0, 10, 20]
        assert (measured["grad_var"] > 0).all() and measured["bias_max_z"].notna().all()
        if summary in unbiased:
            assert (measured["bias_max_z"] < threshold).all(), summary.estimator
    dcv = read_trace(summaries[CATEGORICAL.index("rloo-dcv")].path)
    assert dcv["alpha"].notna().all()
    oracle = read_trace(summaries[CATEGORICAL.index("exact-baseline")].path)
    assert oracle["objective"].iloc[-1] > oracle["objective"].iloc[0]  # maximised, as the binary toy


def test_quadratic_form_objective_runs_too(tmp_path):
    problem = replace(TOY.problem, objective="quadratic-form", w_seed=3)
    (summary,) = run_toy(replace(TOY, problem=problem, estimators=("rloo",), steps=5, out=str(tmp_path)))
    trace = read_trace(summary.path)
    assert summary.status == "finished" and trace["objective"].notna().all()


def test_categorical_toy_resumes_to_the_uninterrupted_trace(tmp_path, interrupt_at):
    config = replace(TOY, steps=60, checkpoint_every=20)
    (full,) = run_toy(replace(config, out=str(tmp_path / "full")))
    with pytest.raises(KeyboardInterrupt):
        run_toy(replace(config, out=str(tmp_path / "cut")), progress=interrupt_at(47))
    (cut_dir,) = (tmp_path / "cut").iterdir()
    assert load_checkpoint(cut_dir / CHECKPOINT, torch.device("cpu"))["logits"].shape == (1, 6, 3)
    resumed = resume_toy(cut_dir)
    assert (resumed.status, resumed.last_step) == ("finished", 60)
    _same_trace(full.path, cut_dir)


# -- VAE ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["linear", "nonlinear"])
def test_categorical_vae_trains_with_every_estimator_to_finite_bounds(tmp_path, arch):
    summaries = run_vae(replace(VAE, arch=arch, estimators=VAE_ESTIMATORS, out=str(tmp_path)))
    assert [s.estimator for s in summaries] == list(VAE_ESTIMATORS)
    for summary in summaries:
        manifest = read_manifest(summary.path)
        assert (summary.status, manifest["latent"], manifest["arch"]) == ("finished", "categorical", arch)
        assert (manifest["config"]["latent_vars"], manifest["config"]["classes"]) == (4, 3)
        trace = read_trace(summary.path)
        assert set(trace["latent"]) == {"categorical"}
        bounds = trace.dropna(subset=["test_bound"])
        assert list(bounds["step"]) == [0, 10]
        assert bounds["test_bound"].between(-1e4, 0).all() and bounds["valid_bound"].between(-1e4, 0).all()
        assert trace["train_elbo"].iloc[1:].between(-1e4, 0).all()
        assert (trace["grad_var_resample"].dropna() > 0).all()
    concrete = read_manifest(summaries[VAE_ESTIMATORS.index("concrete")].path)
    assert concrete["relaxation"]["objective"] == "relaxed ELBO (ExpConcrete densities)"
    model, config, _ = load_checkpointed_model(summaries[0].path, torch.device("cpu"))
    assert isinstance(model, vae.VAE) and (model.latent, model.classes, model.arch) == (4, 3, arch)
    assert config == replace(VAE, arch=arch, estimators=VAE_ESTIMATORS, out=str(tmp_path))


def test_annealed_categorical_concrete_resumes_to_the_uninterrupted_trace(tmp_path, interrupt_at):
    config = replace(
        VAE, estimators=("concrete",), steps=30, var_every=30, eval_every=30, anneal="exp", anneal_rate=0.01
    )
    (full,) = run_vae(replace(config, out=str(tmp_path / "full")))
    with pytest.raises(KeyboardInterrupt):
        run_vae(replace(config, out=str(tmp_path / "cut")), progress=interrupt_at(25))
    (cut_dir,) = (tmp_path / "cut").iterdir()
    assert load_checkpoint(cut_dir / CHECKPOINT, torch.device("cpu"))["step"] == 20
    assert resume_vae(cut_dir).status == "finished"
    _same_trace(full.path, cut_dir)
    assert read_trace(full.path)["temperature"].is_monotonic_decreasing


# -- variance studies -----------------------------------------------------------------------------


def test_variance_study_on_the_categorical_toy(tmp_path):
    config = VarianceConfig(
        problem=ToyProblem(dim=10, latent="categorical", classes=4),
        theta="random",
        estimators=("rloo-dcv", "exact-baseline", "concrete"),
        ks=(2, 4),
        samples=4000,
        seed=1,
        device="cpu",
        out=str(tmp_path),
    )
    table = run_variance(config).table
    assert list(zip(table["estimator"], table["k"], strict=True)) == [
        (name, k) for k in (2, 4) for name in config.estimators
    ]
    assert set(table["latent"]) == {"categorical"} and set(table["classes"]) == {4}
    assert set(table["theta"]) == {"random"} and table["target"].isna().all()
    assert table["variance_ratio"].notna().all()  # rloo, measured as the reference, exists at every K
    dcv = table[table.estimator == "rloo-dcv"]
    assert set(dcv["alpha_source"]) == {"optimal"}
    # At a point away from uniform, α* (tuned on separate draws) makes rloo-dcv beat rloo.
    assert (dcv["variance_ratio"] < 1.0).all()
    # The same seed gives the same point and the same numbers; another seed another point.
    again = run_variance(replace(config, out=str(tmp_path / "again"))).table
    assert again["variance"].tolist() == table["variance"].tolist()
    other = run_variance(replace(config, seed=2, samples=200, out=str(tmp_path / "other"))).table
    assert other["variance"].tolist() != table["variance"].tolist()


def test_uniform_is_the_default_categorical_point():
    config = VarianceConfig(problem=ToyProblem(dim=3, latent="categorical", classes=2), estimators=("rloo",))
    assert config.theta == "uniform"
    assert VarianceConfig().theta == "0.5"  # binary: θ = ½, as before


def test_variance_at_a_categorical_vae_checkpoint_uses_the_runs_latents_and_relaxation(tmp_path):
    trained = replace(VAE, estimators=("rloo-dcv",), anneal="exp", anneal_rate=0.05, kl="analytic")
    (run,) = run_vae(replace(trained, out=str(tmp_path / "runs")))
    config = VarianceConfig(
        checkpoint=str(run.path),
        estimators=("rloo-dcv", "concrete", "st-concrete"),
        samples=200,
        device="cpu",
        out=str(tmp_path / "study"),
    )
    point = VaePoint(config, torch.device("cpu"))
    _, prior = trained.temperatures(10, "rloo-dcv")
    assert point.shape == vae.VAE(4, 3, pixels=784).problem_shape
    # rloo-dcv has no temperature: the study's relaxations start at their own (the run's --temperature)
    assert point.settings["temperature"] is None
    assert point.relaxation == {"prior_temperature": prior, "kl": "analytic", "bound": "elbo"}
    table = run_variance(config).table
    assert set(table["latent"]) == {"categorical"} and set(table["latent_vars"]) == {4}
    assert set(table["classes"]) == {3} and set(table["checkpoint_step"]) == {10}
    assert (table["variance"] > 0).all() and table["variance_ratio"].notna().all()
    assert table["estimator_state"].iloc[0] == "checkpoint"  # the run's α; the relaxations have no state
    assert table["estimator_state"].iloc[1:].isna().all()
    # An estimator without a categorical version is refused once the run's latent type is known,
    # before anything is written.
    refused = replace(config, estimators=("disarm",), out=str(tmp_path / "refused"))
    with pytest.raises(ConfigError, match="disarm has no categorical version"):
        run_variance(refused)
    assert not (tmp_path / "refused").exists()
