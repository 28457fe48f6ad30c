"""RODEO (``rodeo``, DESIGN §3.8): the literal formula, its network, exact unbiasedness, the power of
the z-test against broken Stein operators, the learning of α, β and ψ, and checkpoints.

Exact unbiasedness. On latents small enough to enumerate every joint draw of the K samples (3 bits,
or 2 variables of 3 classes: 8 or 9 values per sample), the mean of the estimate is the finite sum
``Σ q(b_1)···q(b_K) g(b_1, …, b_K)``, computed in float64. It must equal the exact gradient up to
rounding — for fresh, trained and randomised α, β, ψ, for K = 2 and 3 (and 4, randomised), at
uniform and at peaked probabilities, on the toys and on an enumerable VAE — and the same sum shows
the bias of a deliberately broken Stein operator outright (or its absence: a Gibbs kernel that never
flips one bit still leaves q invariant, so dropping a bit's neighbour is no bias; dropping one class
of a variable is). Rounding: each of the ``R`` terms is a few ulps
(≤ 8ε) of the largest estimate ``G`` off, and summing ``R`` terms whose weights sum to 1 adds at most
``R·ε·G``: a tolerance of ``(8 + R)·ε·G``, at most 3e-12·G here (measured: 5e-16·G).

Statistical. The z-test of ``test_unbiased.py`` — its points, draws and Bonferroni threshold — must
reject the biased broken Stein operators too: the checks there mean nothing if it could not.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from dcvbench.checkpoints import CHECKPOINT, load_checkpoint, write_checkpoint
from dcvbench.config import VaeConfig
from dcvbench.estimators import (
    Estimator,
    EstimatorError,
    build_estimator,
    default_settings,
    get_estimator,
    rodeo,
)
from dcvbench.estimators.rodeo import Rodeo, SteinControl
from dcvbench.jobs.vae import resume_vae, run_vae
from dcvbench.latent import BINARY, CATEGORICAL, LatentFamily
from dcvbench.measure.variance import draw_estimates
from dcvbench.objectives import ProblemShape
from dcvbench.problems.categorical_toy import CATEGORICAL_OBJECTIVES, make_categorical_objective
from dcvbench.problems.toy import OBJECTIVES, exact_gradient, make_objective
from dcvbench.problems.vae import VAE, NegativeELBO
from dcvbench.results import TIMING_COLUMNS, read_trace
from tests.estimators import test_unbiased as unbiased
from tests.jobs.conftest import InterruptAt
from tests.problems.test_enumerable import exact_elbo, gradient_of, tiny_vae

F64 = torch.float64
BITS = 3
VARIABLES, CLASSES = 2, 3
KS = (2, 3, 4)
STATES = ("fresh", "trained", "random")


def toy(family: LatentFamily, objective: str):
    if family is BINARY:  # t = 0.3: the published t = 0.499 leaves almost no gradient
        return make_objective(objective, BITS, target=0.3)
    return make_categorical_objective(objective, VARIABLES, CLASSES)


def uniform_and_peaked(family: LatentFamily) -> Tensor:
    """Two rows of logits, float64: uniform probabilities, and peaked ones (0.03 to 0.97)."""
    if family is BINARY:
        return torch.logit(torch.tensor([[0.5, 0.5, 0.5], [0.03, 0.6, 0.97]], dtype=F64))
    uniform = torch.full((VARIABLES, CLASSES), 1.0 / CLASSES, dtype=F64)
    peaked = torch.tensor([[0.97, 0.02, 0.01], [0.2, 0.5, 0.3]], dtype=F64)
    return torch.stack([uniform, peaked]).log()


def build(family: LatentFamily = BINARY, dtype: torch.dtype = F64, **settings) -> Rodeo:
    """As the jobs build it (the toy's settings), in ``dtype``."""
    shape = ProblemShape(BITS) if family is BINARY else ProblemShape(VARIABLES, classes=CLASSES)
    return build_estimator("rodeo", {**default_settings("toy"), **settings}, shape).to(dtype)


def train(estimator: Rodeo, steps: int = 100, seed: int = 11) -> None:
    """``steps`` updates at another point of another objective than the tests use, as a run would."""
    family = estimator.family
    generator = torch.Generator().manual_seed(seed)
    if family is BINARY:
        f = make_objective("quadratic-form", BITS, seed=7)
        logits = torch.logit(torch.linspace(0.2, 0.9, BITS, dtype=F64)).repeat(8, 1)  # [8, D]
    else:
        f = make_categorical_objective("separable", VARIABLES, CLASSES, seed=5)
        logits = torch.randn(8, VARIABLES, CLASSES, generator=generator, dtype=F64)
    for _ in range(steps):
        estimator.update(estimator(logits, f, 2, generator))
    assert float(estimator.alpha.detach()) != 0.0 and float(estimator.beta.detach()) != 0.0


def randomise(estimator: Rodeo, seed: int = 13) -> None:
    """α, β and every weight of ψ random, ψ of the order of f (a control that dominated g would hide
    a bias)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        estimator.alpha.fill_(0.8)
        estimator.beta.fill_(-0.6)
        for param in estimator.network.parameters():
            param.copy_(0.3 * torch.randn(param.shape, generator=generator, dtype=param.dtype))


def prepared(family: LatentFamily, state: str, **settings) -> Rodeo:
    estimator = build(family, **settings)
    if state == "trained":
        train(estimator)
    elif state == "random":
        randomise(estimator)
    return estimator


# -- the formula ---------------------------------------------------------------------------------


def literal_estimate(estimator: Rodeo, logits: Tensor, f, noise: Tensor) -> Tensor:
    """The estimator of the module docstring by loops over rows, k, j ≠ k and every one-variable
    change, each neighbour written out by hand."""
    family = estimator.family
    probs, b = family.probs(logits), family.sample(logits, noise)
    evaluation = f.value_and_input_grad(b)
    values, grads = evaluation.values, evaluation.input_grad
    k, rows, variables = b.shape[0], b.shape[1], b.shape[2]
    alpha, beta = float(estimator.alpha), float(estimator.beta)

    def changes(x: Tensor, p: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Each one-variable change of ``x`` with the probability of its new value."""
        result = []
        for n in range(variables):
            for value in range(2) if family is BINARY else range(CLASSES):
                y = x.clone()
                if family is BINARY and value != x[n]:
                    y[n] = value
                    result.append((y, p[n] if value == 1 else 1 - p[n]))
                elif family is CATEGORICAL and x[n, value] == 0:
                    y[n] = 0
                    y[n, value] = 1
                    result.append((y, p[n, value]))
        return result

    def h(sample: int, row: int, y: Tensor) -> Tensor:
        """``mean_{j≠k} ψ(⟨∇f_j, y − b_j⟩, f_j)``: ``[2]``."""
        outputs = [
            estimator.network((grads[j, row] * (y - b[j, row])).sum().reshape(1), values[j, row])[0]
            for j in range(k)
            if j != sample
        ]
        return torch.stack(outputs).mean(0).to(y.dtype)

    scalar = torch.zeros(k, rows, dtype=logits.dtype)
    vector = torch.zeros_like(b)
    for row, sample in itertools.product(range(rows), range(k)):
        x, p = b[sample, row], probs[row]
        at_x = h(sample, row, x)
        for y, w in changes(x, p):
            at_y = h(sample, row, y)
            scalar[sample, row] += w * (at_y[0] - at_x[0]) / variables
            vector[sample, row] += w * (at_y[1] * (y - p) - at_x[1] * (x - p)) / variables
    grad = torch.zeros_like(logits)
    for row, sample in itertools.product(range(rows), range(k)):
        others = [values[j, row] + alpha * scalar[j, row] for j in range(k) if j != sample]
        signal = values[sample, row] - sum(others) / (k - 1)
        grad[row] += (signal * (b[sample, row] - probs[row]) + beta * vector[sample, row]) / k
    return grad


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("family", [BINARY, CATEGORICAL], ids=["binary", "categorical"])
def test_vectorised_estimate_matches_the_literal_formula(family: LatentFamily, k: int):
    estimator = prepared(family, "random")
    logits = uniform_and_peaked(family)
    f = toy(family, "quadratic-form")
    noise = estimator.sample(logits, k, torch.Generator().manual_seed(k))
    with torch.no_grad():
        fast = estimator.eval().estimate(logits, f, noise).grad
        slow = literal_estimate(estimator, logits, f, noise)
    assert slow.abs().max() > 0.1  # a real comparison, not of zeros
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("family", [BINARY, CATEGORICAL], ids=["binary", "categorical"])
def test_fresh_estimator_is_rloo_on_the_same_samples(family: LatentFamily, k: int):
    estimator = build(family)
    logits, f = uniform_and_peaked(family), toy(family, "quadratic-form")
    estimate = estimator(logits, f, k, torch.Generator().manual_seed(3))
    reference = get_estimator("rloo", latent=family.name)(logits, f, k, torch.Generator().manual_seed(3))
    assert reference.grad.abs().max() > 0.01
    # α = β = 0: only the leave-one-out term remains, on the same samples.
    torch.testing.assert_close(estimate.grad, reference.grad, rtol=1e-14, atol=1e-15)
    assert {name: float(value) for name, value in estimate.stats.items()} == {"alpha": 0.0, "beta": 0.0}


def dense_network(network: SteinControl, increments: Tensor, values: Tensor) -> Tensor:
    """ψ as the authors write it: every hidden unit at every point."""
    hidden = network.increment_layer(increments.unsqueeze(-1)) + network.value_layer(values[..., None, None])
    return network.output_layer(F.leaky_relu(hidden, rodeo.NEGATIVE_SLOPE))


def test_network_is_the_leaky_relu_network_it_describes_in_values_and_gradients():
    network = SteinControl(rodeo.HIDDEN, torch.Generator().manual_seed(0)).double()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in network.parameters():
            param.copy_(torch.randn(param.shape, generator=generator, dtype=F64))
        # Flat units (s_h = 0), whose kinks are ±∞ or NaN: one on, one exactly at 0.
        network.increment_layer.weight[:2] = 0.0
        network.value_layer.weight[1] = 0.0
        network.value_layer.bias[1] = 0.0
        network.increment_layer.bias[1] = 0.0
    increments = 3.0 * torch.randn(4, 5, 11, generator=generator, dtype=F64)  # [..., P]
    increments[0, 0, :3] = increments[0, 0, 3]  # ties between points
    values = 2.0 * torch.randn(4, 5, generator=generator, dtype=F64)
    fast, dense = network(increments, values), dense_network(network, increments, values)
    assert fast.shape == (4, 5, 11, 2)
    torch.testing.assert_close(fast, dense, rtol=1e-13, atol=1e-12)
    params = list(network.parameters())
    for a, b in zip(
        torch.autograd.grad(fast.pow(2).sum(), params),
        torch.autograd.grad(dense.pow(2).sum(), params),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-11)


def test_network_starts_as_keras_dense_layers():
    network = SteinControl(rodeo.HIDDEN, torch.Generator().manual_seed(0))
    for layer in (network.increment_layer, network.value_layer, network.output_layer):
        limit = math.sqrt(6.0 / (layer.in_features + layer.out_features))  # Glorot uniform
        assert layer.weight.abs().max() <= limit and layer.weight.abs().max() > 0.9 * limit
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))
    again = SteinControl(rodeo.HIDDEN, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(network.parameters(), again.parameters(), strict=True))
    assert build().network.state_dict().keys() == network.state_dict().keys()


