"""ReinMax (``reinmax``), for bits and for classes: Heun's correction of straight-through.

Checked against its defining expression ``2·J(π₁)ᵀg − ½·J(π)ᵀg``, ``π₁ = ½(p(η/τ) + D)``, written
here with explicit Jacobian matrices: at each sample (float64, same noise), and in expectation, the
estimator's mean over many draws against the expression's expectation enumerated over every code.
Then the property that makes it second-order: at ``τ = 1`` its expectation is the exact gradient for
every objective quadratic in ``b`` (the trapezoidal rule is exact for quadratics; every toy
objective is one), where plain straight-through's is not — which a wrong sign or factor ½ in either
term would break.

Statistical checks compare a mean of ``DRAWS`` estimates with its target through
``|mean − target| / s.e.`` per coordinate, against ``Z_CRITICAL``: Bonferroni over every coordinate
of every case in this file, family-wise level 1e-3 (the mean of 20,000 iid draws is normal to well
within that). Power: the same check rejects the expression with its second term's factor ½ dropped,
and ReinMax at ``τ = 2`` on the exact gradient.
"""

from __future__ import annotations

import pytest
import torch
from scipy.stats import norm
from torch.testing import assert_close

from dcvbench.estimators import EstimatorError, estimator_info, get_estimator
from dcvbench.estimators.reinmax import ReinMax
from dcvbench.latent import family_named
from dcvbench.measure.variance import resample_variance
from dcvbench.problems.toy import OBJECTIVES, exact_gradient
from tests.estimators.straight_through import (
    CASES,
    COORDINATES,
    DRAWS,
    case,
    enumerated_expectation,
    forcing_uniforms,
    input_grad,
    jacobian_product,
)

FAMILY_ALPHA = 1e-3
# Statistical checks: the expression's expectation at τ = 1.5 (quadratic-form of each family), the
# exact gradient at τ = 1 (every case), and the two power checks (quadratic-form of each family).
TESTS = sum(COORDINATES[latent] for latent, _ in CASES) + 4 * sum(COORDINATES.values())
Z_CRITICAL = float(norm.isf(FAMILY_ALPHA / (2 * TESTS)))


def _probs(latent: str, logits: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(logits) if latent == "binary" else torch.softmax(logits, -1)


def heun_expression(latent: str, logits, b, g, temperature: float, euler_weight: float = 0.5):
    """``2·J(π₁)ᵀg − w·J(π)ᵀg``, ``π₁ = ½(p(η/τ) + b)``, per sample: ``[..., B, *event]``."""
    midpoint = 0.5 * (_probs(latent, logits / temperature) + b)
    return 2.0 * jacobian_product(latent, midpoint, g) - euler_weight * jacobian_product(
        latent, _probs(latent, logits), g
    )


def _max_z(estimator, logits, f, target: torch.Tensor, seed: int) -> float:
    measured = resample_variance(estimator, logits, f, 1, DRAWS, torch.Generator().manual_seed(seed))
    return float(measured.bias_z(target).max())


@pytest.mark.parametrize(("latent", "objective"), CASES)
@pytest.mark.parametrize("temperature", [1.0, 1.7])
def test_reinmax_is_the_heun_expression_at_its_sample(latent: str, objective: str, temperature: float):
    logits, f = case(latent, objective)
    estimator = get_estimator("reinmax", latent=latent, temperature=temperature)
    noise = estimator.sample(logits, 4, torch.Generator().manual_seed(3))  # [K, B, *event]
    estimate = estimator.estimate(logits, f, noise)
    b = family_named(latent).sample(logits, noise)
    expected = heun_expression(latent, logits, b, input_grad(f, b), temperature).mean(0)
    assert_close(estimate.grad, expected, rtol=1e-12, atol=1e-14)
    assert_close(estimate.values.detach(), f(b))
    assert float(estimate.stats["temperature"]) == temperature


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_bits_are_the_two_class_case(objective: str):
    # Bits b with logits η, and one-hot [b, 1 − b] with logits [η, 0] of f(D) = f_bits(D₀): the bit's
    # estimate is the first class's (and the second's is its negative).
    logits, f = case("binary", objective)
    bits = get_estimator("reinmax", temperature=1.4)
    noise = bits.sample(logits, 3, torch.Generator().manual_seed(5))  # [K, B, D]
    b = family_named("binary").sample(logits, noise)
    two_class_logits = torch.stack([logits, torch.zeros_like(logits)], -1)  # [B, D, 2]
    one_hot = torch.stack([b, 1.0 - b], -1)  # [K, B, D, 2]

    def on_classes(d: torch.Tensor) -> torch.Tensor:
        return f(d[..., 0])

    classes = get_estimator("reinmax", latent="categorical", temperature=1.4)
    two_class = classes.estimate(
        two_class_logits, on_classes, forcing_uniforms("categorical", two_class_logits, one_hot)
    )
    assert_close(bits.estimate(logits, f, noise).grad, two_class.grad[..., 0], rtol=1e-12, atol=1e-14)
    assert_close(two_class.grad[..., 1], -two_class.grad[..., 0], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("latent", ["binary", "categorical"])
def test_mean_is_the_enumerated_expectation_of_the_heun_expression(latent: str):
    temperature = 1.5
    logits, f = case(latent, "quadratic-form")
    target = enumerated_expectation(
        latent, logits, f, lambda b, g: heun_expression(latent, logits, b, g, temperature)
    )
    estimator = get_estimator("reinmax", latent=latent, temperature=temperature)
    z = _max_z(estimator, logits, f, target, seed=11)
    assert z < Z_CRITICAL, f"{latent}: max |z| = {z:.2f}"
    # Power: the same draws are far from the expression with the Euler term's ½ dropped.
    wrong = enumerated_expectation(
        latent, logits, f, lambda b, g: heun_expression(latent, logits, b, g, temperature, 1.0)
    )
    assert _max_z(estimator, logits, f, wrong, seed=11) > Z_CRITICAL


@pytest.mark.parametrize(("latent", "objective"), CASES)
def test_at_temperature_one_reinmax_is_exact_for_quadratic_objectives(latent: str, objective: str):
    logits, f = case(latent, objective)
    exact = exact_gradient(f, logits)
    # Independently of the estimator: the enumerated expectation of the expression is the gradient.
    expected = enumerated_expectation(
        latent, logits, f, lambda b, g: heun_expression(latent, logits, b, g, 1.0)
    )
    assert_close(expected, exact, rtol=1e-10, atol=1e-12)
    z = _max_z(get_estimator("reinmax", latent=latent, temperature=1.0), logits, f, exact, seed=13)
    assert z < Z_CRITICAL, f"{latent} {objective}: max |z| = {z:.2f}"


@pytest.mark.parametrize("latent", ["binary", "categorical"])
def test_away_from_temperature_one_reinmax_is_biased(latent: str):
    logits, f = case(latent, "quadratic-form")
    estimator = get_estimator("reinmax", latent=latent, temperature=2.0)
    assert _max_z(estimator, logits, f, exact_gradient(f, logits), seed=17) > Z_CRITICAL


def test_temperature_below_one_is_refused_and_one_is_the_default():
    assert not estimator_info("reinmax").unbiased
    assert estimator_info("reinmax").relaxation == "straight-through"
    assert get_estimator("reinmax").temperature == 1.0
    assert ReinMax.check_temperature(1.0) is None
    assert "≥ 1" in ReinMax.check_temperature(0.5)
    for latent in ("binary", "categorical"):
        with pytest.raises(EstimatorError, match="reinmax needs a temperature ≥ 1"):
            get_estimator("reinmax", latent=latent, temperature=0.5)
