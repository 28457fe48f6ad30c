"""Structured prediction (Concrete paper §5.2): architecture names, the objective and its relaxation
against explicit formulas, the test NLL as a bound, training by every kind of estimator, and
unbiased gradients against exact enumeration.

The exact checks use a tiny linear model in float64: 8 pixels (4 in, 4 out) and two stochastic
layers of 3 and 2 bits, ``4V-3H-2H-4V``, so every expectation over the 32 chains ``(h_1, h_2)`` is a
finite sum and its gradient follows by autograd through the chains' probabilities. Statistical
checks: under the null hypothesis each ``(mean − exact) / s.e.`` is approximately standard normal
(Student's t where the s.e. comes from a few tens of group means); each test holds a family-wise
level of 1e-3, Bonferroni over its comparisons.
"""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import norm, t
from torch import Tensor, nn

from dcvbench.estimators import build_estimator, default_settings, get_estimator
from dcvbench.latent import BINARY
from dcvbench.measure.vae_variance import resample_encoder_variance
from dcvbench.measure.variance import Tileable
from dcvbench.objectives import (
    HasBound,
    HasContext,
    HasImportanceWeight,
    HasInputGrad,
    HasRelaxation,
    ProblemShape,
)
from dcvbench.problems.predict import ARCHITECTURES, Predictor, parse_arch, test_nll
from dcvbench.problems.vae import Layout
from dcvbench.training import train_step

F64 = torch.float64
FAMILY_ALPHA = 1e-3
TINY_ARCH, TINY_PIXELS = "4V-3H-2H-4V", 8
TINY_X = torch.tensor(
    [[1, 0, 1, 1, 0, 0, 1, 0], [0, 0, 0, 1, 1, 1, 0, 1], [1, 1, 0, 1, 0, 1, 1, 1]], dtype=F64
)  # [B, P]: the first 4 pixels are x_u, the last 4 x_l
# What each estimator trains, as the structured-prediction runs would (concrete: both bounds).
TRAINING_CASES = [
    ("rloo", "elbo"),
    ("rloo-dcv", "elbo"),
    ("disarm", "elbo"),
    ("nvil", "elbo"),
    ("concrete", "elbo"),
    ("concrete", "iwae"),
    ("vimco", "iwae"),
]


def z_threshold(tests: int) -> float:
    """Two-sided standard-normal threshold for ``tests`` comparisons at the family-wise level."""
    return float(norm.isf(FAMILY_ALPHA / (2 * tests)))


def tiny_model(seed: int = 3) -> Predictor:
    """``4V-3H-2H-4V`` in float64 with weights large enough that the chains' likelihoods differ a
    lot, and random biases (no unit starts at the symmetric logit 0)."""
    model = Predictor(TINY_ARCH, pixels=TINY_PIXELS, generator=torch.Generator().manual_seed(seed), dtype=F64)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for layer in (model.encoder[0], model.upper_encoders[0][0], model.decoder[0]):
            layer.weight.mul_(3.0)
            layer.bias.normal_(generator=generator)
    return model


def chains(model: Predictor, x: Tensor) -> tuple[Tensor, Tensor]:
    """``log p(h_1, h_2 | x_u)`` and ``log p(x_l | h_2)`` of every chain of the tiny model, ``[32, B]``
    each, with the model's graph (its parameters' gradients follow by autograd)."""
    rows = x.shape[0]
    first = BINARY.enumerate((3,), F64)  # [8, 3]
    second = BINARY.enumerate((2,), F64)  # [4, 2]
    log_first = BINARY.log_prob(first.unsqueeze(1), model.encode(x))  # [8, B]
    log_second = BINARY.log_prob(second.unsqueeze(1), model.layer_logits(2, first))  # [4, 8]
    log_likelihood = model.log_likelihood(x, second.unsqueeze(1).expand(-1, rows, -1))  # [4, B]
    log_p = log_first.unsqueeze(1) + log_second.T.unsqueeze(-1)  # [8, 4, B]
    return log_p.reshape(32, rows), log_likelihood.expand(8, -1, -1).reshape(32, rows)