def test_blocks_of_rows_give_the_estimate_of_one_block(monkeypatch):
    estimator = prepared(BINARY, "random")
    logits, f = uniform_and_peaked(BINARY).repeat(5, 1), toy(BINARY, "sum-square")  # 10 rows
    noise = estimator.sample(logits, 3, torch.Generator().manual_seed(2))
    whole = estimator.estimate(logits, f, noise)
    monkeypatch.setattr(rodeo, "BLOCK_ELEMENTS", 1)  # one row per block
    blocks = estimator.estimate(logits, f, noise)
    torch.testing.assert_close(blocks.grad, whole.grad, rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(blocks.learning, whole.learning, rtol=1e-14, atol=0.0)


# -- exact unbiasedness --------------------------------------------------------------------------


def enumerated(family: LatentFamily, logits: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Every joint draw of ``k`` samples at each row of ``logits [L, *event]``: the samples
    ``b [K, L·J, *event]`` (J = values^K per row, row-major in L), their joint probabilities
    ``[L·J]`` and the uniform noise from which the family samples exactly them."""
    event = logits.shape[1:]
    values = family.enumerate(event, F64)  # [V, *event]
    tuples = torch.tensor(list(itertools.product(range(len(values)), repeat=k)))  # [J, K]
    b = values[tuples].transpose(0, 1).repeat(1, len(logits), *(1,) * len(event))  # [K, L·J, *event]
    rows = logits.repeat_interleave(len(tuples), 0)  # [L·J, *event]
    probability = family.log_prob(b, rows).sum(0).exp()  # [L·J]
    if family is BINARY:  # b = 1[u < θ]
        theta = torch.sigmoid(rows)
        noise = torch.where(b == 1, theta / 2, (1 + theta) / 2)
    else:  # Gumbel-max: the sampled class's Gumbel ≈ 27.6, the others' ≈ −3.3
        noise = torch.where(b == 1, 1.0 - 1e-12, 1e-12)
    assert torch.equal(family.sample(rows, noise), b)
    return b, probability, noise


def exact_mean(estimator: Estimator, logits: Tensor, f, k: int) -> tuple[Tensor, float]:
    """``E[g]`` ``[L, *event]`` by enumeration, and its rounding tolerance (module docstring)."""
    _, probability, noise = enumerated(estimator.family, logits, k)
    rows = logits.repeat_interleave(len(probability) // len(logits), 0)
    with torch.no_grad():
        grads = estimator.eval().estimate(rows, f, noise).grad  # [L·J, *event]
    weighted = probability.reshape(-1, *(1,) * (logits.dim() - 1)) * grads
    rounding = (8 + len(probability)) * torch.finfo(F64).eps * float(grads.abs().max())
    return weighted.reshape(len(logits), -1, *logits.shape[1:]).sum(1), rounding


def exact_cases() -> list:
    """Every state at K = 2 and 3; the randomised one, which exercises every part, at K = 4 too (the
    costliest: 9⁴ joint draws per row)."""
    cases = []
    for family, objectives in ((BINARY, OBJECTIVES), (CATEGORICAL, CATEGORICAL_OBJECTIVES)):
        for state, k, objective in itertools.product(STATES, KS, objectives):
            if k == max(KS) and state != "random":
                continue
            label = f"{family.name}-{state}-K{k}-{objective}"
            cases.append(pytest.param(family, state, k, objective, id=label))
    return cases


@pytest.mark.parametrize(("family", "state", "k", "objective"), exact_cases())
def test_exact_mean_is_the_exact_gradient(family: LatentFamily, state: str, k: int, objective: str):
    estimator = prepared(family, state, control_lr=1e-2)
    logits, f = uniform_and_peaked(family), toy(family, objective)
    mean, rounding = exact_mean(estimator, logits, f, k)
    exact = exact_gradient(f, logits)
    assert exact.abs().max() > 1e-3  # a real gradient to match
    torch.testing.assert_close(mean, exact, rtol=0.0, atol=rounding)


def test_exact_mean_on_an_enumerable_vae_is_the_gradient_of_its_elbo():
    # f: the negative ELBO of a small VAE (non-linear in b), three rows of data.
    model, x, logits = tiny_vae()
    estimator = prepared(BINARY, "random")
    exact = gradient_of(lambda eta: -exact_elbo(model, x, eta), logits)
    for k in (2, 3):
        draws = 2 ** (logits.shape[1] * k)
        f = NegativeELBO(model, x.repeat_interleave(draws, 0), logits.repeat_interleave(draws, 0), False)
        mean, rounding = exact_mean(estimator, logits, f, k)
        torch.testing.assert_close(mean, exact, rtol=0.0, atol=rounding)


# -- broken Stein operators ----------------------------------------------------------------------


def without_the_sample(at_neighbours: Tensor, at_sample: Tensor, weights: Tensor, variables: int) -> Tensor:
    """``(1/N) Σ_m w_m h(y_m)``: ``−h(x)`` dropped."""
    return (weights * at_neighbours).sum(-1) / variables


def with_the_sample_added(
    at_neighbours: Tensor, at_sample: Tensor, weights: Tensor, variables: int
) -> Tensor:
    """``(1/N) Σ_m w_m (h(y_m) + h(x))``: ``h(x)`` with the wrong sign."""
    return (weights * (at_neighbours + at_sample.unsqueeze(-1))).sum(-1) / variables


GIBBS_MOVES = rodeo.gibbs_moves  # the original, for a broken one that calls it


def first_change_missing(family: LatentFamily, b: Tensor, probs: Tensor) -> tuple[Tensor, Tensor]:
    """The Gibbs kernel's changes without the first change of the first variable (weight 0)."""
    moves, weights = GIBBS_MOVES(family, b, probs)
    weights = weights.clone()
    weights[0, ..., 0] = 0.0
    return moves, weights


BROKEN = {
    "without-h(x)": ("gibbs_stein", without_the_sample),
    "plus-h(x)": ("gibbs_stein", with_the_sample_added),
    "change-missing": ("gibbs_moves", first_change_missing),
}


def break_estimator(monkeypatch, broken: str) -> None:
    monkeypatch.setattr(rodeo, *BROKEN[broken])


def biased(family: LatentFamily, broken: str) -> bool:
    """Whether the broken operator is biased. Without one bit's flip the kernel still leaves q
    invariant (it never resamples that bit, a Gibbs kernel on the others), so its operator still has
    mean zero; without one class of a variable it does not."""
    return family is CATEGORICAL or broken != "change-missing"


@pytest.mark.parametrize("broken", BROKEN)
@pytest.mark.parametrize("family", [BINARY, CATEGORICAL], ids=["binary", "categorical"])
def test_exact_mean_shows_a_broken_stein_operator(monkeypatch, family: LatentFamily, broken: str):
    estimator = prepared(family, "random")
    logits, f = uniform_and_peaked(family), toy(family, "quadratic-form")
    break_estimator(monkeypatch, broken)
    mean, rounding = exact_mean(estimator, logits, f, 2)
    error = float((mean - exact_gradient(f, logits)).abs().max())
    if biased(family, broken):
        assert error > 1e-3 * float(mean.abs().max()) > 1e6 * rounding
    else:
        assert error <= rounding


@pytest.mark.parametrize("broken", [name for name in BROKEN if biased(BINARY, name)])
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_the_unbiasedness_check_rejects_a_broken_stein_operator(monkeypatch, objective: str, broken: str):
    # test_unbiased.py's check of learned controls: its points, its draws, its threshold.
    estimator = prepared(BINARY, "random")
    break_estimator(monkeypatch, broken)
    z = unbiased.max_bias_z(estimator, 2, objective, seed=1002, draws=unbiased.LEARNED_DRAWS)
    assert z > unbiased.Z_CRITICAL, f"{broken} not rejected on {objective}: max |z| = {z:.2f}"


@pytest.mark.parametrize("broken", BROKEN)
@pytest.mark.parametrize("objective", CATEGORICAL_OBJECTIVES)
def test_the_categorical_check_rejects_a_broken_stein_operator(monkeypatch, objective: str, broken: str):
    break_estimator(monkeypatch, broken)
    z = unbiased.categorical_max_bias_z("rodeo", {}, 2, objective, seed=2002, prepare=randomise)
    limit = unbiased.CATEGORICAL_Z_CRITICAL
    assert z > limit, f"{broken} not rejected on {objective}: max |z| = {z:.2f}"


# -- learning ------------------------------------------------------------------------------------


def test_learning_loss_is_the_mean_squared_estimate_and_its_gradient():
    # Central finite differences of mean(g²) at fixed noise, for α, β and weights of ψ, all non-zero
    # so that every path of the graph is exercised.
    estimator = prepared(BINARY, "random")
    logits, f = uniform_and_peaked(BINARY), toy(BINARY, "quadratic-form")
    noise = estimator.sample(logits, 3, torch.Generator().manual_seed(8))
    estimate = estimator.estimate(logits, f, noise)
    assert not estimate.grad.requires_grad
    torch.testing.assert_close(estimate.learning.detach(), estimate.grad.pow(2).mean(), rtol=1e-14, atol=0.0)
    params = list(estimator.parameters())
    analytic = torch.autograd.grad(estimate.learning, params)

    def loss() -> float:
        with torch.no_grad():
            return float(estimator.eval().estimate(logits, f, noise).grad.pow(2).mean())

    step = 1e-6
    for param, gradient in zip(params, analytic, strict=True):
        for index in range(min(3, param.numel())):
            with torch.no_grad():
                param.view(-1)[index] += step
            plus = loss()
            with torch.no_grad():
                param.view(-1)[index] -= 2 * step
            minus = loss()
            with torch.no_grad():
                param.view(-1)[index] += step
            numeric = (plus - minus) / (2 * step)
            assert float(gradient.view(-1)[index]) == pytest.approx(numeric, rel=1e-6, abs=1e-10)


def test_estimates_are_the_same_in_training_and_in_eval_mode_and_only_updates_learn():
    estimator = build()
    logits, f = uniform_and_peaked(BINARY), toy(BINARY, "quadratic-form")
    noise = estimator.sample(logits, 2, torch.Generator().manual_seed(6))
    measured = estimator.eval().estimate(logits, f, noise)
    assert measured.learning is None
    estimator.update(measured)  # nothing to learn from
    trained = estimator.train().estimate(logits, f, noise)
    torch.testing.assert_close(trained.grad, measured.grad, rtol=0.0, atol=0.0)
    assert estimator.state_stats() == {"alpha": 0.0, "beta": 0.0}
    estimator.update(trained)
    # Adam's first step moves α and β by almost its rate (1e-3); ψ has no gradient while α = β = 0.
    assert all(0.99e-3 < abs(value) <= 1e-3 for value in estimator.state_stats().values())
    assert torch.equal(trained.stats["alpha"], torch.zeros((), dtype=F64))  # the estimate kept its α
    network, initial = estimator.network.parameters(), build().network.parameters()
    assert all(torch.equal(a, b) for a, b in zip(network, initial, strict=True))


def variance_and_standard_error(estimator: Estimator, logits: Tensor, f, k: int, draws: int, seed: int):
    """Mean per-coordinate variance of ``draws`` estimates, and its standard error (per-draw squared
    deviations averaged over coordinates: their mean is the variance, their spread its s.e.)."""
    generator = torch.Generator().manual_seed(seed)
    grads = torch.cat([g for g, _ in draw_estimates(estimator, logits, f, k, draws, generator)])  # [M, 1, D]
    squares = (grads - grads.mean(0)).pow(2).mean((1, 2)) * draws / (draws - 1)  # [M]
    return float(squares.mean()), float(squares.std() / draws**0.5)


def test_training_lowers_the_variance_below_rloo():
    dim = 10
    logits = torch.logit(torch.linspace(0.1, 0.9, dim, dtype=F64)).unsqueeze(0)  # [1, D]
    f = make_objective("quadratic-form", dim)
    estimator = build(control_lr=1e-2)
    before, before_se = variance_and_standard_error(estimator, logits, f, 2, 20_000, seed=1)  # rloo's
    generator = torch.Generator().manual_seed(2)
    for _ in range(300):  # 16 independent rows per step: a less noisy gradient of mean(g²)
        estimator.update(estimator(logits.repeat(16, 1), f, 2, generator))
    after, after_se = variance_and_standard_error(estimator, logits, f, 2, 20_000, seed=1)
    assert after < before - 5 * (before_se**2 + after_se**2) ** 0.5, (before, after)
    assert after < 0.5 * before  # measured: 6× lower (α ≈ 0.46, β ≈ −0.33)


# -- checkpoints ---------------------------------------------------------------------------------


def small_vae() -> tuple[VAE, Tensor, Tensor]:
    """A float32 VAE as the jobs train it, a batch ``x [8, 12]`` and its posterior logits ``[8, 5]``."""
    generator = torch.Generator().manual_seed(3)
    model = VAE(latent=5, arch="nonlinear", pixels=12, hidden=8, generator=generator)
    x = (torch.rand(8, 12, generator=generator) < 0.5).float()
    return model, x, model.encode(x).detach()


def continue_training(estimator: Rodeo, logits: Tensor, f, steps: int, seed: int) -> list[Tensor]:
    generator = torch.Generator().manual_seed(seed)
    grads = []
    for _ in range(steps):
        estimate = estimator(logits, f, 3, generator)
        estimator.update(estimate)
        grads.append(estimate.grad)
    return grads


def test_state_round_trips_through_a_checkpoint_and_continues_bit_identically(tmp_path):
    model, x, logits = small_vae()
    f = NegativeELBO(model, x, logits)
    shape, settings = model.problem_shape, default_settings("vae")
    estimator = build_estimator("rodeo", settings, shape)
    continue_training(estimator, logits, f, 5, seed=4)
    write_checkpoint(tmp_path / CHECKPOINT, {"step": 5, "estimator": estimator.state_dict()})
    restored = build_estimator("rodeo", settings, shape)
    restored.load_state_dict(load_checkpoint(tmp_path / CHECKPOINT, torch.device("cpu"))["estimator"])
    assert int(restored.optimizer.state_dict()["state"][0]["step"]) == 5  # Adam's moments came back too
    for a, b in zip(
        continue_training(estimator, logits, f, 4, seed=5),
        continue_training(restored, logits, f, 4, seed=5),
        strict=True,
    ):
        assert torch.equal(a, b)
    for (name, a), b in zip(estimator.state_dict().items(), restored.state_dict().values(), strict=True):
        assert name == "_extra_state" or torch.equal(a, b), name


def test_options_are_checked_and_k_must_be_two_or_more():
    with pytest.raises(ValueError, match=r"control_lr must be > 0, got 0\.0"):
        Rodeo(control_lr=0.0)
    with pytest.raises(ValueError, match="hidden must be ≥ 1, got 0"):
        Rodeo(hidden=0)
    logits, f = uniform_and_peaked(BINARY), toy(BINARY, "separable")
    with pytest.raises(EstimatorError, match="K must be ≥ 2 for rodeo, got 1"):
        build()(logits, f, 1, torch.Generator())


VAE_RUN = VaeConfig.for_protocol(
    "dcv", arch="nonlinear", estimators=("rodeo",), latent_vars=8, batch_size=20, steps=30, log_every=5,
    var_every=10, eval_every=30, checkpoint_every=10, var_samples=8, eval_samples=5, device="cpu",
)  # fmt: skip


def test_vae_run_trains_alpha_and_beta_and_resumes_to_the_uninterrupted_trace(tmp_path):
    (full,) = run_vae(replace(VAE_RUN, out=str(tmp_path / "full")))
    trace = read_trace(full.path)
    assert trace["alpha"].iloc[0] == 0.0 and trace["alpha"].iloc[-1] != 0.0 and trace["beta"].iloc[-1] != 0.0
    assert list(trace.dropna(subset=["grad_var_resample"])["step"]) == [0, 10, 20, 30]
    with pytest.raises(KeyboardInterrupt):
        run_vae(replace(VAE_RUN, out=str(tmp_path / "cut")), progress=InterruptAt(25))
    (cut_dir,) = (tmp_path / "cut").iterdir()
    assert load_checkpoint(cut_dir / CHECKPOINT, torch.device("cpu"))["step"] == 20
    assert resume_vae(cut_dir).status == "finished"
    pd.testing.assert_frame_equal(
        trace.drop(columns=TIMING_COLUMNS), read_trace(cut_dir).drop(columns=TIMING_COLUMNS)
    )
