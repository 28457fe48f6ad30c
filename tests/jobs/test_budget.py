"""Equal-cost comparisons: each estimator at the largest K whose estimate fits a budget of f-evaluations."""

from dataclasses import replace

import pandas as pd
import pytest
import torch

from dcvbench.checkpoints import CHECKPOINT, load_checkpoint
from dcvbench.config import ToyProblem, VarianceConfig, budget_ks
from dcvbench.estimators import EstimatorError, estimator_info, estimator_names
from dcvbench.jobs.vae import resume_vae, run_vae
from dcvbench.jobs.variance import run_variance
from dcvbench.objectives import ProblemShape
from dcvbench.results import TIMING_COLUMNS, read_manifest, read_trace
from dcvbench.runtime import ConfigError
from tests.jobs.test_vae import TINY as TINY_AT_K

# test_vae.py's VAE, small enough to train in a second, at a budget instead of a K.
TINY = replace(TINY_AT_K, k=None, budget=5)


def _allowed(name: str, latent: str, k: int) -> bool:
    try:
        estimator_info(name, latent).check_k(k)
    except EstimatorError:
        return False
    return True


@pytest.mark.parametrize("shape", [ProblemShape(6), ProblemShape(3, classes=4)], ids=["bits", "classes"])
def test_each_estimator_gets_the_largest_allowed_k_within_the_budget(shape):
    # Against a search over every K: the largest allowed one whose estimate costs at most the budget.
    latent = shape.latent_type
    for name in estimator_names(latent):
        info = estimator_info(name, latent)
        allowed = [k for k in range(1, 60) if _allowed(name, latent, k)]
        for budget in range(1, 40):
            fitting = [k for k in allowed if info.evals(k, shape) <= budget]
            if fitting:
                assert budget_ks((name,), budget, shape) == {name: max(fitting)}, (name, budget)
                continue
            cheapest = f"{info.evals(allowed[0], shape)} evaluations of f at K={allowed[0]}"
            with pytest.raises(
                ConfigError, match=f"--budget {budget} is below {name}'s cheapest estimate: {cheapest}"
            ):
                budget_ks((name,), budget, shape)


def test_the_costs_that_set_k():
    # K, 2 per antithetic pair (even K), K + 1 (MuProp's f at θ), 3K (RELAX), K(1 + D) and
    # K(1 + N(C − 1)) (IndeCateR's neighbours): the rules of the registry, by hand.
    names = ("rloo", "disarm", "muprop", "relax", "indecater")
    assert budget_ks(names, 14, ProblemShape(6)) == {
        "rloo": 14,
        "disarm": 14,
        "muprop": 13,
        "relax": 4,
        "indecater": 2,
    }
    assert budget_ks(names, 15, ProblemShape(6)) == {
        "rloo": 15,
        "disarm": 14,
        "muprop": 14,
        "relax": 5,
        "indecater": 2,
    }
    categorical = ("rloo", "muprop", "indecater")
    assert budget_ks(categorical, 29, ProblemShape(3, classes=4)) == {
        "rloo": 29,
        "muprop": 28,
        "indecater": 2,
    }


def test_variance_at_equal_cost_on_the_binary_toy(tmp_path):
    estimators = ("rloo-dcv", "disarm", "muprop", "relax")
    common = {"problem": ToyProblem(dim=10), "theta": "0.7", "estimators": estimators, "samples": 500}
    config = VarianceConfig(**common, budgets=(6, 7), device="cpu", out=str(tmp_path / "budget"))
    study = run_variance(config)
    table = study.table
    chosen = {
        6: {"rloo-dcv": 6, "disarm": 6, "muprop": 5, "relax": 2},
        7: {"rloo-dcv": 7, "disarm": 6, "muprop": 6, "relax": 2},
    }
    for budget, ks in chosen.items():
        rows = table[table.budget == budget].set_index("estimator")
        assert rows["k"].to_dict() == ks
        assert rows["evals"].to_dict() == {name: estimator_info(name).evals(k) for name, k in ks.items()}
        assert (rows["evals"] <= budget).all()
        assert rows["variance_ratio"].notna().all()  # to rloo, measured as the reference at K = budget
    config_saved = read_manifest(study.path)["config"]
    assert (config_saved["budgets"], config_saved["ks"]) == ([6, 7], [])
    # A budget's block measures what --k measures at the same K, on the same draws; at budget 6 the
    # reference is rloo at K = 6, as --k 6's.
    by_k = run_variance(VarianceConfig(**common, ks=(6,), device="cpu", out=str(tmp_path / "k"))).table
    assert by_k["budget"].isna().all()
    same_k = table[(table.budget == 6) & (table.k == 6)].set_index("estimator")
    assert set(same_k.index) == {"rloo-dcv", "disarm"}
    compared = ["variance", "variance_ratio"]
    assert same_k[compared].to_dict() == by_k.set_index("estimator").loc[same_k.index, compared].to_dict()


