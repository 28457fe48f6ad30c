"""Gumbel-Rao (``gumbel-rao``), for bits and for classes: the straight-through Gumbel-softmax Jacobian
averaged over noise drawn given the sample.

- At each sample (float64, same noise): the mean over its conditional draws of ``J(z)ᵀg/τ``, the
  Jacobian matrix written out.
- Given the class, with many draws: the conditional expectation of the ST-Gumbel-softmax Jacobian,
  computed independently — by rejection (unconditional Gumbels kept where their argmax is the
  class) for classes, by quadrature over the truncated logistic for bits, which the two-class form
  with logits ``[η, 0]`` must match too.
- In expectation over the sample: for bits, the enumerated expectation with the quadrature's
  conditional Jacobians; for both families, ``st-concrete``'s expectation at the same temperature
  (which Gumbel-Rao Rao-Blackwellises), with less variance.

Statistical checks: ``|difference| / s.e.`` per coordinate (the standard errors of both sides where
both are random), Bonferroni over every coordinate of the file at family-wise level 1e-3.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy.integrate import quad
from scipy.special import expit
from scipy.stats import norm
from torch.testing import assert_close

from dcvbench.estimators import EstimatorError, check_settings, estimator_info, get_estimator
from dcvbench.latent import family_named
from dcvbench.latent.conditional import conditional_gumbel, conditional_logistic
from dcvbench.latent.noise import gumbel_from_uniform, uniform_noise
from dcvbench.measure.variance import resample_variance
from tests.estimators.straight_through import (
    CASES,
    CLASSES,
    COORDINATES,
    DIM,
    DRAWS,
    case,
    enumerated_expectation,
    forcing_uniforms,
    jacobian_product,
)

CONDITIONAL_DRAWS = 100_000
TEMPERATURE = 0.5
BIT_LOGITS = torch.tensor([-1.3, 0.4, 2.0], dtype=torch.float64)
FAMILY_ALPHA = 1e-3
# Given the class: 3 rows × 3 classes; given the bit: 2 rows × 3 bits, for bits and for two classes;
# the enumerated expectation (bits); st-concrete's expectation (both families).
TESTS = 9 + 2 * 6 + COORDINATES["binary"] + sum(COORDINATES.values())
Z_CRITICAL = float(norm.isf(FAMILY_ALPHA / (2 * TESTS)))


def _relaxed(latent: str, perturbed: torch.Tensor, temperature: float) -> torch.Tensor:
    return (
        torch.sigmoid(perturbed / temperature)
        if latent == "binary"
        else torch.softmax(perturbed / temperature, -1)
    )


def _conditional(latent: str, logits, b, u):
    return (conditional_logistic if latent == "binary" else conditional_gumbel)(logits, b, u)


def _given(latent: str, logits: torch.Tensor, b: torch.Tensor, weights: torch.Tensor, seed: int):
    """Gumbel-Rao with ``CONDITIONAL_DRAWS`` draws at the forced sample ``b [B, *event]``, for the
    linear ``f(b) = ⟨w, b⟩`` (so ``g = w``): the estimate, and the mean and standard error of its
    per-draw terms ``J(z_m)ᵀw/τ`` computed here from the same noise."""
    estimator = get_estimator(
        "gumbel-rao", latent=latent, temperature=TEMPERATURE, rao_samples=CONDITIONAL_DRAWS
    )
    noise = estimator.sample(logits, 1, torch.Generator().manual_seed(seed))  # [1 + M, 1, B, *event]
    noise[0] = forcing_uniforms(latent, logits, b)
    family = family_named(latent)

    def linear(sample: torch.Tensor) -> torch.Tensor:
        return family.reduce(sample * weights)

    estimate = estimator.estimate(logits, linear, noise)
    assert torch.equal(family.sample(logits, noise[0]), b.unsqueeze(0))
    perturbed = _conditional(latent, logits, b, noise[1:, 0])  # [M, B, *event]
    terms = jacobian_product(latent, _relaxed(latent, perturbed, TEMPERATURE), weights) / TEMPERATURE
    return estimate.grad, terms.mean(0), terms.std(0) / math.sqrt(len(terms))


def _conditional_bit_jacobian(eta: float, bit: int, temperature: float) -> float:
    """``E[z(1 − z)/τ | b]``, ``z = σ((η + L)/τ)``, ``L`` logistic, ``b = 1[η + L > 0]``, by quadrature."""

    def integrand(x: float) -> float:
        z = expit(x / temperature)
        density = expit(x - eta) * expit(eta - x)  # the logistic density of η + L at x
        return z * (1.0 - z) / temperature * density

    mass, _ = quad(integrand, 0.0, math.inf) if bit else quad(integrand, -math.inf, 0.0)
    return mass / (expit(eta) if bit else expit(-eta))


@pytest.mark.parametrize(("latent", "objective"), CASES)
@pytest.mark.parametrize("temperature", [0.5, 1.0])
def test_gumbel_rao_averages_the_relaxed_jacobian_over_its_conditional_draws(
    latent: str, objective: str, temperature: float
):
    logits, f = case(latent, objective)
    estimator = get_estimator("gumbel-rao", latent=latent, temperature=temperature, rao_samples=5)
    noise = estimator.sample(logits, 3, torch.Generator().manual_seed(3))  # [1 + M, K, B, *event]
    assert noise.shape == (6, 3, *logits.shape)
    estimate = estimator.estimate(logits, f, noise)
    b = family_named(latent).sample(logits, noise[0])  # [K, B, *event]
    hard = b.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f(hard).sum(), hard)
    z = _relaxed(latent, _conditional(latent, logits, b, noise[1:]), temperature)  # [M, K, B, *event]
    expected = jacobian_product(latent, z, g).mean((0, 1)) / temperature
    assert_close(estimate.grad, expected, rtol=1e-12, atol=1e-14)
    assert_close(estimate.values.detach(), f(b))
    assert float(estimate.stats["temperature"]) == temperature


def test_given_the_class_it_is_the_st_gumbel_softmax_jacobian_conditioned_by_rejection():
    eta = torch.tensor([0.8, -0.4, 0.1], dtype=torch.float64)
    weights = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)  # [N = 1, C]
    logits = eta.expand(CLASSES, 1, CLASSES).clone()  # row r is given class r: [B, 1, C]
    b = torch.eye(CLASSES, dtype=torch.float64).unsqueeze(1)  # [B, 1, C]
    estimate, mean, standard_error = _given("categorical", logits, b, weights, seed=5)
    assert_close(estimate, mean, rtol=1e-12, atol=1e-14)
    # Reference: unconditional Gumbel draws, the ST-Gumbel-softmax term where their argmax is the class.
    u = uniform_noise((8 * CONDITIONAL_DRAWS, CLASSES), eta, torch.Generator().manual_seed(6))
    perturbed = eta + gumbel_from_uniform(u)  # [R, C]
    terms = (
        jacobian_product("categorical", torch.softmax(perturbed / TEMPERATURE, -1), weights[0]) / TEMPERATURE
    )
    winners = perturbed.argmax(-1)
    for c in range(CLASSES):
        kept = terms[winners == c]  # [R_c, C]
        reference, reference_error = kept.mean(0), kept.std(0) / math.sqrt(len(kept))
        z = ((mean[c, 0] - reference).abs() / (standard_error[c, 0] ** 2 + reference_error**2).sqrt()).max()
        assert float(z) < Z_CRITICAL, f"class {c}: max |z| = {float(z):.2f}"


@pytest.mark.parametrize("latent", ["binary", "categorical"])
def test_given_the_bit_it_is_the_conditional_expectation_by_quadrature(latent: str):
    # Bits with logits η, or two classes with logits [η, 0]: given the bit (first class), the draws'
    # mean Jacobian is E[z(1 − z)/τ | b], the same for both forms.
    bits = torch.stack([torch.zeros(DIM), torch.ones(DIM)]).double()  # row 0 all 0, row 1 all 1: [2, D]
    logits = BIT_LOGITS.expand(2, DIM).clone()
    expected = torch.tensor(
        [[_conditional_bit_jacobian(float(eta), bit, TEMPERATURE) for eta in BIT_LOGITS] for bit in (0, 1)],
        dtype=torch.float64,
    )
    if latent == "binary":
        estimate, mean, standard_error = _given(
            "binary", logits, bits, torch.ones(DIM, dtype=torch.float64), 7
        )
    else:
        two_class = torch.stack([logits, torch.zeros_like(logits)], -1)  # [2, D, 2]
        one_hot = torch.stack([bits, 1.0 - bits], -1)
        weights = torch.tensor([[1.0, 0.0]], dtype=torch.float64).expand(DIM, 2)  # f = Σ_d D_d0
        estimate, mean, standard_error = (
            value[..., 0] for value in _given("categorical", two_class, one_hot, weights, 8)
        )
    assert_close(estimate, mean, rtol=1e-12, atol=1e-14)
    z = float(((mean - expected).abs() / standard_error).max())
    assert z < Z_CRITICAL, f"{latent}: max |z| = {z:.2f}"


def test_bits_mean_is_the_enumerated_expectation_with_the_quadrature_jacobians():
    logits, f = case("binary", "quadratic-form")
    # E[z(1 − z)/τ | b_d] for each (row, bit) given b_d = 0 and given b_d = 1: [2, B, D].
    given = torch.tensor(
        [
            [[_conditional_bit_jacobian(float(eta), bit, TEMPERATURE) for eta in row] for row in logits]
            for bit in (0, 1)
        ],
        dtype=torch.float64,
    )
    target = enumerated_expectation(
        "binary", logits, f, lambda b, g: torch.where(b > 0, given[1], given[0]) * g
    )
    estimator = get_estimator("gumbel-rao", temperature=TEMPERATURE, rao_samples=10)
    measured = resample_variance(estimator, logits, f, 1, DRAWS, torch.Generator().manual_seed(9))
    z = float(measured.bias_z(target).max())
    assert z < Z_CRITICAL, f"max |z| = {z:.2f}"


@pytest.mark.parametrize("latent", ["binary", "categorical"])
def test_same_expectation_as_st_concrete_with_less_variance(latent: str):
    logits, f = case(latent, "quadratic-form")
    rao = get_estimator("gumbel-rao", latent=latent, temperature=TEMPERATURE, rao_samples=10)
    st = get_estimator("st-concrete", latent=latent, temperature=TEMPERATURE)
    ours = resample_variance(rao, logits, f, 1, DRAWS, torch.Generator().manual_seed(10))
    theirs = resample_variance(st, logits, f, 1, DRAWS, torch.Generator().manual_seed(11))
    difference = (ours.moments.mean - theirs.moments.mean).abs()
    standard_error = ((ours.moments.variance + theirs.moments.variance) / DRAWS).sqrt()
    z = float((difference / standard_error).max())
    assert z < Z_CRITICAL, f"{latent}: max |z| = {z:.2f}"
    assert (ours.moments.variance <= theirs.moments.variance).all()


def test_options_defaults_and_refusals():
    info = estimator_info("gumbel-rao")
    assert not info.unbiased and info.relaxation == "straight-through" and info.evals(3) == 3
    estimator = get_estimator("gumbel-rao", latent="categorical")
    assert estimator.rao_samples == 100 and estimator.temperature == pytest.approx(2 / 3)
    with pytest.raises(EstimatorError, match="--rao-samples must be ≥ 1, got 0"):
        check_settings({"rao_samples": 0})
    with pytest.raises(EstimatorError, match="--rao-samples must be ≥ 1, got 0"):
        get_estimator("gumbel-rao", rao_samples=0)
