"""CARMS (Dimitriev & Zhou 2021): its coupling, its pair weights, ARMS as its two-class case, its bias.

``test_unbiased.py`` covers ``carms`` with the other categorical estimators (K = 2, 3, 4 at its
points). Here, at a toy point with four classes — random probabilities, a uniform variable, a peaked
one (0.94 to 0.01) and one with tied probabilities — K runs to 5, and an enumerable categorical VAE
(3 variables × 4 classes, 64 codes) gives the exact ELBO gradient; at both the same z-test must reject
the estimator with its weights ``r_ij`` set to 1 (``rloo``'s formula on the coupled samples).

Threshold (family-wise), as in ``test_unbiased.py``: under the null every coordinate's z is
approximately |N(0, 1)| (a mean of ``DRAWS`` iid estimates); with ``N_TESTS`` = the coordinates of
every case, two-sided, Bonferroni gives ``z* = Φ⁻¹(1 − FAMILY_ALPHA / (2·N_TESTS))``, about 4.6 here.
Measured: correct ``carms`` at most 2.2 on the toy and 2.9 on the VAE; weights set to 1, 23 to 56.

The coupling's checks count classes over ``ROWS`` independent rows (one coupled draw of K samples
each): each cell's frequency is a binomial proportion, its z against the exact probability
approximately N(0, 1), with a Bonferroni threshold over every cell tested.
"""

from __future__ import annotations

import pytest
import torch
from scipy.stats import norm

from dcvbench.estimators import Estimate, get_estimator
from dcvbench.estimators.carms import (
    CARMS,
    antithetic_categorical,
    carms_gradient,
    parting_ratio,
    stick_breaking,
)
from dcvbench.estimators.evaluation import evaluate
from dcvbench.latent import CATEGORICAL
from dcvbench.latent.noise import uniform_noise
from dcvbench.measure.exact import exact_logit_gradient
from dcvbench.measure.variance import resample_variance
from dcvbench.problems.categorical_toy import CATEGORICAL_OBJECTIVES, make_categorical_objective
from dcvbench.problems.toy import exact_gradient, make_objective
from dcvbench.problems.vae import VAE

VARIABLES, CLASSES = 3, 4
KS = (2, 3, 4, 5)
DRAWS = 20_000
FAMILY_ALPHA = 1e-3


def carms_logits() -> torch.Tensor:
    """Two rows ``[2, N, C]`` float64: random probabilities; a uniform, a peaked and a tied variable."""
    generator = torch.Generator().manual_seed(4321)
    spread = torch.empty(VARIABLES, CLASSES, dtype=torch.float64).exponential_(generator=generator)
    spread = spread / spread.sum(-1, keepdim=True)  # uniform on the simplex
    extremes = torch.tensor(
        [[0.25, 0.25, 0.25, 0.25], [0.94, 0.03, 0.02, 0.01], [0.45, 0.05, 0.45, 0.05]], dtype=torch.float64
    )
    return torch.stack([spread, extremes]).log()


LOGITS = carms_logits()
PROBS = torch.softmax(LOGITS, -1)
CASES = [(k, objective) for k in KS for objective in CATEGORICAL_OBJECTIVES]
VAE_KS = (2, 4)
VAE_ROWS, PIXELS, HIDDEN = 3, 64, 16
N_TESTS = len(CASES) * LOGITS.numel() + len(VAE_KS) * VAE_ROWS * VARIABLES * CLASSES
Z_CRITICAL = float(norm.isf(FAMILY_ALPHA / (2 * N_TESTS)))


class UnweightedCARMS(CARMS):
    """CARMS with every pair weight ``r_ij = 1``: biased, the dependence between samples uncorrected."""

    def estimate(self, logits, f, noise):
        probs = self.family.probs(logits)  # [B, N, C]
        b, _ = antithetic_categorical(*stick_breaking(probs), noise)  # [K, B, N, C]
        evaluation = evaluate(f, b, with_input_grad=False)
        k = noise.shape[0]
        ones = torch.ones(k, k, *probs.shape[:-1], dtype=probs.dtype)  # [K, K, B, N]
        grad = carms_gradient(evaluation.values.detach(), b, probs, ones)
        return Estimate(grad=grad, values=evaluation.values)


def max_bias_z(estimator: CARMS, k: int, objective: str) -> float:
    f = make_categorical_objective(objective, VARIABLES, CLASSES)
    generator = torch.Generator().manual_seed(10 + k)
    result = resample_variance(estimator, LOGITS, f, k, DRAWS, generator)
    return float(result.bias_z(exact_gradient(f, LOGITS)).max())


def test_the_point_has_peaked_uniform_and_tied_probabilities():
    assert float(PROBS.max()) >= 0.94 and float(PROBS.min()) <= 0.01
    assert torch.allclose(PROBS[1, 0], torch.full((CLASSES,), 0.25, dtype=torch.float64))
    assert 4.3 < Z_CRITICAL < 4.8


