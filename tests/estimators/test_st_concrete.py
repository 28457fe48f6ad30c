"""Straight-through Concrete (``st-concrete``), for bits and for classes: the discrete ``f`` at the hard
sample forward, the relaxed sample's Jacobian backward — the gradient of ``f(b + z − stop_gradient(z))``."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from dcvbench.estimators import EstimatorError, get_estimator
from dcvbench.latent.noise import gumbel_from_uniform, logistic_from_uniform
from dcvbench.problems.categorical_toy import (
    CATEGORICAL_OBJECTIVES,
    make_categorical_objective,
    random_categorical_logits,
)
from dcvbench.problems.toy import OBJECTIVES, make_objective

DIM = 6  # bits
VARIABLES, CLASSES = 4, 3  # categorical variables


def _binary_case(objective: str):
    generator = torch.Generator().manual_seed(17)
    logits = 1.5 * torch.randn(3, DIM, generator=generator, dtype=torch.float64)  # [B, D]
    return logits, make_objective(objective, DIM)


def _categorical_case(objective: str):
    logits = random_categorical_logits(VARIABLES, CLASSES, seed=17, rows=3)  # [B, N, C]
    return logits, make_categorical_objective(objective, VARIABLES, CLASSES)


def _straight_through_by_autograd(
    latent: str, logits: torch.Tensor, f, noise: torch.Tensor, temperature: float
):
    """The straight-through trick itself: autograd through ``f(b + z − stop_gradient(z))``."""
    eta = logits.clone().requires_grad_(True)
    if latent == "binary":
        z = torch.sigmoid((eta + logistic_from_uniform(noise)) / temperature)  # [K, B, D]
        hard = (z > 0.5).to(z.dtype)
    else:
        z = torch.softmax((eta + gumbel_from_uniform(noise)) / temperature, -1)  # [K, B, N, C]
        hard = torch.nn.functional.one_hot(z.argmax(-1), CLASSES).to(z.dtype)
    (grad,) = torch.autograd.grad(f(hard + z - z.detach()).mean(0).sum(), eta)
    return grad, f(hard)


CASES = [("binary", objective) for objective in OBJECTIVES]
CASES += [("categorical", objective) for objective in CATEGORICAL_OBJECTIVES]


@pytest.mark.parametrize(("latent", "objective"), CASES)
@pytest.mark.parametrize("temperature", [0.4, 0.7])
def test_st_concrete_is_hard_forward_relaxed_backward(latent: str, objective: str, temperature: float):
    logits, f = (_binary_case if latent == "binary" else _categorical_case)(objective)
    estimator = get_estimator("st-concrete", latent=latent, temperature=temperature)
    noise = estimator.sample(logits, 4, torch.Generator().manual_seed(3))  # [K, B, *event]
    estimate = estimator.estimate(logits, f, noise)
    expected, hard_values = _straight_through_by_autograd(latent, logits, f, noise, temperature)
    assert_close(estimate.values.detach(), hard_values, rtol=1e-12, atol=1e-15)  # f at hard samples only
    assert_close(estimate.grad, expected, rtol=1e-12, atol=1e-15)
    assert float(estimate.stats["temperature"]) == temperature


def test_temperature_must_be_positive():
    for latent in ("binary", "categorical"):
        with pytest.raises(EstimatorError, match="st-concrete needs a temperature > 0"):
            get_estimator("st-concrete", latent=latent, temperature=0.0)
