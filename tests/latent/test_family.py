"""The latent families' methods against exact enumeration, their own samplers and torch.distributions:
enumeration, sampling frequencies, the score's covariance, log-probabilities and KL, and the relaxed
densities (the ExpConcrete one also against the hand-written density it replaced, and against its own
sampler by Monte-Carlo integration)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm
from torch.distributions.relaxed_bernoulli import LogitRelaxedBernoulli
from torch.distributions.relaxed_categorical import ExpRelaxedCategorical
from torch.testing import assert_close

from dcvbench.latent import BINARY, CATEGORICAL, FAMILIES, LatentFamily, family_named
from dcvbench.latent.noise import uniform_noise

F64 = torch.float64
# One tiny latent space per family: 3 bits, or 2 variables of 3 classes.
EVENTS = {"binary": (3,), "categorical": (2, 3)}


def _logits(family: LatentFamily, rows: int = 2) -> torch.Tensor:
    """Logits ``[rows, *event]`` away from uniform, float64."""
    generator = torch.Generator().manual_seed(5)
    return 1.3 * torch.randn(rows, *EVENTS[family.name], generator=generator, dtype=F64)


def _exact_probabilities(family: LatentFamily, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every value ``[M, *event]`` and its probability under each row, ``[M, B]``."""
    values = family.enumerate(EVENTS[family.name], F64)  # [M, *event]
    return values, family.log_prob(values.unsqueeze(1), logits).exp()  # [M, B]


def _expand(x: torch.Tensor, dims: int) -> torch.Tensor:
    return x.reshape(*x.shape, *(1,) * dims)


FAMILY_LIST = [BINARY, CATEGORICAL]
IDS = [family.name for family in FAMILY_LIST]


def test_families_by_name():
    assert family_named("binary") is BINARY and family_named("categorical") is CATEGORICAL
    assert list(FAMILIES) == ["binary", "categorical"]
    with pytest.raises(ValueError, match="unknown latent type 'ternary'; choose from: binary, categorical"):
        family_named("ternary")


def test_enumerate_counts_every_value_once():
    bits = BINARY.enumerate((4,), F64)
    assert bits.shape == (16, 4) and len({tuple(row.tolist()) for row in bits}) == 16
    classes = CATEGORICAL.enumerate((3, 4), F64)
    assert classes.shape == (64, 3, 4) and len({tuple(row.flatten().tolist()) for row in classes}) == 64
    assert torch.equal(classes.sum(-1), torch.ones(64, 3, dtype=F64))  # one-hot per variable
    assert BINARY.event_shape(4, None) == (4,) and CATEGORICAL.event_shape(3, 4) == (3, 4)