@pytest.mark.parametrize(("k", "objective"), CASES)
def test_mean_matches_exact_gradient(k: int, objective: str):
    z = max_bias_z(CARMS(CATEGORICAL), k, objective)
    assert z < Z_CRITICAL, f"carms K={k} {objective}: max |z| = {z:.2f} ≥ {Z_CRITICAL:.2f}"


@pytest.mark.parametrize(("k", "objective"), CASES)
def test_check_rejects_unit_weights(k: int, objective: str):
    z = max_bias_z(UnweightedCARMS(CATEGORICAL), k, objective)
    assert z > Z_CRITICAL, f"carms with r = 1, K={k} {objective}, not rejected: max |z| = {z:.2f}"


# -- the enumerable VAE ----------------------------------------------------------------------------


def vae_max_bias_z(estimator: CARMS, k: int) -> float:
    """Against the exact gradient of a nonlinear float64 VAE with 64 codes, on 3 random binary images."""
    model = VAE(
        VARIABLES, CLASSES, arch="nonlinear", pixels=PIXELS, hidden=HIDDEN, dtype=torch.float64,
        generator=torch.Generator().manual_seed(3),
    )  # fmt: skip
    x = (torch.rand(VAE_ROWS, PIXELS, generator=torch.Generator().manual_seed(5)) < 0.3).to(torch.float64)
    settings = {"prior_temperature": 0.5, "kl": "relaxed", "bound": "elbo"}
    exact = exact_logit_gradient(model, x, **settings)
    with torch.no_grad():
        logits = model.encode(x)  # [B, N, C]
    f = model.objective(x, logits, generative_grads=False, **settings)
    result = resample_variance(estimator, logits, f, k, DRAWS, torch.Generator().manual_seed(30 + k))
    return float(result.bias_z(exact).max())


@pytest.mark.parametrize("k", VAE_KS)
def test_mean_is_the_exact_gradient_of_an_enumerable_vae(k: int):
    z = vae_max_bias_z(CARMS(CATEGORICAL), k)
    assert z < Z_CRITICAL, f"carms K={k} on the VAE: max |z| = {z:.2f} ≥ {Z_CRITICAL:.2f}"


@pytest.mark.parametrize("k", VAE_KS)
def test_check_rejects_unit_weights_on_the_vae(k: int):
    z = vae_max_bias_z(UnweightedCARMS(CATEGORICAL), k)
    assert z > Z_CRITICAL, f"carms with r = 1, K={k}, not rejected on the VAE: max |z| = {z:.2f}"


# -- two classes: ARMS ---------------------------------------------------------------------------

BITS = 6


