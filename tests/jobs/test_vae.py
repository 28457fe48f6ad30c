"""The VAE job end to end on the embedded data, with a tiny model."""

import json
from dataclasses import replace

import pandas as pd
import pytest
import torch

import dcvbench.jobs.trainer
from dcvbench.checkpoints import CHECKPOINT, load_checkpoint
from dcvbench.config import VaeConfig
from dcvbench.jobs.vae import VAE_METRICS, load_checkpointed_model, resume_vae, run_vae
from dcvbench.problems.vae import VAE
from dcvbench.results import TIMING_COLUMNS, ResultsError, read_manifest, read_trace
from dcvbench.runtime import ConfigError

TINY = VaeConfig.for_protocol(
    "dcv",
    latent_vars=8,
    batch_size=20,
    steps=40,
    log_every=10,
    var_every=20,
    eval_every=20,
    checkpoint_every=20,
    var_samples=8,
    eval_samples=5,
    device="cpu",
)


def test_vae_run_writes_every_metric(tmp_path):
    config = replace(TINY, estimators=("rloo", "rloo-dcv"), out=str(tmp_path))
    summaries = run_vae(config)
    assert [s.status for s in summaries] == ["finished", "finished"]
    for summary in summaries:
        manifest = read_manifest(summary.path)
        assert manifest["dataset"] == "mnist-subset"
        assert (manifest["config"]["latent"], manifest["config"]["latent_vars"]) == ("binary", 8)
        assert manifest["latent"] == "binary" and manifest["config"]["classes"] is None
        trace = read_trace(summary.path)
        assert set(VAE_METRICS) <= set(trace.columns)
        assert list(trace["step"]) == [0, 10, 20, 30, 40]
        assert trace["test_bound"].notna().tolist() == [True, False, True, False, True]
        assert trace["grad_var_resample"].notna().sum() == 3
        assert trace["train_elbo"].iloc[1:].notna().all()
        evaluated = trace.dropna(subset=["test_bound"])
        assert (evaluated["test_bound"] < 0).all()
        assert (summary.path / CHECKPOINT).exists()
    # What an estimator reports becomes its run's columns: rloo-dcv's α, and nothing for rloo.
    dcv = read_trace(summaries[1].path)
    assert dcv["alpha"].notna().all()
    assert not {"alpha", "train_bound", "temperature"} & set(read_trace(summaries[0].path).columns)


def test_a_mean_stat_is_averaged_over_the_steps_since_the_last_row(tmp_path, monkeypatch):
    # vimco reports the K-sample bound it trains ("mean"): each row holds its mean since the last row.
    bounds = []
    original = dcvbench.jobs.trainer.train_step

    def recording(*args, **kwargs):
        output = original(*args, **kwargs)
        bounds.append(float(output.estimate.stats["train_bound"]))
        return output

    monkeypatch.setattr(dcvbench.jobs.trainer, "train_step", recording)
    config = replace(TINY, estimators=("vimco",), steps=20, log_every=5, var_method="ema", out=str(tmp_path))
    (summary,) = run_vae(config)
    trace = read_trace(summary.path)
    assert list(trace["step"]) == [0, 5, 10, 15, 20] and pd.isna(trace["train_bound"].iloc[0])
    expected = [sum(bounds[i : i + 5]) / 5 for i in range(0, 20, 5)]
    assert trace["train_bound"].iloc[1:].tolist() == pytest.approx(expected, rel=1e-6)


def test_interrupted_run_resumes_to_the_uninterrupted_trace(tmp_path, interrupt_at):
    config = replace(TINY, estimators=("rloo-dcv",))
    (full,) = run_vae(replace(config, out=str(tmp_path / "full")))
    with pytest.raises(KeyboardInterrupt):
        run_vae(replace(config, out=str(tmp_path / "cut")), progress=interrupt_at(31))
    (cut_dir,) = (tmp_path / "cut").iterdir()
    manifest = read_manifest(cut_dir)
    assert manifest["status"] == "interrupted"
    assert manifest["last_step"] == 30
    assert load_checkpoint(cut_dir / CHECKPOINT, torch.device("cpu"))["step"] == 20

    resumed = resume_vae(cut_dir)
    assert resumed.status == "finished"
    assert read_manifest(cut_dir)["resumes"][0]["from_step"] == 20
    pd.testing.assert_frame_equal(
        read_trace(full.path).drop(columns=TIMING_COLUMNS), read_trace(cut_dir).drop(columns=TIMING_COLUMNS)
    )


