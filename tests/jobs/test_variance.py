"""The variance study end to end, through the library."""

import os

import pytest

from dcvbench.config import ToyProblem, VarianceConfig
from dcvbench.jobs.variance import run_variance
from dcvbench.results import read_manifest, read_table
from tests.jobs.conftest import RecordingProgress

# Against the toy's exact gradient (dcvbench.measure.variance.GradientQuality).
QUALITY_COLUMNS = ("bias_norm", "bias_norm_se", "mse", "mse_se", "cosine", "cosine_se")
COLUMNS = {
    "estimator",
    "k",
    "evals",
    "variance",
    "variance_ratio",
    "cost_variance",
    "bias_max_z",
    "bias_mean_z",
    *QUALITY_COLUMNS,
    "seconds_per_estimate",
}


def test_variance_table_has_the_promised_columns_and_rows(tmp_path):
    config = VarianceConfig(
        problem=ToyProblem(dim=20),
        theta="0.7",
        estimators=("rloo-dcv", "disarm", "muprop"),
        ks=(2, 4),
        samples=2000,
        seed=3,
        device="cpu",
        out=str(tmp_path),
    )
    study = run_variance(config)
    assert read_manifest(study.path)["status"] == "finished"
    table = read_table(study.path / "variance.parquet")
    assert set(table.columns) >= COLUMNS
    assert list(zip(table["estimator"], table["k"], strict=True)) == [
        ("rloo-dcv", 2),
        ("disarm", 2),
        ("muprop", 2),
        ("rloo-dcv", 4),
        ("disarm", 4),
        ("muprop", 4),
    ]
    assert table.loc[table.estimator == "muprop", "evals"].tolist() == [3, 5]
    assert (table["cost_variance"] == table["variance"] * table["evals"]).all()
    dcv = table[table.estimator == "rloo-dcv"]
    assert set(dcv["alpha_source"]) == {"optimal"}
    # rloo was not asked for but is the reference of every ratio: the ratios exist.
    assert table["variance_ratio"].notna().all()
    assert table[list(QUALITY_COLUMNS)].notna().all().all()
    assert ((table["cosine"] > -1) & (table["cosine"] < 1) & (table["bias_norm"] >= 0)).all()


def test_fixed_alpha_is_used_as_given(tmp_path):
    config = VarianceConfig(
        problem=ToyProblem(dim=10),
        estimators=("rloo", "rloo-dcv"),
        samples=500,
        device="cpu",
        estimator_settings={"alpha": -0.005},
        out=str(tmp_path),
    )
    table = run_variance(config).table
    dcv = table[table.estimator == "rloo-dcv"].iloc[0]
    assert dcv["alpha"] == pytest.approx(-0.005)
    assert dcv["alpha_source"] == "fixed"
    assert table[table.estimator == "rloo"]["variance_ratio"].tolist() == [1.0]


def test_random_theta_is_seeded(tmp_path):
    config = VarianceConfig(
        problem=ToyProblem(dim=10), theta="random", estimators=("rloo",), samples=200, device="cpu"
    )
    from dataclasses import replace

    a = run_variance(replace(config, out=str(tmp_path / "a"))).table
    b = run_variance(replace(config, out=str(tmp_path / "b"))).table
    assert a["variance"].tolist() == b["variance"].tolist()


def test_vae_checkpoint_study_pairs_estimators_at_the_snapshot(tmp_path):
    from dcvbench.config import VaeConfig
    from dcvbench.jobs.vae import run_vae

    vae = VaeConfig.for_protocol(
        "dcv", latent_vars=8, batch_size=20, steps=20, checkpoint_every=20, eval_samples=2, var_samples=4,
        device="cpu", estimators=("rloo",), out=str(tmp_path / "runs"),
    )  # fmt: skip
    (run,) = run_vae(vae)
    config = VarianceConfig(
        checkpoint=str(run.path),
        estimators=("rloo-dcv", "disarm"),
        ks=(2,),
        samples=200,
        device="cpu",
        out=str(tmp_path / "study"),
    )
    progress = RecordingProgress()
    table = run_variance(config, progress).table
    # Progress by draws, not by estimator: a checkpoint's draws are slow. rloo is measured as reference.
    assert progress.plans == [(1, 3 * config.samples)]
    assert progress.advanced == 3 * config.samples
    assert table["problem"].tolist() == ["vae", "vae"]
    assert table["checkpoint_step"].tolist() == [20, 20]
    assert (table["variance"] > 0).all() and (table["logit_variance"] > 0).all()
    assert table["variance_ratio"].notna().all() and table["logit_variance_ratio"].notna().all()
    assert table.loc[0, "alpha_source"] == "optimal"
    assert not set(QUALITY_COLUMNS) & set(table.columns)  # no exact gradient here: no quality columns
    # α* minimises the variance: fixing α = 0 (plain rloo) cannot do better, beyond noise.
    assert table.loc[0, "variance_ratio"] < 1.0