@pytest.mark.parametrize("k", KS)
def test_two_classes_give_arms_gradient_on_the_same_uniforms(k: int):
    """Logits ``(0, η)`` make class 1 a bit with ``θ = σ(η)``; CARMS's single stage reads the first
    uniform of each variable, as ARMS reads its one, and takes the rarer value where ``c < min(θ, 1−θ)``
    just as ARMS does. So the samples are the same and the gradients agree to rounding: ARMS's for ``η``
    on class 1, its negative on class 0 (the score of class 0 is ``−(b − θ)``)."""
    theta = torch.tensor(
        [[0.02, 0.3, 0.5, 0.7, 0.98, 0.45], [0.6, 0.4, 0.1, 0.9, 0.5, 0.55]], dtype=torch.float64
    )
    eta = torch.logit(theta)  # [B, D]
    logits = torch.stack([torch.zeros_like(eta), eta], -1)  # [B, D, 2]
    bit_objective = make_objective("quadratic-form", BITS)

    def class_objective(b: torch.Tensor) -> torch.Tensor:
        return bit_objective(b[..., 1])  # [K, B]

    generator = torch.Generator().manual_seed(k)
    u = uniform_noise((k, *eta.shape), eta, generator)  # [K, B, D]
    unused = uniform_noise((k, *eta.shape), eta, generator)  # the last stage always stops
    arms = get_estimator("arms").estimate(eta, bit_objective, u)
    carms = get_estimator("carms", latent="categorical").estimate(
        logits, class_objective, torch.stack([u, unused], -1)
    )
    assert torch.equal(carms.values, arms.values)  # the same samples
    torch.testing.assert_close(carms.grad[..., 1], arms.grad, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(carms.grad[..., 0], -arms.grad, rtol=1e-12, atol=1e-15)


# -- the coupling --------------------------------------------------------------------------------

ROWS = 100_000
COUPLING_KS = (2, 3, 5)
# Bonferroni over the marginal cells (K samples × N × C per row of PROBS) and the joint cells (C × C).
CELLS = sum(len(PROBS) * VARIABLES * (k * CLASSES + CLASSES * CLASSES) for k in COUPLING_KS)
CELL_Z = float(norm.isf(FAMILY_ALPHA / (2 * CELLS)))
ROUNDING = 1e-12  # float64 sums of a few probabilities


def pair_joint(probs: torch.Tensor, k: int) -> torch.Tensor:
    """The full ``q [B, N, C, C]`` implied by the pair weights: ``π_i π_j / r_ij`` off the diagonal,
    ``r_ij`` read at the earlier of the two classes' stages, and, since each row of a joint sums to its
    marginal, ``q_ii = π_i − Σ_{j≠i} q_ij``."""
    order, stop = stick_breaking(probs)  # [B, N, C] each
    stage_of = order.argsort(-1)  # [B, N, C]
    earlier = torch.minimum(stage_of.unsqueeze(-1), stage_of.unsqueeze(-2)).clamp(max=CLASSES - 2)
    ratio = torch.take_along_dim(parting_ratio(stop, k).unsqueeze(-2), earlier, -1)  # [B, N, C, C]
    product = probs.unsqueeze(-1) * probs.unsqueeze(-2)
    off = (product / ratio).masked_fill(torch.eye(CLASSES, dtype=torch.bool), 0.0)
    diagonal = probs - off.sum(-1)  # [B, N, C]
    # Where it is 0 (a class never drawn twice) the subtraction leaves rounding, ~1e-16: snap it.
    diagonal = torch.where(diagonal.abs() < ROUNDING, torch.zeros_like(diagonal), diagonal)
    return off + torch.diag_embed(diagonal)


def coupled_draws(k: int, row: int) -> torch.Tensor:
    """``[K, ROWS, N, C]``: ``ROWS`` independent coupled draws at row ``row`` of :data:`PROBS`."""
    probs = PROBS[row].expand(ROWS, VARIABLES, CLASSES)
    u = uniform_noise((k, *probs.shape), probs, torch.Generator().manual_seed(100 * k + row))
    return antithetic_categorical(*stick_breaking(probs), u)[0]


def cell_z(frequency: torch.Tensor, probability: torch.Tensor) -> torch.Tensor:
    """|z| of binomial proportions over ROWS trials; a cell of probability 0 must never occur."""
    standard_error = (probability * (1.0 - probability) / ROWS).sqrt()
    z = (frequency - probability).abs() / standard_error
    never = torch.where(frequency > 0, torch.inf, 0.0)
    return torch.where(probability == 0, never, z)


@pytest.mark.parametrize("k", COUPLING_KS)
@pytest.mark.parametrize("row", [0, 1])
def test_each_sample_is_categorical_and_pairs_follow_the_joint(k: int, row: int):
    b = coupled_draws(k, row)  # [K, ROWS, N, C]
    marginal_z = cell_z(b.mean(1), PROBS[row])  # [K, N, C]
    assert float(marginal_z.max()) < CELL_Z, f"K={k}: marginal max |z| = {float(marginal_z.max()):.2f}"
    # Samples are exchangeable: test the first with the last.
    joint = torch.einsum("rnc,rnd->ncd", b[0], b[-1]) / ROWS  # [N, C, C]
    joint_z = cell_z(joint, pair_joint(PROBS[row : row + 1], k)[0])
    assert float(joint_z.max()) < CELL_Z, f"K={k}: pair joint max |z| = {float(joint_z.max()):.2f}"


@pytest.mark.parametrize("k", KS)
def test_samples_are_negatively_correlated(k: int):
    # Two samples share a class less often than independent ones would, class by class: q_ii < π_i².
    q = pair_joint(PROBS, k)
    diagonal = torch.diagonal(q, dim1=-2, dim2=-1)
    assert bool((diagonal < PROBS.pow(2)).all())
    # ... but not negatively: the pairs' weights leave each class's other pairs within its marginal.
    assert bool((diagonal >= 0).all())


def test_two_antithetic_samples_share_only_the_last_stage_class():
    # K = 2 couples each stage by the antithetic pair c₂ = 1 − c₁: at a stage with β ≤ ½ at most one of
    # the two stops, so the only class they can share is the last stage's (the most probable).
    q = pair_joint(PROBS, 2)
    diagonal = torch.diagonal(q, dim1=-2, dim2=-1)  # [B, N, C]
    last = stick_breaking(PROBS)[0][..., -1:]  # [B, N, 1]
    assert bool((diagonal.scatter(-1, last, 0.0) == 0).all())


def test_float32_with_probabilities_rounded_to_zero_stays_finite():
    # exp(−200) underflows to 0 in float32: such a class is never drawn and gets weight 0, not NaN.
    logits = torch.tensor([[[0.0, -200.0, 50.0, 1.0], [3.0, 3.0, -200.0, -200.0]]])  # [1, 2, 4]
    f = make_categorical_objective("quadratic-form", 2, CLASSES, dtype=torch.float32)
    estimate = get_estimator("carms", latent="categorical")(logits, f, 4, torch.Generator().manual_seed(0))
    assert bool(torch.isfinite(estimate.grad).all())
    _, stop = stick_breaking(torch.softmax(logits, -1))
    assert bool(torch.isfinite(parting_ratio(stop, 4)).all())