def linear_maps(model: Predictor) -> list[tuple[Tensor, Tensor]]:
    """``(W, c)`` of the tiny linear model's three maps, input to output."""
    layers = (model.encoder[0], model.upper_encoders[0][0], model.decoder[0])
    return [(layer.weight.detach(), layer.bias.detach()) for layer in layers]


def bernoulli_log_likelihood(x_lower: Tensor, logits: Tensor) -> Tensor:
    """``Σ_p x_p log σ(l_p) + (1 − x_p) log σ(−l_p)``, the textbook form."""
    return (x_lower * F.logsigmoid(logits) + (1 - x_lower) * F.logsigmoid(-logits)).sum(-1)


def binary_images(rows: int, pixels: int = 784, seed: int = 1) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(rows, pixels, generator=generator, dtype=F64) < 0.3).to(F64)  # [B, P]


def flat_grads(model: Predictor) -> Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


# -- architectures and the model ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "pixels", "widths", "nonlinear"),
    [
        ("392V-240H-392V", 784, (240,), False),
        ("392V-240H-240H-392V", 784, (240, 240), False),
        ("392V~240H~392V", 784, (240,), True),
        ("392V~240H~240H~392V", 784, (240, 240), True),
        ("4V-3H-2H-4V", 8, (3, 2), False),  # widths from the input on
        ("4V~3H~5V", 9, (3,), True),  # an odd image: the lower half has the extra pixel
    ],
)
def test_architecture_names_give_their_layers(arch, pixels, widths, nonlinear):
    assert parse_arch(arch, pixels) == Layout(widths, nonlinear)


def test_the_listed_architectures_are_the_papers():
    assert {parse_arch(arch) for arch in ARCHITECTURES} == {
        Layout(widths, nonlinear) for widths in ((240,), (240, 240)) for nonlinear in (False, True)
    }


@pytest.mark.parametrize(
    ("arch", "pixels", "problem"),
    [
        ("392V-240H~392V", 784, "mixes '-' and '~'"),
        ("390V-240H-392V", 784, "upper half of 784-pixel images has 392"),
        ("392V-240H-390V", 784, "lower half of 784-pixel images has 392"),
        ("4V-3H-4V", 9, "lower half of 9-pixel images has 5"),
        ("392V-0H-392V", 784, "a layer of no units"),
        ("392V-392V", 784, "unknown architecture"),
        ("240H-392V", 784, "unknown architecture"),
        ("nonlinear", 784, "unknown architecture"),
        ("392V_240H_392V", 784, "unknown architecture"),
    ],
)
def test_bad_architecture_names_say_what_is_wrong(arch, pixels, problem):
    with pytest.raises(ValueError, match=problem):
        parse_arch(arch, pixels)
    with pytest.raises(ValueError, match=problem):
        Predictor(arch, pixels=pixels)


def test_the_networks_between_the_layers():
    model = Predictor("392V~240H~240H~392V", generator=torch.Generator().manual_seed(0))
    shapes = [
        [tuple(layer.weight.shape[::-1]) for layer in network if isinstance(layer, nn.Linear)]
        for network in (model.encoder, model.upper_encoders[0], model.decoder)
    ]
    assert shapes == [
        [(392, 200), (200, 200), (200, 240)],  # x_u → η_1
        [(240, 200), (200, 200), (200, 240)],  # h_1 → η_2
        [(240, 200), (200, 200), (200, 392)],  # h_2 → logits of x_l
    ]
    assert (
        sum(isinstance(layer, nn.LeakyReLU) and layer.negative_slope == 0.3 for layer in model.modules()) == 6
    )
    assert all(not layer.bias.any() for layer in model.modules() if isinstance(layer, nn.Linear))
    assert model.depth == 2 and model.family is BINARY and model.pixels == 784
    assert model.problem_shape == model.layer_shape(1) == ProblemShape(240, context=392)
    assert model.layer_shape(2) == ProblemShape(240, context=240)
    groups = model.encoder_parameters() + model.decoder_parameters()
    assert {id(p) for p in groups} == {id(p) for p in model.parameters()} and len(groups) == 18
    assert model.prior_parameters() == [] and model.generative_parameters() == model.decoder_parameters()