def test_variance_at_equal_cost_on_the_categorical_toy(tmp_path):
    # IndeCateR evaluates f at the 3 × 2 one-variable changes of each sample too: 7 per sample.
    problem = ToyProblem(latent="categorical", dim=3, classes=3)
    config = VarianceConfig(
        problem=problem,
        estimators=("rloo", "muprop", "indecater"),
        budgets=(14,),
        samples=300,
        device="cpu",
        out=str(tmp_path),
    )
    rows = run_variance(config).table.set_index("estimator")
    assert rows["k"].to_dict() == {"rloo": 14, "muprop": 13, "indecater": 2}
    assert rows["evals"].to_dict() == {"rloo": 14, "muprop": 14, "indecater": 14}
    assert (rows["variance"] > 0).all() and (rows["budget"] == 14).all()


def test_variance_at_equal_cost_at_a_vae_checkpoint(tmp_path):
    (run,) = run_vae(
        replace(TINY, estimators=("rloo",), steps=10, checkpoint_every=10, out=str(tmp_path / "runs"))
    )
    common = {"checkpoint": str(run.path), "samples": 50, "device": "cpu"}
    config = VarianceConfig(
        **common, estimators=("disarm", "muprop", "relax"), budgets=(5,), out=str(tmp_path / "study")
    )
    rows = run_variance(config).table.set_index("estimator")
    assert rows["k"].to_dict() == {"disarm": 4, "muprop": 4, "relax": 1}
    assert rows["evals"].to_dict() == {"disarm": 4, "muprop": 5, "relax": 3}
    assert rows["variance_ratio"].notna().all()
    # The checkpoint's 8 bits make IndeCateR's cheapest estimate 9 evaluations: refused once they are
    # known, before anything is written.
    too_small = VarianceConfig(
        **common, estimators=("indecater",), budgets=(5,), out=str(tmp_path / "refused")
    )
    with pytest.raises(ConfigError, match="--budget 5 is below indecater's cheapest estimate: 9 evaluations"):
        run_variance(too_small)
    assert not (tmp_path / "refused").exists()


def test_vae_runs_at_equal_cost_record_the_budget_and_their_k(tmp_path):
    config = replace(TINY, estimators=("rloo", "disarm", "muprop"), steps=20, out=str(tmp_path / "budget"))
    summaries = run_vae(config)
    assert [s.status for s in summaries] == ["finished"] * 3
    ks, evals = {"rloo": 5, "disarm": 4, "muprop": 4}, {"rloo": 5, "disarm": 4, "muprop": 5}
    for summary in summaries:
        manifest = read_manifest(summary.path)
        name = manifest["estimator"]
        assert (manifest["k"], manifest["evals"], summary.k) == (ks[name], evals[name], ks[name])
        assert (manifest["config"]["budget"], manifest["config"]["k"]) == (5, None)
        assert "-budget5-" in summary.path.name
        assert set(read_trace(summary.path)["k"]) == {ks[name]}
    # rloo at budget 5 trains exactly as rloo at K = 5.
    (at_k,) = run_vae(replace(config, estimators=("rloo",), budget=None, k=5, out=str(tmp_path / "k")))
    pd.testing.assert_frame_equal(
        read_trace(summaries[0].path).drop(columns=TIMING_COLUMNS),
        read_trace(at_k.path).drop(columns=TIMING_COLUMNS),
    )


def test_a_vae_run_at_equal_cost_resumes_at_its_k(tmp_path, interrupt_at):
    config = replace(TINY, estimators=("muprop",))  # budget 5: K = 4
    (full,) = run_vae(replace(config, out=str(tmp_path / "full")))
    with pytest.raises(KeyboardInterrupt):
        run_vae(replace(config, out=str(tmp_path / "cut")), progress=interrupt_at(31))
    (cut_dir,) = (tmp_path / "cut").iterdir()
    assert load_checkpoint(cut_dir / CHECKPOINT, torch.device("cpu"))["step"] == 20
    resumed = resume_vae(cut_dir)
    assert (resumed.status, resumed.k, read_manifest(cut_dir)["k"]) == ("finished", 4, 4)
    pd.testing.assert_frame_equal(
        read_trace(full.path).drop(columns=TIMING_COLUMNS), read_trace(cut_dir).drop(columns=TIMING_COLUMNS)
    )