def test_vae_study_refuses_toy_only_estimators_and_bad_checkpoints(tmp_path):
    from dcvbench.results import ResultsError
    from dcvbench.runtime import ConfigError

    with pytest.raises(ConfigError, match="toy and user problems only"):
        VarianceConfig(checkpoint="anything", estimators=("exact-baseline",))
    (tmp_path / "checkpoint.pt").write_bytes(b"junk")
    with pytest.raises(ResultsError, match=r"run\.json is missing"):
        run_variance(VarianceConfig(checkpoint=str(tmp_path / "checkpoint.pt"), device="cpu"))


def test_learned_controls_are_measured_fresh_on_the_toy(tmp_path):
    config = VarianceConfig(
        problem=ToyProblem(dim=10),
        theta="0.7",
        estimators=("relax", "rebar"),
        ks=(1, 2),
        samples=1000,
        device="cpu",
        out=str(tmp_path),
    )
    table = run_variance(config).table
    assert list(zip(table["estimator"], table["k"], strict=True)) == [
        ("relax", 1),
        ("rebar", 1),
        ("relax", 2),
        ("rebar", 2),
    ]
    assert table["evals"].tolist() == [3, 3, 6, 6]
    assert set(table["estimator_state"]) == {"fresh"}
    assert (table["variance"] > 0).all() and table["alpha_source"].isna().all()
    # A fresh relax has rebar's control exactly (r_ψ's output starts at zero): same draws, same numbers.
    relax, rebar = table[table.estimator == "relax"], table[table.estimator == "rebar"]
    assert relax["variance"].tolist() == rebar["variance"].tolist()
    # rloo, the reference of K = 2, has no state to load; K = 1 has no reference (rloo needs K ≥ 2).
    assert table.loc[table.k == 1, "variance_ratio"].isna().all()
    assert table.loc[table.k == 2, "variance_ratio"].notna().all()


def test_tune_steps_train_learned_parts_at_the_point_before_measuring(tmp_path):
    def study(tune_steps: int):
        config = VarianceConfig(
            problem=ToyProblem(dim=10),
            theta="0.7",
            estimators=("reinforce", "reinforce-ema", "rloo-dcv"),
            ks=(2,),
            samples=2000,
            tune_steps=tune_steps,
            device="cpu",
            out=str(tmp_path / str(tune_steps)),
        )
        return run_variance(config).table.set_index("estimator")

    fresh, tuned = study(0), study(300)
    # A fresh running baseline is 0: reinforce-ema is reinforce on the same draws.
    assert fresh.loc["reinforce-ema", "variance"] == fresh.loc["reinforce", "variance"]
    assert fresh.loc["reinforce-ema", "estimator_state"] == "fresh"
    # Trained at the point, the baseline nears E f and removes nearly all of the variance (measured:
    # 1.4e-6×: the toy's f = Σ (b − t)² with t near ½ barely varies around its mean).
    assert tuned.loc["reinforce-ema", "estimator_state"] == "tuned 300 steps"
    assert tuned.loc["reinforce-ema", "variance"] < 0.5 * fresh.loc["reinforce-ema", "variance"]
    # What has no learned state, or a control variate's α (set to its optimum), is not tuned.
    assert tuned.loc["reinforce", "variance"] == fresh.loc["reinforce", "variance"]
    assert tuned.loc["rloo-dcv", "variance"] == fresh.loc["rloo-dcv", "variance"]
    assert tuned.loc["rloo-dcv", "estimator_state"] == "fresh"


def test_vae_checkpoint_study_loads_the_runs_trained_control(tmp_path):
    import torch

    from dcvbench.checkpoints import load_checkpoint
    from dcvbench.config import VaeConfig
    from dcvbench.estimators import build_estimator, default_settings
    from dcvbench.jobs.vae import run_vae
    from dcvbench.jobs.variance import VaePoint
    from dcvbench.objectives import ProblemShape

    vae = VaeConfig.for_protocol(
        "dcv", latent_vars=8, batch_size=20, steps=20, checkpoint_every=20, eval_samples=2, var_samples=4,
        device="cpu", estimators=("relax",), out=str(tmp_path / "runs"),
        estimator_settings={"control_lr": 1e-2},
    )  # fmt: skip
    (run,) = run_vae(vae)
    config = VarianceConfig(
        checkpoint=str(run.path),
        estimators=("relax", "rebar"),
        ks=(2,),
        samples=100,
        device="cpu",
        out=str(tmp_path / "study"),
    )
    table = run_variance(config).table
    assert table["estimator"].tolist() == ["relax", "rebar"]
    assert table["estimator_state"].tolist() == ["checkpoint", "fresh"]
    assert (table["variance"] > 0).all() and table["variance_ratio"].notna().all()
    # What was loaded is the run's control after its 20 steps, not the initial one.
    saved = load_checkpoint(run.path / "checkpoint.pt", torch.device("cpu"))["estimator"]
    point = VaePoint(config, torch.device("cpu"))
    assert point.shape == ProblemShape(8, context=784)
    relax, rebar = (
        build_estimator(name, default_settings("vae"), point.shape) for name in ("relax", "rebar")
    )
    fresh = float(relax.log_temperature.detach())
    assert point.restore("relax", relax) and not point.restore("rebar", rebar)
    assert float(relax.log_temperature.detach()) == float(saved["log_temperature"]) != fresh
    for key, value in relax.state_dict().items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, saved[key]), key