def test_the_encoder_reads_the_upper_half_only():
    model = tiny_model()
    x = TINY_X.clone()
    logits = model.encode(x)
    x[:, 4:] = 1 - x[:, 4:]
    torch.testing.assert_close(model.encode(x), logits, rtol=0, atol=0)
    (weight, bias), _, _ = linear_maps(model)
    torch.testing.assert_close(logits, TINY_X[:, :4] @ weight.T + bias, rtol=1e-12, atol=1e-12)


def test_the_objective_speaks_the_estimators_protocols():
    model, generator = tiny_model(), torch.Generator().manual_seed(0)
    logits = model.encode(TINY_X)
    f = model.objective(TINY_X, logits, generator=generator, bound="iwae")
    for protocol in (HasBound, HasImportanceWeight, HasContext, HasRelaxation, HasInputGrad, Tileable):
        assert isinstance(f, protocol), protocol
    assert f.bound == "iwae" and f.proposal_in_weight is False
    torch.testing.assert_close(f.context, TINY_X[:, :4], rtol=0, atol=0)
    assert {id(p) for p in f.downstream_parameters()} == {id(p) for p in model.upper_encoders.parameters()}
    upstream = model.sample_posterior(logits, 1, generator)[0]  # [B, 3]
    upper = model.objective(TINY_X, model.layer_logits(2, upstream), upstream=(upstream,))
    assert upper.context is upper.upstream[-1] and upper.downstream_parameters() == []
    tiled = f.tile(2)
    assert tiled.x.shape == (6, 8) and tiled.logits.shape == (6, 3) and tiled.bound == "iwae"
    for bad in (
        lambda: model.objective(TINY_X, logits),  # layer 1 of 2 must sample layer 2
        lambda: model.objective(TINY_X, logits, generator=generator, bound="m=5"),
        lambda: model.objective(TINY_X[:, :4], logits, generator=generator),  # the whole image is x
        lambda: model.objective(TINY_X, logits[:, :2], generator=generator),
        lambda: model.objective(TINY_X, logits, generator=generator, upstream=(upstream, upstream)),
    ):
        with pytest.raises(ValueError):
            bad()


# -- the objective and its relaxation against their definitions ------------------------------------


