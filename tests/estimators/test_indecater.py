"""IndeCateR (``indecater``): the paper's formula on the same samples, exactness with one sample on a
separable objective, its cost in evaluations of ``f``, its mean against the exact gradient of an
enumerable VAE, what trains the decoder, and the power of the mean check against broken variants.

Threshold (family-wise, as in ``tests/estimators/test_unbiased.py``). Under the null hypothesis (the
estimator is unbiased) each coordinate's ``|mean − exact| / s.e.`` over ``DRAWS`` estimates is
approximately ``|N(0, 1)|``; Bonferroni over every coordinate of every case tested for unbiasedness in
this file gives ``z* = Φ⁻¹(1 − FAMILY_ALPHA / (2·N_TESTS))``, about 4.5. The broken variants are
tested against the same draws and threshold and must exceed it.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm
from torch import Tensor
from torch.testing import assert_close

from dcvbench.estimators import estimator_info, get_estimator
from dcvbench.estimators.indecater import IndeCateR
from dcvbench.latent import BINARY, CATEGORICAL, LatentFamily, Neighbours
from dcvbench.latent.family import BinaryFamily, CategoricalFamily
from dcvbench.latent.noise import uniform_noise
from dcvbench.measure.exact import exact_logit_gradient
from dcvbench.measure.variance import resample_variance
from dcvbench.objectives import ProblemShape
from dcvbench.problems.categorical_toy import make_categorical_objective, random_categorical_logits
from dcvbench.problems.toy import exact_gradient, make_objective
from dcvbench.problems.vae import VAE

F64 = torch.float64
FAMILIES = {"binary": BINARY, "categorical": CATEGORICAL}
BITS = 6
VARIABLES, CLASSES = 3, 4


def toy(latent: str, objective: str, target: float = 0.3):
    """A toy of ``latent`` latents: 6 bits, or 3 variables of 4 classes."""
    if latent == "binary":
        return make_objective(objective, BITS, target=target)
    return make_categorical_objective(objective, VARIABLES, CLASSES)


def toy_logits(latent: str, rows: int = 4, seed: int = 0, scale: float = 2.0) -> Tensor:
    """Seeded logits ``[rows, *event]`` float64, uniform on ``[−scale, scale]``."""
    if latent == "binary":
        generator = torch.Generator().manual_seed(seed)
        return scale * (2.0 * torch.rand(rows, BITS, generator=generator, dtype=F64) - 1.0)
    return random_categorical_logits(VARIABLES, CLASSES, scale=scale, seed=seed, rows=rows)


# -- the formula ----------------------------------------------------------------------------------


def paper_estimate(family: LatentFamily, logits: Tensor, f, x: Tensor) -> Tensor:
    """The paper's form, loop by loop: ``(1/K) Σ_k Σ_n Σ_c ∇_η q_n(c) · f(x_k with x_n := c)``, every
    value ``c`` of every variable (the sampled one too, nothing subtracted), ``∇_η q_n(c)`` by autograd."""
    values, probabilities = [], []
    eta = logits.detach().requires_grad_(True)
    probs = family.probs(eta)  # [B, *event]
    for n in range(logits.shape[1]):
        for c in range(2 if family is BINARY else logits.shape[-1]):
            changed = x.clone()  # [K, B, *event]
            if family is BINARY:
                changed[..., n] = float(c)
                probabilities.append(probs[:, n] if c else 1.0 - probs[:, n])  # q_n(c): [B]
            else:
                changed[..., n, :] = torch.nn.functional.one_hot(torch.tensor(c), logits.shape[-1])
                probabilities.append(probs[:, n, c])
            values.append(f(changed).detach().sum(0))  # Σ_k f(x_k with x_n := c): [B]
    surrogate = sum(q * v for q, v in zip(probabilities, values, strict=True)).sum()
    (grad,) = torch.autograd.grad(surrogate, eta)
    return grad / x.shape[0]


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize(
    ("latent", "objective"),
    [("binary", "sum-square"), ("binary", "quadratic-form"), ("categorical", "quadratic-form")],
)
def test_estimate_is_the_papers_sum_over_every_value_on_the_same_samples(latent: str, objective: str, k: int):
    family, f, logits = FAMILIES[latent], toy(latent, objective), toy_logits(latent)
    estimator = get_estimator("indecater", latent)
    noise = estimator.sample(logits, k, torch.Generator().manual_seed(k))
    estimate = estimator.estimate(logits, f, noise)
    x = family.sample(logits, noise)  # the estimator's samples
    expected = paper_estimate(family, logits, f, x)
    assert expected.abs().max() > 1e-2  # a gradient worth comparing (not separable: not exact)
    assert_close(estimate.values, f(x), rtol=0, atol=0)  # values: f at the K samples
    # Nothing but rounding separates the two: f(x) subtracted (Σ_c ∇q_n(c) = 0) and the sum's order.
    assert_close(estimate.grad, expected, rtol=0, atol=1e-14)


def test_a_bit_gets_theta_one_minus_theta_times_its_difference_whatever_its_value():
    # g_d = θ_d(1 − θ_d)(f(x_{d:=1}) − f(x_{d:=0})) for K = 1, on a product f (not separable).
    weights = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=F64)

    def f(b: Tensor) -> Tensor:
        return torch.prod(1.0 + weights * b, -1)  # [K, B]

    logits = torch.tensor([[0.3, -1.2, 2.0, 0.0]] * 2, dtype=F64)  # [2, 4]
    noise = torch.tensor([[[0.1, 0.9, 0.5, 0.3], [0.9, 0.1, 0.99, 0.7]]], dtype=F64)  # [1, 2, 4]
    grad = get_estimator("indecater").estimate(logits, f, noise).grad
    x = BINARY.sample(logits, noise)[0]  # [2, 4]: different bits set in the two rows
    theta = torch.sigmoid(logits)
    for d in range(4):
        on, off = x.clone(), x.clone()
        on[:, d], off[:, d] = 1.0, 0.0
        expected = theta[:, d] * (1.0 - theta[:, d]) * (f(on) - f(off))  # [2]
        assert_close(grad[:, d], expected, rtol=1e-14, atol=0)


@settings(max_examples=60, deadline=None, derandomize=True)  # the same 60 examples every run
@given(
    latent=st.sampled_from(list(FAMILIES)),
    seed=st.integers(0, 2**31 - 1),
    scale=st.floats(0.01, 8.0),
    target=st.floats(0.0, 1.0),
)
def test_one_sample_is_exact_on_a_separable_objective(latent: str, seed: int, scale: float, target: float):
    # f = Σ_n f_n(x_n): the other variables add the same to every f(x with x_n := c), so Σ_c ∇q_n(c)
    # cancels them and each draw is the exact gradient, up to rounding: not a statistical tolerance.
    f, logits = toy(latent, "separable", target), toy_logits(latent, rows=64, seed=seed, scale=scale)
    grad = get_estimator("indecater", latent)(logits, f, 1, torch.Generator().manual_seed(seed)).grad
    assert_close(grad, exact_gradient(f, logits), rtol=0, atol=1e-12)  # 64 independent draws


# -- cost ----------------------------------------------------------------------------------------


class CountingObjective:
    """``f`` that counts its evaluations per row: one per leading index of its ``[..., B]`` values."""

    def __init__(self, f):
        self.f = f
        self.evaluations = 0

    def __call__(self, b: Tensor) -> Tensor:
        values = self.f(b)  # [..., B]
        self.evaluations += values.numel() // values.shape[-1]
        return values


@pytest.mark.parametrize("k", [1, 2, 5])
@pytest.mark.parametrize(
    ("latent", "shape"),
    [("binary", ProblemShape(BITS)), ("categorical", ProblemShape(VARIABLES, classes=CLASSES))],
)
def test_the_registered_cost_is_the_evaluations_made(latent: str, shape: ProblemShape, k: int):
    f = CountingObjective(toy(latent, "quadratic-form"))
    get_estimator("indecater", latent)(toy_logits(latent), f, k, torch.Generator().manual_seed(0))
    info = estimator_info("indecater", latent)
    assert f.evaluations == info.evals(k, shape) == k * (1 + shape.family.neighbour_count(shape.event))
    assert info.min_k == 1 and info.unbiased and not info.needs_input_grad


# -- the enumerable VAE: unbiased, and what trains the decoder ----------------------------------

ROWS, PIXELS, HIDDEN = 3, 64, 16
VAE_BITS = 8
DRAWS = 10_000
FAMILY_ALPHA = 1e-3
VAE_CASES = [("binary", 1), ("binary", 2), ("categorical", 1), ("categorical", 2)]
COORDINATES = {"binary": ROWS * VAE_BITS, "categorical": ROWS * VARIABLES * CLASSES}
N_TESTS = sum(COORDINATES[latent] for latent, _ in VAE_CASES)
Z_CRITICAL = float(norm.isf(FAMILY_ALPHA / (2 * N_TESTS)))


def vae(latent: str) -> tuple[VAE, Tensor]:
    """An enumerable nonlinear VAE in float64 (256 or 64 codes) and 3 random binary images."""
    classes = None if latent == "binary" else CLASSES
    latents = VAE_BITS if classes is None else VARIABLES
    model = VAE(
        latents, classes, arch="nonlinear", pixels=PIXELS, hidden=HIDDEN, dtype=F64,
        generator=torch.Generator().manual_seed(3),
    )  # fmt: skip
    x = (torch.rand(ROWS, PIXELS, generator=torch.Generator().manual_seed(5)) < 0.3).to(F64)  # [B, P]
    return model, x


def vae_max_bias_z(latent: str, k: int, estimator: IndeCateR, seed: int) -> float:
    model, x = vae(latent)
    settings = {"prior_temperature": 0.5, "kl": "relaxed", "bound": "elbo"}
    exact = exact_logit_gradient(model, x, **settings)
    with torch.no_grad():
        logits = model.encode(x)
    f = model.objective(x, logits, generative_grads=False, **settings)
    result = resample_variance(estimator, logits, f, k, DRAWS, torch.Generator().manual_seed(seed))
    return float(result.bias_z(exact).max())


def test_threshold_is_a_sensible_family_wise_bound():
    assert 4.0 < Z_CRITICAL < 5.0


@pytest.mark.parametrize(("latent", "k"), VAE_CASES)
def test_mean_is_the_exact_gradient_of_an_enumerable_vae(latent: str, k: int):
    z = vae_max_bias_z(latent, k, get_estimator("indecater", latent), seed=20 + k)
    assert z < Z_CRITICAL, f"{latent} K={k}: max |z| = {z:.2f} ≥ {Z_CRITICAL:.2f}"


@pytest.mark.parametrize("latent", list(FAMILIES))
def test_only_the_samples_train_the_decoder(latent: str):
    # The values are f at the K samples, with the decoder's graph; the M·K changes carry none.
    model, x = vae(latent)
    logits = model.encode(x).detach()
    f = model.objective(x, logits)
    estimator = get_estimator("indecater", latent)
    noise = estimator.sample(logits, 2, torch.Generator().manual_seed(1))
    estimate = estimator.estimate(logits, f, noise)
    assert estimate.values.shape == (2, ROWS) and estimate.param_grads is None
    assert estimate.grad.grad_fn is None
    params = model.decoder_parameters()
    trained = torch.autograd.grad(estimate.values.mean(), params)
    expected = torch.autograd.grad(f(model.family.sample(logits, noise)).mean(), params)
    for got, want in zip(trained, expected, strict=True):
        assert_close(got, want, rtol=0, atol=0)


# -- power: broken variants are rejected ----------------------------------------------------------


def _without_probabilities(neighbours: Neighbours) -> Neighbours:
    """Every change weighted 1 instead of by ``q_n(c)``."""
    return Neighbours(neighbours.points, torch.ones_like(neighbours.probs), neighbours.changed)


class BinaryWithoutProbabilities(BinaryFamily):
    def neighbours(self, b: Tensor, probs: Tensor) -> Neighbours:
        return _without_probabilities(super().neighbours(b, probs))


class CategoricalWithoutProbabilities(CategoricalFamily):
    def neighbours(self, b: Tensor, probs: Tensor) -> Neighbours:
        return _without_probabilities(super().neighbours(b, probs))


class CategoricalMissingAClass(CategoricalFamily):
    """The changes to one of the ``C − 1`` other classes of every variable left out: ``f(x)`` is then
    subtracted from a sum over ``c`` that is no longer complete, and ``Σ_c ∇q_n(c) ≠ 0`` over it."""

    def neighbours(self, b: Tensor, probs: Tensor) -> Neighbours:
        full = super().neighbours(b, probs)  # changes in the order (n, r), r = 1 … C − 1
        others = b.shape[-1] - 1
        kept = torch.arange(full.points.shape[0]) % others != others - 1  # drop r = C − 1
        return Neighbours(full.points[kept], full.probs[kept], full.changed[kept])


BROKEN = [
    ("binary", BinaryWithoutProbabilities(), "no-probabilities"),
    ("categorical", CategoricalWithoutProbabilities(), "no-probabilities"),
    ("categorical", CategoricalMissingAClass(), "a-class-missing"),
]


@pytest.mark.parametrize(("latent", "family", "label"), BROKEN, ids=[f"{b[0]}-{b[2]}" for b in BROKEN])
def test_the_mean_check_rejects_a_broken_variant(latent: str, family: LatentFamily, label: str):
    # The same check, draws and threshold as the unbiased cases, at K = 1.
    z = vae_max_bias_z(latent, 1, IndeCateR(family).to(F64), seed=21)
    assert z > Z_CRITICAL, f"{latent} {label} not rejected: max |z| = {z:.2f}"


def test_the_broken_variants_change_the_estimate_of_the_same_samples():
    # A sanity check of the variants themselves, on the toy: same noise, different estimate.
    for latent, family, _ in BROKEN:
        logits, f = toy_logits(latent), toy(latent, "quadratic-form")
        noise = uniform_noise((2, *logits.shape), logits, torch.Generator().manual_seed(0))
        good = get_estimator("indecater", latent).estimate(logits, f, noise).grad
        broken = IndeCateR(family).estimate(logits, f, noise).grad
        assert (good - broken).abs().max() > 1e-3