@pytest.mark.parametrize("family", FAMILY_LIST, ids=IDS)
def test_log_prob_is_a_distribution_and_probs_its_mean(family: LatentFamily):
    logits = _logits(family)
    values, probabilities = _exact_probabilities(family, logits)
    assert_close(probabilities.sum(0), torch.ones(2, dtype=F64), rtol=1e-14, atol=1e-14)
    mean = (_expand(probabilities, family.event_dims) * values.unsqueeze(1)).sum(0)  # [B, *event]
    assert_close(mean, family.probs(logits), rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("family", FAMILY_LIST, ids=IDS)
def test_covariance_product_is_the_covariance_of_the_score(family: LatentFamily):
    logits = _logits(family)
    probs = family.probs(logits)  # [B, *event]
    values, probabilities = _exact_probabilities(family, logits)
    score = family.score(values.unsqueeze(1), probs).flatten(2)  # [M, B, E]
    weights = probabilities.unsqueeze(-1)  # [M, B, 1]
    assert_close((weights * score).sum(0), torch.zeros_like(score[0]), rtol=0, atol=1e-14)  # E[score] = 0
    covariance = torch.einsum("mb,mbi,mbj->bij", probabilities, score, score)  # [B, E, E]
    v = torch.randn(logits.shape, generator=torch.Generator().manual_seed(2), dtype=F64)  # [B, *event]
    expected = (covariance @ v.flatten(1).unsqueeze(-1)).squeeze(-1)  # [B, E]
    assert_close(family.covariance_product(probs, v).flatten(1), expected, rtol=1e-13, atol=1e-14)
    # It is also the Jacobian of the probabilities (symmetric), applied to v.
    jacobian = torch.func.jacrev(lambda eta: family.probs(eta).flatten())(logits[0]).reshape(
        probs[0].numel(), -1
    )
    assert_close(
        family.covariance_product(probs[0], v[0]).flatten(), jacobian @ v[0].flatten(), rtol=1e-13, atol=1e-14
    )


@pytest.mark.parametrize("family", FAMILY_LIST, ids=IDS)
def test_neighbours_are_every_one_variable_change_once(family: LatentFamily):
    event = EVENTS[family.name]
    logits = _logits(family)  # [B, *event]
    values = family.enumerate(event, F64)  # [V, *event]
    b = values.unsqueeze(1).expand(-1, 2, *event)  # every value as a sample of each row: [V, B, *event]
    neighbours = family.neighbours(b, family.probs(logits))
    count = family.neighbour_count(event)
    assert neighbours.points.shape == (count, *b.shape) and neighbours.probs.shape == (count, *b.shape[:2])
    assert neighbours.changed.shape == (count, *event)
    # Variables that differ from b: exactly one per neighbour, the one its mask marks.
    differs = (neighbours.points != b).reshape(count, *b.shape[:2], family.variable_count(event), -1).any(-1)
    marked = neighbours.changed.reshape(count, family.variable_count(event), -1).any(-1)  # [M, N]
    assert torch.equal(differs, marked[:, None, None].expand_as(differs))
    assert torch.equal(marked.sum(-1), torch.ones(count, dtype=torch.long))
    # Every value one variable away from b appears once: M distinct points per sample.
    for v in range(values.shape[0]):
        points = {tuple(neighbours.points[m, v, 0].flatten().tolist()) for m in range(count)}
        others = (values != values[v]).reshape(values.shape[0], family.variable_count(event), -1).any(-1)
        expected = {
            tuple(values[u].flatten().tolist()) for u in range(values.shape[0]) if others[u].sum() == 1
        }
        assert points == expected and len(points) == count
    # probs is the new value's probability: q(y)/q(b) = q_n(new)/q_n(old) for the changed variable n.
    ratio = (family.log_prob(neighbours.points, logits) - family.log_prob(b, logits)).exp()  # [M, V, B]
    probs = family.probs(logits)  # [B, *event]
    binary = family.name == "binary"
    # q_d(b_d) [V, B, D], or π_n(b_n) [V, B, N]
    old_per_variable = b * probs + (1 - b) * (1 - probs) if binary else (b * probs).sum(-1)
    old_of_changed = (old_per_variable.unsqueeze(0) * marked[:, None, None]).sum(-1)  # [M, V, B]
    assert_close(neighbours.probs, ratio * old_of_changed, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("family", FAMILY_LIST, ids=IDS)
def test_the_gibbs_stein_operator_of_the_neighbours_has_mean_zero(family: LatentFamily):
    """``(A h)(b) = (1/N) Σ_m q_m (h(y_m) − h(b))`` is the Gibbs kernel's ``E[h(b')] − h(b)``: its
    expectation under q is 0 for any h (RODEO's control variates rest on it)."""
    event = EVENTS[family.name]
    logits = _logits(family)
    values, probabilities = _exact_probabilities(family, logits)
    b = values.unsqueeze(1).expand(-1, 2, *event)  # [V, B, *event]
    weights = torch.randn(*event, generator=torch.Generator().manual_seed(3), dtype=F64)

    def h(x: torch.Tensor) -> torch.Tensor:  # an arbitrary nonlinear function of the sample
        return torch.tanh(family.reduce(x * weights)) ** 2 + family.reduce(x).cos()

    neighbours = family.neighbours(b, family.probs(logits))
    stein = (neighbours.probs * (h(neighbours.points) - h(b))).sum(0) / family.variable_count(event)  # [V, B]
    assert stein.abs().max() > 1e-3  # not zero pointwise: zero in expectation
    assert_close((probabilities * stein).sum(0), torch.zeros(2, dtype=F64), rtol=0, atol=1e-15)


@pytest.mark.parametrize("family", FAMILY_LIST, ids=IDS)
def test_sample_frequencies_match_the_probabilities(family: LatentFamily):
    logits = _logits(family, rows=1)
    draws = 40_000
    noise = uniform_noise((draws, *logits.shape), logits, torch.Generator().manual_seed(9))
    samples = family.sample(logits, noise)  # [S, 1, *event]
    assert samples.dtype == F64 and samples.shape == (draws, *logits.shape)
    values, probabilities = _exact_probabilities(family, logits)
    flat_values, flat_samples = values.flatten(1), samples[:, 0].flatten(1)  # [M, E], [S, E]
    matches = (flat_samples.unsqueeze(1) == flat_values.unsqueeze(0)).all(-1)  # [S, M]
    assert bool(matches.sum(1).eq(1).all())  # every sample is exactly one value of the space
    counts = matches.sum(0).to(F64)  # [M]
    p = probabilities[:, 0]
    z = (counts - draws * p) / (draws * p * (1 - p)).sqrt()
    # Bonferroni over the values of both families (8 and 9 of them), two-sided, at 0.001.
    assert float(z.abs().max()) < norm.isf(1e-3 / (2 * 17))


@pytest.mark.parametrize("family", FAMILY_LIST, ids=IDS)
def test_kl_is_the_expected_log_ratio(family: LatentFamily):
    logits, prior = _logits(family), 0.7 * _logits(family, rows=1)[0]  # the prior broadcasts over rows
    values, probabilities = _exact_probabilities(family, logits)
    log_ratio = family.log_prob(values.unsqueeze(1), logits) - family.log_prob(values.unsqueeze(1), prior)
    assert_close(family.kl(logits, prior), (probabilities * log_ratio).sum(0), rtol=1e-13, atol=1e-14)


# -- relaxations ----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILY_LIST, ids=IDS)
def test_relaxed_samples_harden_to_exact_samples_and_live_where_they_should(family: LatentFamily):
    logits = _logits(family, rows=1)
    noise = uniform_noise((40_000, *logits.shape), logits, torch.Generator().manual_seed(4))
    y = family.relax(logits, noise, 0.5)
    z = family.relaxed_point(y)
    if family is BINARY:
        assert bool(((z > 0) & (z < 1)).all())
    else:
        assert_close(z.sum(-1), torch.ones_like(z[..., 0]), rtol=0, atol=1e-12)  # on the simplex
    # harden(relax(η, u, λ)) is distributed as q_η: its mean is the probabilities.
    mean = family.harden(y).mean(0)
    assert float((mean - family.probs(logits)).abs().max()) < 5 * (0.25 / 40_000) ** 0.5


def _old_exp_concrete_log_prob(y: torch.Tensor, logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The hand-written ExpConcrete log-density that torch's replaced (Maddison et al. 2017, app. C)::

    log p(y) = log (C−1)! + (C−1) log λ + Σ_c (a_c − λ y_c) − C · logsumexp_c (a_c − λ y_c)
    """
    classes = y.shape[-1]
    scores = logits - temperature * y  # [..., C]
    normaliser = math.lgamma(classes) + (classes - 1) * math.log(temperature)
    return normaliser + scores.sum(-1) - classes * scores.logsumexp(-1)


@pytest.mark.parametrize("temperature", [0.3, 2.0 / 3.0, 1.7])
def test_categorical_relaxed_log_prob_matches_the_hand_written_density_and_torch(temperature: float):
    logits = torch.randn(2, 4, 5, generator=torch.Generator().manual_seed(2), dtype=F64)  # [B, N, C]
    noise = uniform_noise((7, *logits.shape), logits, torch.Generator().manual_seed(1))
    y = CATEGORICAL.relax(logits, noise, temperature)  # [K, B, N, C]
    got = CATEGORICAL.relaxed_log_prob(y, logits, temperature)  # [K, B]
    assert_close(got, _old_exp_concrete_log_prob(y, logits, temperature).sum(-1), rtol=1e-12, atol=1e-12)
    expected = ExpRelaxedCategorical(torch.tensor(temperature, dtype=F64), logits=logits).log_prob(y).sum(-1)
    assert_close(got, expected, rtol=1e-12, atol=1e-12)
    # Unnormalised logits: adding a constant per variable changes nothing.
    assert_close(CATEGORICAL.relaxed_log_prob(y, logits + 3.5, temperature), got, rtol=1e-12, atol=1e-12)


def test_categorical_relaxed_log_prob_is_finite_where_probability_space_overflows():
    # At a low temperature and extreme logits, x^{−λ−1} of the simplex density overflows; log space does not.
    logits = torch.tensor([[[60.0, -60.0, 0.0]]])
    noise = uniform_noise((1000, *logits.shape), logits, torch.Generator().manual_seed(3))
    y = CATEGORICAL.relax(logits, noise, 0.1)
    assert torch.isfinite(CATEGORICAL.relaxed_log_prob(y, logits, 0.1)).all()


@pytest.mark.parametrize("temperature", [0.5, 2.0 / 3.0, 1.5])
def test_binary_relaxed_log_prob_integrates_to_one_and_matches_torch(temperature: float):
    logits = torch.tensor([[-1.2, 0.0, 2.5]], dtype=F64)  # [1, D]
    line = torch.linspace(-80.0, 80.0, 400_001, dtype=F64)  # logit space: light (logistic) tails
    columns = line.reshape(-1, 1, 1).expand(-1, 1, 3)  # [S, 1, D]: every bit at each point of the line
    for d in range(3):
        density = BINARY.relaxed_log_prob(columns[..., d : d + 1], logits[:, d : d + 1], temperature).exp()
        assert abs(float(torch.trapezoid(density[:, 0], line)) - 1.0) < 1e-9
    torch_density = LogitRelaxedBernoulli(torch.tensor(temperature, dtype=F64), logits=logits)
    y = torch.randn(5, 1, 3, generator=torch.Generator().manual_seed(8), dtype=F64)
    assert_close(
        BINARY.relaxed_log_prob(y, logits, temperature),
        torch_density.log_prob(y).sum(-1),
        rtol=1e-12,
        atol=1e-12,
    )


# Monte-Carlo check of the ExpConcrete density against the family's sampler, C = 3 (one variable). In the
# log-ratio coordinates u = (y_1 − y_3, y_2 − y_3) the density is exp(log p(y)) with respect to Lebesgue
# measure (the base measure of relaxed_log_prob), and u_c = (a_c − a_3 + G_c − G_3)/λ: a smooth,
# light-tailed density on R². The plane is cut into GRID × GRID cells around the mode plus the rest;
# each cell's probability is the density integrated by Gauss–Legendre quadrature, compared with the
# fraction of SAMPLES that fall in it: z = (count − S·p) / √(S·p(1 − p)), the binomial standard error.
SAMPLES = 200_000
GRID = 8
FAMILY_ALPHA = 1e-3


def _density(y: torch.Tensor, logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """ExpConcrete log-density of one variable's ``y [..., 3]``, by the family."""
    return CATEGORICAL.relaxed_log_prob(y.unsqueeze(-2), logits.reshape(1, 3), temperature)


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
    noise = uniform_noise((SAMPLES, 3), logits, torch.Generator().manual_seed(seed))
    y = CATEGORICAL.relax(logits, noise, temperature)  # the family's own sampler: [S, 3]
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
    (torch.tensor([0.5, -0.3, 1.0], dtype=F64), 2.0 / 3.0, 12),  # logits, λ, seed
    (torch.tensor([2.0, -1.0, 0.0], dtype=F64), 1.5, 13),
]
# Bonferroni over every cell (and the outside) of every case, two-sided: about 4.5.
Z_CRITICAL = float(norm.isf(FAMILY_ALPHA / (2 * len(CASES) * (GRID * GRID + 1))))


@pytest.mark.parametrize(("logits", "temperature", "seed"), CASES, ids=["lambda-2/3", "lambda-1.5"])
def test_categorical_relaxed_density_integrates_to_the_sampler(
    logits: torch.Tensor, temperature: float, seed: int
):
    counts, probabilities = _counts_and_probabilities(_density, logits, temperature, seed)
    assert probabilities.min() > 0 and 0.05 < probabilities[-1] < 0.5  # every cell is tested
    z = float(np.abs(_z(counts, probabilities)).max())
    assert z < Z_CRITICAL, f"max |z| = {z:.2f} ≥ {Z_CRITICAL:.2f}"


def test_the_check_rejects_the_density_with_the_wrong_jacobian():
    # Power: read as a density on (y_1, y_2) instead of the log-ratios, it lacks the factor e^{−y_3}.
    def wrong(y: torch.Tensor, logits: torch.Tensor, temperature: float) -> torch.Tensor:
        return _density(y, logits, temperature) - y[..., 2]

    counts, probabilities = _counts_and_probabilities(wrong, *CASES[0])
    assert float(np.abs(_z(counts[:-1], probabilities[:-1])).max()) > Z_CRITICAL  # the cells alone