def test_the_objective_is_the_likelihood_of_the_completed_chain():
    model = tiny_model()
    (w1, c1), (w2, c2), (w3, c3) = linear_maps(model)
    x_upper, x_lower = TINY_X[:, :4], TINY_X[:, 4:]
    h1 = model.sample_posterior(model.encode(TINY_X), 5, torch.Generator().manual_seed(1))  # [K, B, 3]
    # Layer 1: the objective draws h_2 = 1[u < σ(η_2(h_1))] with u from its generator.
    f = model.objective(TINY_X, x_upper @ w1.T + c1, generator=torch.Generator().manual_seed(2))
    u = torch.rand(5, 3, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    h2 = (u < torch.sigmoid(h1 @ w2.T + c2)).to(F64)  # [K, B, 2]
    expected = -bernoulli_log_likelihood(x_lower, h2 @ w3.T + c3)  # [K, B]
    torch.testing.assert_close(f(h1), expected, rtol=1e-12, atol=1e-12)
    # Layer 2, h_1 fixed: a function of h_2 alone, no randomness left.
    upper = model.objective(TINY_X, model.layer_logits(2, h1[0]), upstream=(h1[0],))
    torch.testing.assert_close(upper(h2), expected, rtol=1e-12, atol=1e-12)


def test_the_relaxed_objective_relaxes_every_layer_and_has_no_density_terms():
    model, temperature = tiny_model(), 0.6
    (w1, c1), (w2, c2), (w3, c3) = linear_maps(model)
    x_upper, x_lower = TINY_X[:, :4], TINY_X[:, 4:]
    eta1 = x_upper @ w1.T + c1  # [B, 3]
    u1 = torch.rand(5, 3, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    u2 = torch.rand(5, 3, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    y1 = (eta1 + torch.log(u1) - torch.log1p(-u1)) / temperature  # [K, B, 3]
    z1 = torch.sigmoid(y1)
    z2 = torch.sigmoid((z1 @ w2.T + c2 + torch.log(u2) - torch.log1p(-u2)) / temperature)  # [K, B, 2]
    expected = -bernoulli_log_likelihood(x_lower, z2 @ w3.T + c3)  # [K, B]
    f = model.objective(TINY_X, eta1, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(f.relaxed(y1, eta1, temperature), expected, rtol=1e-12, atol=1e-12)
    # Layer 2 (h_1 fixed) relaxes itself alone.
    h1 = (u1[0] < torch.sigmoid(eta1)).to(F64)  # [B, 3]
    eta2 = h1 @ w2.T + c2
    y2 = (eta2 + torch.log(u2) - torch.log1p(-u2)) / temperature  # [K, B, 2]
    expected = -bernoulli_log_likelihood(x_lower, torch.sigmoid(y2) @ w3.T + c3)
    upper = model.objective(TINY_X, eta2, upstream=(h1,))
    torch.testing.assert_close(upper.relaxed(y2, eta2, temperature), expected, rtol=1e-12, atol=1e-12)


@torch.no_grad()
def test_the_objectives_mean_is_the_exact_expectation_over_chains():
    model, draws = tiny_model(), 20_000
    log_p, log_likelihood = chains(model, TINY_X)
    exact = -(log_p.exp() * log_likelihood).sum(0)  # E_h[−log p(x_l | h)]: [B]
    logits = model.encode(TINY_X)
    h1 = model.sample_posterior(logits, draws, torch.Generator().manual_seed(1))  # [N, B, 3]
    values = model.objective(TINY_X, logits, generator=torch.Generator().manual_seed(2))(h1)  # [N, B]
    z = (values.mean(0) - exact) / (values.std(0) / math.sqrt(draws))
    assert (z.abs() <= z_threshold(len(z))).all(), z


def test_value_and_input_grad_is_one_pass_of_autograd():
    model = tiny_model()
    logits = model.encode(TINY_X)
    h1 = model.sample_posterior(logits, 4, torch.Generator().manual_seed(1))  # [K, B, 3]
    # Below the last layer f holds the sampled layers below fixed and so does not depend on h_1.
    f = model.objective(TINY_X, logits, generator=torch.Generator().manual_seed(2))
    evaluation = f.value_and_input_grad(h1)
    again = model.objective(TINY_X, logits, generator=torch.Generator().manual_seed(2))(h1)
    torch.testing.assert_close(evaluation.values, again.detach(), rtol=0, atol=0)
    assert not evaluation.input_grad.any() and evaluation.input_grad.shape == h1.shape
    expected = torch.autograd.grad(again.mean(), model.decoder_parameters())
    for got, want in zip(evaluation.param_grads, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # The last layer: ∇_{h_2} f = −∇ log p(x_l | h_2), at real points too.
    h2 = torch.rand(4, 3, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    upper = model.objective(TINY_X, model.layer_logits(2, h1[0]), upstream=(h1[0],), generative_grads=False)
    evaluation = upper.value_and_input_grad(h2)
    point = h2.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(-model.log_likelihood(TINY_X, point).sum(), point)
    torch.testing.assert_close(evaluation.input_grad, expected, rtol=1e-12, atol=1e-12)
    assert evaluation.param_grads is None


# -- the test NLL -----------------------------------------------------------------------------------


@torch.no_grad()
def test_the_test_nll_is_an_upper_bound_that_tightens_with_samples():
    model, rows = tiny_model(), TINY_X.shape[0]
    log_p, log_likelihood = chains(model, TINY_X)
    log_marginal = torch.logsumexp(log_p + log_likelihood, 0)  # log p(x_l | x_u): [B]
    exact = -log_marginal
    mean_objective = -(log_p.exp() * log_likelihood).sum(0)  # E_h[−log p(x_l | h)]: [B]
    # χ² = Var(w)/p² of w = p(x_l | h): the delta method's E[−log mean of S weights] ≈ −log p + χ²/(2S).
    chi2 = (torch.logsumexp(log_p + 2 * log_likelihood, 0) - 2 * log_marginal).exp() - 1

    def repeated(samples: int, repeats: int) -> tuple[Tensor, Tensor]:
        """Mean and s.e. over ``repeats`` independent test NLLs with ``samples`` samples, ``[B]`` each."""
        tiled = TINY_X.repeat(repeats, 1)  # row r belongs to row r mod B
        values = test_nll(model, tiled, torch.Generator().manual_seed(samples), samples=samples)
        values = values.reshape(repeats, rows)
        return values.mean(0), values.std(0) / math.sqrt(repeats)

    series = [repeated(samples, 4_000) for samples in (1, 10, 100)]
    large, large_error = repeated(1_000, 500)
    z = z_threshold(rows * 8)
    for mean, error in [*series, (large, large_error)]:
        assert (mean - exact >= -z * error).all()  # a bound, in expectation
    for (mean, error), (next_mean, next_error) in itertools.pairwise(series):
        assert (mean - next_mean > z * (error**2 + next_error**2).sqrt()).all()  # tightens
    mean, error = series[0]
    assert ((mean - mean_objective).abs() <= z * error).all()  # S = 1: the mean objective
    assert ((large - (exact + chi2 / 2_000)).abs() <= z * large_error).all()  # its limit, at its rate


# -- training ---------------------------------------------------------------------------------------


def estimators_for(model: Predictor, name: str):
    """The first layer's estimator and, unless it trains the whole chain, one per layer above."""
    settings = default_settings("vae")
    estimator = build_estimator(name, settings, model.layer_shape(1))
    layers = range(2, model.depth + 1) if not estimator.info.trains_chain else ()
    return estimator, [build_estimator(name, settings, model.layer_shape(layer)) for layer in layers]


@pytest.mark.parametrize("arch", ["392V-12H-392V", "392V-12H-8H-392V", "392V~12H~392V", "392V~12H~8H~392V"])
@pytest.mark.parametrize(("name", "bound"), TRAINING_CASES)
def test_every_estimator_reaches_every_parameter(arch, name, bound):
    model = Predictor(arch, hidden=10, generator=torch.Generator().manual_seed(0), dtype=F64)
    before = copy.deepcopy(model)
    estimator, upper = estimators_for(model, name)
    encoder = torch.optim.Adam(model.encoder_parameters(), lr=1e-2)
    decoder = torch.optim.Adam(model.decoder_parameters(), lr=1e-2)
    x, generator = binary_images(4), torch.Generator().manual_seed(2)
    for _ in range(2):
        out = train_step(
            model, estimator, x, 2, generator, encoder, decoder, bound=bound, upper_estimators=upper
        )
        assert torch.isfinite(out.train_elbo) and out.estimate.grad.shape == (4, 12)
        assert len(out.upper_estimates) == len(upper)
        for param in model.parameters():
            assert param.grad is not None and torch.isfinite(param.grad).all() and param.grad.any()
    assert all(not torch.equal(p, q) for p, q in zip(model.parameters(), before.parameters(), strict=True))


@pytest.mark.parametrize("arch", ["392V~16H~392V", "392V-16H-16H-392V"])
@pytest.mark.parametrize(("name", "bound"), TRAINING_CASES)
def test_training_predicts_the_lower_half_from_the_upper(arch, name, bound):
    # The target: below the best prediction that ignores x_u (each lower pixel at its frequency in
    # the batch), which the output network's biases reach alone; going below it needs information
    # from x_u carried through every stochastic layer.
    model = Predictor(arch, hidden=16, generator=torch.Generator().manual_seed(0), dtype=F64)
    estimator, upper = estimators_for(model, name)
    encoder = torch.optim.Adam(model.encoder_parameters(), lr=1e-2)
    decoder = torch.optim.Adam(model.decoder_parameters(), lr=1e-2)
    x, generator = binary_images(4), torch.Generator().manual_seed(2)
    frequency = x[:, 392:].mean(0)
    ignoring_input = -(torch.xlogy(frequency, frequency) + torch.xlogy(1 - frequency, 1 - frequency)).sum()
    for _ in range(200):
        train_step(model, estimator, x, 2, generator, encoder, decoder, bound=bound, upper_estimators=upper)
    nll = test_nll(model, x, torch.Generator().manual_seed(9), samples=100).mean()
    assert nll < ignoring_input, (float(nll), float(ignoring_input))


@pytest.mark.parametrize("arch", ["392V~12H~392V", "392V~12H~8H~392V"])
def test_the_encoder_gradient_variance_of_the_first_layer(arch):
    model = Predictor(arch, hidden=10, generator=torch.Generator().manual_seed(0), dtype=F64)
    result = resample_encoder_variance(
        model, get_estimator("rloo"), binary_images(3), 2, 8, torch.Generator().manual_seed(1)
    )
    size = sum(p.numel() for p in model.encoder.parameters())
    assert result.param_moments.mean.shape == (size,) and result.draws == 8
    assert math.isfinite(result.param_variance) and result.param_variance > 0


# -- unbiased gradients, by enumeration ---------------------------------------------------------------


def exact_gradient(model: Predictor, k: int | None) -> Tensor:
    """The gradient of the batch mean of ``E_h[−log p(x_l | h)]`` (``k=None``) or of ``−L_k`` (the
    K-sample bound, summing over all ``32^k`` tuples of chains), every parameter, flattened."""
    log_p, log_likelihood = chains(model, TINY_X)  # [32, B]
    if k is None:
        loss = -(log_p.exp() * log_likelihood).sum(0).mean()
    else:
        tuples = torch.tensor(list(itertools.product(range(32), repeat=k)))  # [T, K]
        bound = torch.logsumexp(log_likelihood[tuples], 1) - math.log(k)  # [T, B]
        loss = -(log_p[tuples].sum(1).exp() * bound).sum(0).mean()
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))])


@pytest.mark.parametrize(
    ("name", "bound", "k", "multi_sample"), [("rloo", "elbo", 3, None), ("vimco", "iwae", 2, 2)]
)
def test_training_gradients_are_unbiased(name, bound, k, multi_sample):
    # rloo: layer by layer (layer 2 by an upper estimator, the decoder on layer 1's samples); vimco:
    # the whole chain from one estimate (layer 2 through the objective's score terms). Each step sees
    # COPIES tiled copies of the batch, so its gradient is the mean of COPIES independent estimates;
    # GROUPS steps give the mean and its s.e. (optimisers of learning rate 0 leave the model as it is).
    groups, copies = 40, 4_000
    model = tiny_model()
    exact = exact_gradient(model, multi_sample)
    estimator, upper = estimators_for(model, name)
    encoder = torch.optim.SGD(model.encoder_parameters(), lr=0.0)
    decoder = torch.optim.SGD(model.decoder_parameters(), lr=0.0)
    x, generator = TINY_X.repeat(copies, 1), torch.Generator().manual_seed(5)
    grads = []
    for _ in range(groups):
        train_step(model, estimator, x, k, generator, encoder, decoder, bound=bound, upper_estimators=upper)
        grads.append(flat_grads(model))
    grads = torch.stack(grads)  # [G, parameters]
    error = grads.std(0) / math.sqrt(groups)
    threshold = t.isf(FAMILY_ALPHA / (2 * exact.numel()), groups - 1)
    assert ((grads.mean(0) - exact).abs() <= threshold * error).all()
    assert error.max() < 0.01 * exact.abs().max()  # precise enough to see a wrong term
