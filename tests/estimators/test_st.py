"""Plain straight-through (``st``), for bits and for classes: the estimator of the worked example in
docs/adding-an-estimator.md, checked against the trick it implements and run by every job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from dcvbench.cli import main
from dcvbench.estimators import estimator_info, estimator_names, get_estimator
from dcvbench.latent import family_named
from dcvbench.measure.variance import resample_variance
from dcvbench.problems.categorical_toy import (
    CATEGORICAL_OBJECTIVES,
    make_categorical_objective,
    random_categorical_logits,
)
from dcvbench.problems.toy import OBJECTIVES, exact_gradient, make_objective

DIM = 6  # bits
VARIABLES, CLASSES = 4, 3  # categorical variables


def _case(latent: str, objective: str):
    """Logits ``[3, *event]`` away from ½ / uniform, and a toy objective of that latent type."""
    if latent == "binary":
        logits = 1.5 * torch.randn(3, DIM, generator=torch.Generator().manual_seed(17), dtype=torch.float64)
        return logits, make_objective(objective, DIM)
    logits = random_categorical_logits(VARIABLES, CLASSES, seed=17, rows=3)
    return logits, make_categorical_objective(objective, VARIABLES, CLASSES)


CASES = [("binary", name) for name in OBJECTIVES] + [("categorical", name) for name in CATEGORICAL_OBJECTIVES]


@pytest.mark.parametrize(("latent", "objective"), CASES)
def test_st_is_the_gradient_of_the_straight_through_trick(latent: str, objective: str):
    logits, f = _case(latent, objective)
    family = family_named(latent)
    estimator = get_estimator("st", latent=latent)
    noise = estimator.sample(logits, 4, torch.Generator().manual_seed(3))  # [K, B, *event]
    estimate = estimator.estimate(logits, f, noise)

    # The trick itself, by autograd: the hard sample forward, b + p − stop_gradient(p) backward.
    eta = logits.clone().requires_grad_(True)
    probs = family.probs(eta)
    hard = family.sample(logits, noise)
    (expected,) = torch.autograd.grad(f(hard + probs - probs.detach()).mean(0).sum(), eta)
    assert_close(estimate.grad, expected, rtol=1e-12, atol=1e-14)
    assert_close(estimate.values, f(hard))


@pytest.mark.parametrize("latent", ["binary", "categorical"])
def test_st_is_exact_for_an_objective_linear_in_b(latent: str):
    logits, _ = _case(latent, "separable")
    family = family_named(latent)
    weights = torch.randn(logits.shape[1:], generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    def linear(b: torch.Tensor) -> torch.Tensor:
        return family.reduce(b * weights)  # [K, B]

    eta = logits.clone().requires_grad_(True)
    (exact,) = torch.autograd.grad(linear(family.probs(eta)).sum(), eta)  # E f = ⟨w, p⟩ per row
    estimate = get_estimator("st", latent=latent)(logits, linear, 1, torch.Generator().manual_seed(0))
    assert_close(estimate.grad, exact, rtol=1e-12, atol=1e-14)


def test_st_is_biased_where_f_is_not_linear():
    # Registered as biased, and it is: on the quadratic form its mean is far from the exact gradient
    # (z-scores from the mean's own standard error over 4,000 draws; unbiased would be |z| ≲ 4).
    logits, f = _case("binary", "quadratic-form")
    assert not estimator_info("st").unbiased
    measured = resample_variance(get_estimator("st"), logits, f, 2, 4000, torch.Generator().manual_seed(1))
    assert float(measured.bias_z(exact_gradient(f, logits)).max()) > 10


@pytest.mark.parametrize("latent", ["binary", "categorical"])
def test_st_runs_in_every_job_and_is_listed(latent: str, tmp_path: Path, capsys):
    assert "st" in estimator_names(latent)
    sizes = ["--latent", latent] + (["--classes", "3"] if latent == "categorical" else [])
    common = ["--estimator", "st", "--seed", "1", "--device", "cpu", "--quiet"]
    toy = ["toy", *sizes, "--dim", "5", "--steps", "20", "--var-every", "10", "--var-samples", "20"]
    vae = ["vae", *sizes, "--latent-vars", "4", "--batch-size", "8", "--steps", "4", "--log-every", "2"]
    vae += ["--eval-every", "4", "--eval-samples", "2", "--var-every", "4", "--var-samples", "3"]
    variance = ["variance", *sizes, "--dim", "5", "--samples", "50"]
    for job, argv in (("toy", toy), ("vae", vae), ("variance", variance)):
        assert main([*argv, *common, "--out", str(tmp_path / job)]) == 0
        (manifest,) = (tmp_path / job).glob("*/run.json")
        assert json.loads(manifest.read_text())["status"] == "finished"
    assert main(["estimators", "--latent", latent]) == 0
    assert "st " in capsys.readouterr().out
