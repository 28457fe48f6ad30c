"""The Concrete estimator (``concrete``) for bits and classes: the pathwise gradient it claims, the
relaxed-objective dispatch, the temperature it reports and that annealing sets, and a bias that shrinks
with λ. (The relaxed densities are tested with the families, tests/latent; ``st-concrete`` in
test_st_concrete.py.)"""

from __future__ import annotations

import itertools

import pytest
import torch
from scipy.stats import norm
from torch.testing import assert_close

from dcvbench.estimators import EstimatorError, estimator_info, get_estimator
from dcvbench.estimators.relaxed import RelaxedEstimator, relaxed_objective
from dcvbench.latent import BINARY, CATEGORICAL
from dcvbench.latent.noise import gumbel_from_uniform, logistic_from_uniform, uniform_noise
from dcvbench.measure.variance import draw_estimates
from dcvbench.problems.categorical_toy import (
    CATEGORICAL_OBJECTIVES,
    make_categorical_objective,
    random_categorical_logits,
)
from dcvbench.problems.toy import OBJECTIVES, exact_gradient, make_objective

DIM = 6
VARIABLES, CLASSES = 4, 3  # categorical latents


def _logits(rows: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(17)
    return 1.5 * torch.randn(rows, DIM, generator=generator, dtype=torch.float64)  # [B, D]


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_concrete_is_the_autograd_gradient_of_the_relaxed_objective(objective: str):
    logits, f = _logits(), make_objective(objective, DIM)
    estimator = get_estimator("concrete", temperature=0.4)
    noise = estimator.sample(logits, 3, torch.Generator().manual_seed(2))  # [K, B, D]
    estimate = estimator.estimate(logits, f, noise)

    eta = logits.clone().requires_grad_(True)
    z = torch.sigmoid((eta + torch.log(noise) - torch.log1p(-noise)) / 0.4)  # [K, B, D]
    (expected,) = torch.autograd.grad(f(z).mean(0).sum(), eta)  # rows are independent
    assert_close(estimate.grad, expected, rtol=1e-12, atol=1e-15)
    assert_close(estimate.values.detach(), f(z).detach(), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("temperature", [2.0 / 3.0, 0.25])
def test_concrete_on_the_toy_is_the_closed_form_pathwise_gradient(objective: str, temperature: float):
    """Without a ``relaxed`` method the relaxed objective is ``f(σ(y))``, and autograd through it
    gives ``(1/K) Σ_k ∇f(z_k) ⊙ z_k(1 − z_k)/λ`` with ``∇f`` the objective's own closed form."""
    logits, f = _logits(), make_objective(objective, DIM)
    estimator = get_estimator("concrete", temperature=temperature)
    noise = estimator.sample(logits, 4, torch.Generator().manual_seed(9))  # [K, B, D]
    estimate = estimator.estimate(logits, f, noise)

    z = torch.sigmoid((logits + logistic_from_uniform(noise)) / temperature)  # [K, B, D]
    evaluation = f.value_and_input_grad(z)
    values, input_grad = evaluation.values, evaluation.input_grad
    assert_close(estimate.grad, (input_grad * z * (1 - z)).mean(0) / temperature, rtol=1e-12, atol=1e-15)
    assert_close(estimate.values.detach(), values, rtol=1e-12, atol=1e-15)


class _WithRelaxation:
    """An objective whose relaxed model is not ``f(σ(y))``: records what it was given."""

    def __call__(self, b):
        raise AssertionError("the relaxed path must not evaluate f itself")

    def relaxed(self, y, logits, temperature):
        self.seen = (y, logits, temperature)
        return (y * logits).sum(-1) / temperature  # depends on η through y and directly: [K, B]


def test_relaxed_objective_prefers_the_objectives_own_relaxation():
    logits, temperature = _logits(), 0.5
    noise = torch.rand(2, *logits.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = (logits + logistic_from_uniform(noise)) / temperature
    toy = make_objective("sum-square", DIM)
    assert_close(relaxed_objective(toy, BINARY, y, logits, temperature), toy(torch.sigmoid(y)))

    f = _WithRelaxation()
    estimate = get_estimator("concrete", temperature=temperature).estimate(logits, f, noise)
    seen_y, seen_logits, seen_temperature = f.seen
    assert seen_temperature == temperature and seen_logits.requires_grad
    assert_close(seen_y.detach(), y)
    # d/dη of (1/K) Σ_k Σ_d y_kd η_d / λ, y = (η + L)/λ: (y + η/λ)/λ averaged over k.
    assert_close(estimate.grad, (y + logits / temperature).mean(0) / temperature, rtol=1e-12, atol=1e-15)


def test_temperature_can_change_between_estimates():
    """Annealing sets the attribute between steps; the next estimate uses it."""
    logits, f = _logits(), make_objective("separable", DIM)
    noise = get_estimator("concrete").sample(logits, 2, torch.Generator().manual_seed(1))
    annealed = get_estimator("concrete", temperature=1.0)
    annealed.temperature = 0.3
    assert_close(
        annealed.estimate(logits, f, noise).grad,
        get_estimator("concrete", temperature=0.3).estimate(logits, f, noise).grad,
    )


def test_temperature_must_be_positive_and_is_reported():
    for latent in ("binary", "categorical"):
        with pytest.raises(EstimatorError, match="--temperature 0: concrete needs a temperature > 0"):
            get_estimator("concrete", latent=latent, temperature=0.0)
    # Not given, the Concrete paper's 2/3 (each estimator with a temperature has its own default).
    assert get_estimator("concrete").temperature == get_estimator("st-concrete").temperature == 2 / 3
    estimator = get_estimator("concrete", temperature=0.5)
    assert isinstance(estimator, RelaxedEstimator) and estimator_info("concrete").relaxation == "relaxed"
    assert estimator.state_stats() == {"temperature": 0.5}
    estimate = estimator(_logits(), make_objective("separable", DIM), 2, torch.Generator().manual_seed(1))
    assert (
        estimate.stats["temperature"].dtype == torch.float64 and float(estimate.stats["temperature"]) == 0.5
    )


# Bias against the exact gradient of the discrete objective. The relaxed objective tends to the
# discrete one as λ → 0, so the bias shrinks. Not for every λ: as λ → ∞ the relaxed gradient
# itself vanishes (z → ½), so the bias tends to ‖exact‖; on the separable toy, whose exact gradient
# is tiny (t ≈ ½), the bias therefore rises from λ = 4 (0.0061) through λ = 2 (0.0146) to λ = 1
# (0.0212) at these logits before falling. From λ = 1 down it falls on all three objectives, each
# step by 7.6 standard errors or more (measured). Below λ ≈ 0.1 the variance grows like 1/λ and the
# remaining differences drown in noise, so the test stops there.
TEMPERATURES = (1.0, 0.5, 0.25, 0.1)
DRAWS = 50_000
# One-sided tests, one per consecutive pair of temperatures and objective, Bonferroni at 0.001.
Z_CRITICAL = float(norm.isf(1e-3 / ((len(TEMPERATURES) - 1) * len(OBJECTIVES))))


def _bias_norm(temperature: float, objective: str) -> tuple[float, float]:
    """``‖mean − exact‖`` over all coordinates, and its standard error."""
    logits, f = _logits(), make_objective(objective, DIM)
    estimator = get_estimator("concrete", temperature=temperature)
    chunks = draw_estimates(estimator, logits, f, 1, DRAWS, torch.Generator().manual_seed(5))
    grads = torch.cat([grads.flatten(1) for grads, _ in chunks])  # [M, B·D]
    error = grads.mean(0) - exact_gradient(f, logits).flatten()  # [B·D]
    size = error.norm()
    # Delta method: ‖ē − exact‖ moves with the projection of the mean on e/‖e‖, whose variance comes
    # from the draws themselves (the coordinates of one row are correlated, so not from per-coordinate
    # variances alone).
    projected = grads @ (error / size)  # [M]
    return float(size), float(projected.std() / DRAWS**0.5)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_concrete_bias_shrinks_as_the_temperature_falls(objective: str):
    biases = [_bias_norm(temperature, objective) for temperature in TEMPERATURES]
    for (hot, hot_se), (cold, cold_se) in itertools.pairwise(biases):
        gap = hot - cold
        assert gap > Z_CRITICAL * (hot_se**2 + cold_se**2) ** 0.5, biases


# -- categorical latents -----------------------------------------------------------------------


def _categorical_logits(rows: int = 3) -> torch.Tensor:
    return random_categorical_logits(VARIABLES, CLASSES, seed=17, rows=rows)  # [B, N, C]


@pytest.mark.parametrize("objective", CATEGORICAL_OBJECTIVES)
def test_categorical_concrete_is_the_pathwise_gradient_of_f_at_the_relaxed_sample(objective: str):
    logits, f = _categorical_logits(), make_categorical_objective(objective, VARIABLES, CLASSES)
    estimator = get_estimator("concrete", latent="categorical", temperature=0.4)
    noise = estimator.sample(logits, 3, torch.Generator().manual_seed(2))  # [K, B, N, C]
    estimate = estimator.estimate(logits, f, noise)
    # The chain rule by hand: z = softmax((η + G)/λ), ∂z/∂η = (diag z − zzᵀ)/λ, v = ∇f(z).
    z = torch.softmax((logits + gumbel_from_uniform(noise)) / 0.4, -1)
    evaluation = f.value_and_input_grad(z)
    values, v = evaluation.values, evaluation.input_grad
    expected = (z * (v - (z * v).sum(-1, keepdim=True))).mean(0) / 0.4
    assert_close(estimate.grad, expected, rtol=1e-12, atol=1e-15)
    assert_close(estimate.values.detach(), values, rtol=1e-12, atol=1e-15)


def test_an_objective_s_own_relaxation_is_used_and_differentiated_through_the_categorical_logits():
    logits = _categorical_logits(rows=2)
    f = make_categorical_objective("separable", VARIABLES, CLASSES)

    class WithRelaxation:
        """f at z plus a term in η directly (as a relaxed ELBO's posterior density has)."""

        def __call__(self, b):
            return f(b)

        def relaxed(self, y, eta, temperature):
            return f(y.exp()) + temperature * (eta**2).sum((-2, -1))

    noise = uniform_noise((3, *logits.shape), logits, torch.Generator().manual_seed(4))
    estimate = get_estimator("concrete", latent="categorical", temperature=0.5).estimate(
        logits, WithRelaxation(), noise
    )
    plain = get_estimator("concrete", latent="categorical", temperature=0.5).estimate(logits, f, noise)
    assert_close(estimate.grad, plain.grad + 0.5 * 2 * logits, rtol=1e-12, atol=1e-14)
    y = torch.log_softmax(logits + gumbel_from_uniform(noise), -1)
    assert_close(
        relaxed_objective(f, CATEGORICAL, y, logits, 1.0), f(y.exp()), rtol=0, atol=0
    )  # the fallback