def test_same_seed_same_trace(tmp_path):
    config = replace(TINY, estimators=("disarm",), steps=20)
    (a,) = run_vae(replace(config, out=str(tmp_path / "a")))
    (b,) = run_vae(replace(config, out=str(tmp_path / "b")))
    pd.testing.assert_frame_equal(
        read_trace(a.path).drop(columns=TIMING_COLUMNS), read_trace(b.path).drop(columns=TIMING_COLUMNS)
    )


def test_disarm_protocol_settings(tmp_path):
    config = VaeConfig.for_protocol(
        "disarm", steps=5, latent_vars=8, eval_samples=2, var_samples=4, out=str(tmp_path), device="cpu"
    )
    assert (config.batch_size, config.encoder_lr, config.learn_prior) == (50, 1e-4, True)
    assert VaeConfig.for_protocol("disarm", batch_size=7).batch_size == 7  # explicit wins
    (summary,) = run_vae(replace(config, eval_every=5, var_every=5))
    assert summary.status == "finished"


def test_resume_refuses_what_it_cannot_resume(tmp_path, interrupt_at):
    with pytest.raises(ResultsError, match=r"run\.json is missing"):
        resume_vae(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run_vae(
            replace(TINY, estimators=("rloo",), steps=20, checkpoint_every=10, out=str(tmp_path)),
            interrupt_at(15),
        )
    (run_dir,) = tmp_path.iterdir()
    (run_dir / CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot load checkpoint"):
        resume_vae(run_dir)
    (run_dir / CHECKPOINT).unlink()
    with pytest.raises(ConfigError, match=r"no checkpoint\.pt"):
        resume_vae(run_dir)


def test_a_run_written_before_categorical_latents_still_loads(tmp_path):
    config = replace(TINY, estimators=("rloo",), steps=10, checkpoint_every=10, out=str(tmp_path))
    (summary,) = run_vae(config)
    # Its manifest as dcvbench wrote it then: "latent" was the number of bits, and nothing else said so.
    manifest = read_manifest(summary.path)
    old = {key: value for key, value in manifest["config"].items() if key not in ("latent_vars", "classes")}
    (summary.path / "run.json").write_text(json.dumps({**manifest, "config": {**old, "latent": 8}}))
    model, loaded, _ = load_checkpointed_model(summary.path, torch.device("cpu"))
    assert isinstance(model, VAE) and (model.latent, model.classes) == (8, None)
    assert loaded == config


def test_resuming_a_finished_run_changes_nothing(tmp_path):
    (summary,) = run_vae(replace(TINY, estimators=("rloo",), steps=10, out=str(tmp_path)))
    before = {path: path.read_bytes() for path in summary.path.rglob("*") if path.is_file()}
    resumed = resume_vae(summary.path)
    assert (resumed.status, resumed.last_step, resumed.metrics) == ("finished", 10, summary.metrics)
    assert {path: path.read_bytes() for path in summary.path.rglob("*") if path.is_file()} == before


def test_divergence_stops_only_that_run(tmp_path, poison_estimator):
    # rloo's 7th training estimate is NaN: the encoder is NaN from step 7 on, so the mean training
    # ELBO of steps 6–10 is NaN at the row of step 10; rloo-dcv, the next run, is untouched.
    poison_estimator(dcvbench.jobs.trainer, "rloo", rows=TINY.batch_size, after=7)
    config = replace(TINY, estimators=("rloo", "rloo-dcv"), steps=20, log_every=5, out=str(tmp_path))
    diverged, finished = run_vae(config)
    manifest = read_manifest(diverged.path)
    assert diverged.status == "diverged" == manifest["status"]
    assert (manifest["diverged_at"], manifest["non_finite"]) == (10, "train_elbo")
    assert list(read_trace(diverged.path)["step"]) == [0, 5]
    assert not (diverged.path / CHECKPOINT).exists()  # nothing non-finite was checkpointed
    assert finished.status == "finished"
    trace = read_trace(finished.path)
    assert list(trace["step"]) == [0, 5, 10, 15, 20]
    assert trace["train_elbo"].iloc[1:].notna().all()


# Short runs of the relaxed estimators: evaluation at the start and the end only.
RELAXED = replace(TINY, steps=30, var_every=30, eval_every=30, checkpoint_every=10)
FAST_ANNEAL = {"anneal": "exp", "anneal_rate": 0.01, "anneal_floor": 0.3}  # 2/3 → 0.49 in 30 steps


def _finite_bounds(trace: pd.DataFrame) -> bool:
    bounds = trace.dropna(subset=["test_bound"])
    return list(bounds["step"]) == [0, 30] and bool(bounds["test_bound"].between(-1e4, 0).all())


def test_relaxed_runs_anneal_and_record_their_relaxation(tmp_path):
    config = replace(
        RELAXED, estimators=("concrete", "st-concrete", "rloo"), out=str(tmp_path), **FAST_ANNEAL
    )
    concrete, straight_through, rloo = run_vae(config)
    schedule = [config.temperatures(step, "concrete")[0] for step in (0, 10, 20, 30)]
    assert schedule[0] == 2 / 3 and schedule[-1] < 0.5  # the posterior's default start, annealed
    for summary, objective in (
        (concrete, "relaxed ELBO (Concrete densities)"),
        (straight_through, "discrete ELBO at hard samples, gradient through the relaxed sample"),
    ):
        relaxation = read_manifest(summary.path)["relaxation"]
        assert relaxation["objective"] == objective
        assert relaxation["posterior_temperature"] == 2 / 3
        assert (relaxation["anneal"], relaxation["anneal_rate"], relaxation["anneal_floor"]) == (
            "exp",
            0.01,
            0.3,
        )
        trace = read_trace(summary.path)
        assert trace["temperature"].tolist() == schedule  # strictly decreasing, logged at every row
        assert _finite_bounds(trace)
    assert read_manifest(concrete.path)["relaxation"]["prior_temperature"] == 0.5
    assert read_manifest(straight_through.path)["relaxation"]["prior_temperature"] is None  # not used
    assert "relaxation" not in read_manifest(rloo.path)
    assert "temperature" not in read_trace(rloo.path)  # rloo reports no temperature


def test_concrete_at_two_temperatures_and_with_the_analytic_kl(tmp_path):
    hot = replace(RELAXED, estimators=("concrete",), out=str(tmp_path / "hot"))
    cold = replace(hot, estimator_settings={**hot.estimator_settings, "temperature": 0.5}, kl="analytic")
    for config, temperature, objective, prior in (
        (hot, 2 / 3, "relaxed ELBO (Concrete densities)", 0.5),
        (replace(cold, out=str(tmp_path / "cold")), 0.5, "relaxed reconstruction + analytic KL", None),
    ):
        (summary,) = run_vae(config)
        relaxation = read_manifest(summary.path)["relaxation"]
        assert (relaxation["objective"], relaxation["prior_temperature"]) == (objective, prior)
        assert (relaxation["anneal"], relaxation["anneal_rate"]) == ("none", None)
        trace = read_trace(summary.path)
        assert (trace["temperature"] == temperature).all()
        assert _finite_bounds(trace)


def test_annealed_run_resumes_to_the_uninterrupted_trace(tmp_path, interrupt_at):
    config = replace(RELAXED, estimators=("concrete",), **FAST_ANNEAL)
    (full,) = run_vae(replace(config, out=str(tmp_path / "full")))
    with pytest.raises(KeyboardInterrupt):
        run_vae(replace(config, out=str(tmp_path / "cut")), progress=interrupt_at(25))
    (cut_dir,) = (tmp_path / "cut").iterdir()
    assert load_checkpoint(cut_dir / CHECKPOINT, torch.device("cpu"))["step"] == 20
    assert resume_vae(cut_dir).status == "finished"
    pd.testing.assert_frame_equal(
        read_trace(full.path).drop(columns=TIMING_COLUMNS), read_trace(cut_dir).drop(columns=TIMING_COLUMNS)
    )
