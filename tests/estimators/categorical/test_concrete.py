"""The Concrete (Gumbel-softmax) relaxation of categorical latents: the ExpConcrete log-density against
torch and against its own sampler (C = 3), and the gradients the two relaxed estimators claim."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import norm
from torch.distributions.relaxed_categorical import ExpRelaxedCategorical
from torch.testing import assert_close

from dcvbench.estimators import get_estimator
from dcvbench.estimators.categorical import exp_concrete_log_prob, relaxed_objective
from dcvbench.estimators.concrete import Concrete, RelaxedEstimator, StraightThroughConcrete
from dcvbench.estimators.sampling import gumbel_from_uniform, uniform_noise
from dcvbench.problems.categorical_toy import (
    CATEGORICAL_OBJECTIVES,
    make_categorical_objective,
    random_categorical_logits,
)

VARIABLES, CLASSES = 4, 3


@pytest.mark.parametrize("temperature", [0.3, 2.0 / 3.0, 1.7])
def test_log_density_matches_torch_distributions(temperature: float):
    logits = random_categorical_logits(VARIABLES, 5, seed=2, rows=2)  # [B, N, C]
    noise = uniform_noise((7, *logits.shape), logits, torch.Generator().manual_seed(1))
    y = torch.log_softmax((logits + gumbel_from_uniform(noise)) / temperature, -1)  # [K, B, N, C]
    expected = ExpRelaxedCategorical(torch.tensor(temperature, dtype=torch.float64), logits=logits).log_prob(
        y
    )
    assert_close(exp_concrete_log_prob(y, logits, temperature), expected, rtol=1e-12, atol=1e-12)
    # Unnormalised logits: adding a constant per variable changes nothing.
    assert_close(exp_concrete_log_prob(y, logits + 3.5, temperature), expected, rtol=1e-12, atol=1e-12)


def test_log_density_is_finite_where_probability_space_overflows():
    # At a low temperature and extreme logits, x^{−λ−1} of the simplex density overflows; log space does not.
    logits = torch.tensor([60.0, -60.0, 0.0], dtype=torch.float32)
    noise = uniform_noise((1000, 3), logits, torch.Generator().manual_seed(3))
    y = torch.log_softmax((logits + gumbel_from_uniform(noise)) / 0.1, -1)
    assert torch.isfinite(exp_concrete_log_prob(y, logits, 0.1)).all()


# Monte-Carlo check of the density against the sampler, C = 3. In the log-ratio coordinates
# u = (y_1 − y_3, y_2 − y_3) the density is exp(log p(y)) with respect to Lebesgue measure (the base
# measure of exp_concrete_log_prob), and u_c = (a_c − a_3 + G_c − G_3)/λ: a smooth, light-tailed
# density on R². The plane is cut into GRID × GRID cells around the mode plus the rest; each cell's
# probability is the density integrated by Gauss–Legendre quadrature, compared with the fraction of
# SAMPLES that fall in it: z = (count − S·p) / √(S·p(1 − p)), the binomial standard error.
SAMPLES = 200_000
GRID = 8
FAMILY_ALPHA = 1e-3


def _cell_probabilities(log_density, logits: torch.Tensor, temperature: float, edges: list[np.ndarray]):
    """∫ exp(log_density(y(u))) du over each cell of the grid ``edges`` (per coordinate), ``[GRID, GRID]``."""
    nodes, weights = np.polynomial.legendre.leggauss(12)
    cells = np.zeros((GRID, GRID))
    for i in range(GRID):
        for j in range(GRID):
            (lo1, hi1), (lo2, hi2) = edges[0][i : i + 2], edges[1][j : j + 2]
            u1 = (hi1 - lo1) / 2 * nodes + (hi1 + lo1) / 2
            u2 = (hi2 - lo2) / 2 * nodes + (hi2 + lo2) / 2
            grid1, grid2 = np.meshgrid(u1, u2, indexing="ij")
            u = torch.tensor(np.stack([grid1, grid2, np.zeros_like(grid1)], -1))  # [12, 12, 3]
            density = log_density(torch.log_softmax(u, -1), logits, temperature).exp().numpy()
            area = (hi1 - lo1) * (hi2 - lo2) / 4
            cells[i, j] = area * np.einsum("i,j,ij->", weights, weights, density)
    return cells


def _counts_and_probabilities(log_density, logits: torch.Tensor, temperature: float, seed: int = 12):
    """Sampled counts and integrated probabilities of the GRID × GRID cells and of the rest of the plane."""
    estimator = get_estimator("concrete", latent="categorical", temperature=temperature)
    noise = uniform_noise((SAMPLES, 3), logits, torch.Generator().manual_seed(seed))
    y = estimator.relaxed_logits(logits, noise)  # the estimator's own sampler: [S, 3]
    u = (y[:, :2] - y[:, 2:]).numpy()  # [S, 2]
    # Per coordinate, cells of one unit of the logistic scale 1/λ around the location (a_c − a_3)/λ:
    # together they hold most of the mass (the remainder is one more cell, "outside"). In these units
    # the sampled point is (G_1 − G_3, G_2 − G_3), whatever a and λ; the density must agree at each.
    location = ((logits[:2] - logits[2]) / temperature).numpy()
    edges = [location[c] + (np.arange(GRID + 1) - GRID / 2) / temperature for c in range(2)]
    counts, *_ = np.histogram2d(u[:, 0], u[:, 1], bins=edges)
    probabilities = _cell_probabilities(log_density, logits, temperature, edges)
    counts = np.append(counts.ravel(), SAMPLES - counts.sum())
    return counts, np.append(probabilities.ravel(), 1.0 - probabilities.sum())


def _z(counts: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    return (counts - SAMPLES * probabilities) / np.sqrt(SAMPLES * probabilities * (1 - probabilities))


CASES = [
    (torch.tensor([0.5, -0.3, 1.0], dtype=torch.float64), 2.0 / 3.0, 12),  # logits, λ, seed
    (torch.tensor([2.0, -1.0, 0.0], dtype=torch.float64), 1.5, 13),
]
# Bonferroni over every cell (and the outside) of every case, two-sided: about 4.5.
Z_CRITICAL = float(norm.isf(FAMILY_ALPHA / (2 * len(CASES) * (GRID * GRID + 1))))


@pytest.mark.parametrize(("logits", "temperature", "seed"), CASES, ids=["lambda-2/3", "lambda-1.5"])
def test_density_integrates_to_the_sampler(logits: torch.Tensor, temperature: float, seed: int):
    counts, probabilities = _counts_and_probabilities(exp_concrete_log_prob, logits, temperature, seed)
    assert probabilities.min() > 0 and 0.05 < probabilities[-1] < 0.5  # every cell is tested
    z = float(np.abs(_z(counts, probabilities)).max())
    assert z < Z_CRITICAL, f"max |z| = {z:.2f} ≥ {Z_CRITICAL:.2f}"


def test_the_check_rejects_the_density_with_the_wrong_jacobian():
    # Power: read as a density on (y_1, y_2) instead of the log-ratios, it lacks the factor e^{−y_3}.
    def wrong(y: torch.Tensor, logits: torch.Tensor, temperature: float) -> torch.Tensor:
        return exp_concrete_log_prob(y, logits, temperature) - y[..., 2]

    counts, probabilities = _counts_and_probabilities(wrong, *CASES[0])
    assert float(np.abs(_z(counts[:-1], probabilities[:-1])).max()) > Z_CRITICAL  # the cells alone


def test_relaxed_estimators_are_relaxed_estimators():
    # So that temperature annealing and the run manifest treat them as the binary ones.
    concrete = get_estimator("concrete", latent="categorical", temperature=0.5)
    straight_through = get_estimator("st-concrete", latent="categorical")
    assert isinstance(concrete, Concrete) and isinstance(straight_through, StraightThroughConcrete)
    assert isinstance(concrete, RelaxedEstimator) and concrete.temperature == 0.5
    with pytest.raises(ValueError, match="temperature must be > 0"):
        get_estimator("concrete", latent="categorical", temperature=0.0)


def _logits(rows: int = 3) -> torch.Tensor:
    return random_categorical_logits(VARIABLES, CLASSES, seed=17, rows=rows)  # [B, N, C]


@pytest.mark.parametrize("objective", CATEGORICAL_OBJECTIVES)
def test_concrete_is_the_pathwise_gradient_of_f_at_the_relaxed_sample(objective: str):
    logits, f = _logits(), make_categorical_objective(objective, VARIABLES, CLASSES)
    estimator = get_estimator("concrete", latent="categorical", temperature=0.4)
    noise = estimator.sample(logits, 3, torch.Generator().manual_seed(2))  # [K, B, N, C]
    estimate = estimator.estimate(logits, f, noise)
    # The chain rule by hand: z = softmax((η + G)/λ), ∂z/∂η = (diag z − zzᵀ)/λ, v = ∇f(z).
    z = torch.softmax((logits + gumbel_from_uniform(noise)) / 0.4, -1)
    values, v = f.value_and_input_grad(z)
    expected = (z * (v - (z * v).sum(-1, keepdim=True))).mean(0) / 0.4
    assert_close(estimate.grad, expected, rtol=1e-12, atol=1e-15)
    assert_close(estimate.values.detach(), values, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("objective", CATEGORICAL_OBJECTIVES)
def test_st_concrete_is_hard_forward_relaxed_backward(objective: str):
    logits, f = _logits(), make_categorical_objective(objective, VARIABLES, CLASSES)
    estimator = get_estimator("st-concrete", latent="categorical", temperature=0.7)
    noise = estimator.sample(logits, 4, torch.Generator().manual_seed(3))
    estimate = estimator.estimate(logits, f, noise)
    # The straight-through trick itself, by autograd: f(b + z − stop_gradient(z)).
    eta = logits.clone().requires_grad_(True)
    z = torch.softmax((eta + gumbel_from_uniform(noise)) / 0.7, -1)
    b = torch.nn.functional.one_hot(z.argmax(-1), CLASSES).to(z.dtype)
    (expected,) = torch.autograd.grad(f(b + z - z.detach()).mean(0).sum(), eta)
    assert_close(estimate.grad, expected, rtol=1e-12, atol=1e-15)
    assert_close(estimate.values, f(b), rtol=1e-12, atol=1e-15)  # the discrete objective at hard b


def test_an_objective_s_own_relaxation_is_used_and_differentiated_through_the_logits():
    logits = _logits(rows=2)
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
    assert_close(relaxed_objective(f, y, logits, 1.0), f(y.exp()), rtol=0, atol=0)  # the fallback