def _small_vae(tmp_path, latent_vars: int, estimator: str = "rloo", steps: int = 20):
    from dcvbench.config import VaeConfig
    from dcvbench.jobs.vae import run_vae

    vae = VaeConfig.for_protocol(
        "dcv", latent_vars=latent_vars, batch_size=20, steps=steps, checkpoint_every=steps, eval_samples=2,
        var_samples=4, device="cpu", estimators=(estimator,), out=str(tmp_path / f"runs-{latent_vars}"),
    )  # fmt: skip
    (run,) = run_vae(vae)
    return run


def test_vae_checkpoint_with_exact_reports_quality_against_the_enumerated_gradient(tmp_path):
    run = _small_vae(tmp_path, latent_vars=8)  # 2⁸ codes
    config = VarianceConfig(
        checkpoint=str(run.path),
        estimators=("rloo", "disarm", "concrete"),
        ks=(2,),
        samples=2000,
        seed=1,
        device="cpu",
        out=str(tmp_path / "study"),
        exact=True,
    )
    table = run_variance(config).table.set_index("estimator")
    assert table[list(QUALITY_COLUMNS)].notna().all().all()
    # Unbiased estimators: a bias norm consistent with 0 (k = 7: tests/measure/test_gradient_quality.py).
    for name in ("rloo", "disarm"):
        assert table.loc[name, "bias_norm"] <= 7 * table.loc[name, "bias_norm_se"], name
    assert table.loc["concrete", "bias_norm"] > 7 * table.loc["concrete", "bias_norm_se"]
    # The quality is that of g / B over all rows' logits, as logit_variance: MSE = ‖bias‖² + tr Var.
    import torch

    from dcvbench.jobs.variance import VaePoint

    point = VaePoint(config, torch.device("cpu"))
    scale = float((point.exact / 20).square().sum())
    for name, row in table.iterrows():
        added = row["bias_norm"] ** 2 * scale + 20 * 8 * row["logit_variance"]
        assert abs(row["mse"] - added) < row["mse_se"], name


def test_exact_is_refused_without_a_checkpoint_and_where_the_codes_are_too_many(tmp_path):
    from dcvbench.runtime import ConfigError

    with pytest.raises(ConfigError, match="--exact is for a --checkpoint"):
        VarianceConfig(exact=True)
    run = _small_vae(tmp_path, latent_vars=17, steps=2)  # 131,072 codes
    config = VarianceConfig(checkpoint=str(run.path), device="cpu", out=str(tmp_path / "study"), exact=True)
    with pytest.raises(ConfigError, match="131,072 codes, more than 65,536"):
        run_variance(config)
    assert not (tmp_path / "study").exists()  # refused before anything is written


@pytest.mark.parametrize("theta", ["1e-06", "0.999999"])
def test_a_reference_without_variance_leaves_the_ratios_undefined_and_keeps_the_study(tmp_path, theta):
    # θ this close to 0 or 1: every draw of every sample is the same code, so rloo's estimate is a
    # constant (variance exactly 0), while concrete's relaxed samples still vary.
    from dcvbench.plot import plot_results

    config = VarianceConfig(
        problem=ToyProblem(dim=4),
        theta=theta,
        estimators=("rloo", "disarm", "concrete"),
        samples=200,
        device="cpu",
        out=str(tmp_path),
    )
    study = run_variance(config)
    assert read_manifest(study.path)["status"] == "finished"
    table = read_table(study.path / "variance.parquet").set_index("estimator")
    assert table.loc["rloo", "variance"] == 0 and table.loc["concrete", "variance"] > 0
    assert table["variance_ratio"].isna().all()  # undefined: neither 0 / 0 nor an infinite ratio
    # plot reads the study, and its summary keeps the ratio undefined.
    report = plot_results(tmp_path)
    assert report.skipped == []
    assert report.variance["variance_ratio_mean"].isna().all()


def test_a_checkpoint_replaced_by_pickled_code_is_refused_before_anything_is_written(tmp_path):
    from dcvbench.runtime import ConfigError
    from tests.test_checkpoints import REFUSED, shell_checkpoint

    run = _small_vae(tmp_path, latent_vars=8, steps=2)
    witness = shell_checkpoint(run.path)
    config = VarianceConfig(checkpoint=str(run.path), device="cpu", out=str(tmp_path / "study"))
    with pytest.raises(ConfigError, match=REFUSED.format(f"{os.system.__module__}.system")) as caught:
        run_variance(config)
    assert "\n" not in str(caught.value) and "weights_only" not in str(caught.value)
    assert not witness.exists()
    assert not (tmp_path / "study").exists()
