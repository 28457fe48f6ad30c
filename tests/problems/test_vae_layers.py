"""A VAE with several stochastic layers: its architecture names, its objective per layer, its bounds.

The Concrete paper's names (``200H-784V``, ``200H~200H~784V``; Maddison, Mnih & Teh 2017, §5.1) and
the one-layer models they extend (DESIGN §4.4). The objective of each layer and the bounds are checked
on a two-layer model small enough to enumerate in float64 — ``2H-3H-4V``: 3 bits ``b_1``, 2 bits
``b_2``, 4 pixels, every parameter N(0, 1) — against ``log w`` written out from the model's maps::

    log w = log p(x|b_1) + log p(b_1|b_2) + log p(b_2) − log q(b_1|x) − log q(b_2|b_1)

Statistical checks are z-tests whose standard errors are computed exactly by enumeration, with a
Bonferroni threshold over the rows and configurations of each test (family-wise level 1e-3). The
training step on such a model is tested in ``tests/test_training_layers.py``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import norm
from torch import Tensor

from dcvbench.latent import BINARY
from dcvbench.latent.noise import logistic_from_uniform, uniform_noise
from dcvbench.objectives import ProblemShape
from dcvbench.problems.vae import PRIOR_TEMPERATURE, VAE, Layout, iwae_bound, parse_arch

F64 = torch.float64
PIXELS, BITS_1, BITS_2 = 4, 3, 2
ARCH = f"{BITS_2}H-{BITS_1}H-{PIXELS}V"  # top layer first
FAMILY_ALPHA = 1e-3


def z_critical(tests: int) -> float:
    """Bonferroni threshold of ``tests`` two-sided z-tests at family-wise level ``FAMILY_ALPHA``."""
    return float(norm.isf(FAMILY_ALPHA / (2 * tests)))


# -- architecture names ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "pixels", "layout"),
    [
        ("200H-784V", 784, Layout((200,), False)),
        ("200H-200H-784V", 784, Layout((200, 200), False)),
        ("200H~784V", 784, Layout((200,), True)),
        ("200H~200H~784V", 784, Layout((200, 200), True)),
        ("2H-3H-4V", 4, Layout((3, 2), False)),  # read top first: b_1 (next to the pixels) has 3 bits
        ("5H~2H~7H~9V", 9, Layout((7, 2, 5), True)),
    ],
)
def test_paper_names_give_their_layouts(arch: str, pixels: int, layout: Layout):
    assert parse_arch(arch, latent=layout.widths[0], pixels=pixels) == layout
    assert layout.depth == len(layout.widths)


@pytest.mark.parametrize(("alias", "name"), [("linear", "200H-784V"), ("nonlinear", "200H~784V")])
def test_one_layer_names_are_the_one_layer_models(alias: str, name: str):
    assert parse_arch(alias, latent=200) == parse_arch(name, latent=200)
    models = [
        VAE(latent=200, arch=arch, generator=torch.Generator().manual_seed(4)) for arch in (alias, name)
    ]
    states = [model.state_dict() for model in models]
    assert list(states[0]) == list(states[1])
    # What a one-layer checkpoint has always held: nothing for the empty upper layers.
    assert all(key.startswith(("encoder.", "decoder.")) or key == "prior_logits" for key in states[0])
    assert "prior_logits" in states[0]
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key
    assert all(model.depth == 1 and model.problem_shape == ProblemShape(200, context=784) for model in models)


def test_a_two_layer_model_has_the_maps_its_name_gives():
    model = VAE(latent=BITS_1, arch=ARCH, pixels=PIXELS, dtype=F64)
    shapes = {name: tuple(param.shape) for name, param in model.named_parameters()}
    assert shapes == {
        "encoder.0.weight": (BITS_1, PIXELS),  # x → η_1
        "encoder.0.bias": (BITS_1,),
        "decoder.0.weight": (PIXELS, BITS_1),  # b_1 → pixel logits
        "decoder.0.bias": (PIXELS,),
        "upper_encoders.0.0.weight": (BITS_2, BITS_1),  # b_1 → η_2
        "upper_encoders.0.0.bias": (BITS_2,),
        "upper_decoders.0.0.weight": (BITS_1, BITS_2),  # b_2 → logits of p(b_1|b_2)
        "upper_decoders.0.0.bias": (BITS_1,),
    }
    assert model.prior_logits.shape == (BITS_2,)
    assert model.depth == 2
    assert model.layer_shape(1) == ProblemShape(BITS_1, context=PIXELS)
    assert model.layer_shape(2) == ProblemShape(BITS_2, context=BITS_1)
    deep = VAE(latent=BITS_1, arch=ARCH.replace("-", "~"), pixels=PIXELS, hidden=5, dtype=F64)
    widths = [
        (m.in_features, m.out_features) for m in deep.upper_encoders[0] if isinstance(m, torch.nn.Linear)
    ]
    assert widths == [(BITS_1, 5), (5, 5), (5, BITS_2)]  # the nonlinear block between the layers too


@pytest.mark.parametrize(
    "arch",
    [
        "200H-784",  # no V
        "784V",  # no stochastic layer
        "200H-200H~784V",  # two kinds of separator
        "200X-784V",
        "0H-784V",  # a layer of no units
        "200H-0H-784V",
        "200H-783V",  # not the images' pixels
        "-200H-784V",
        "200h-784v",
        "",
    ],
)
def test_bad_names_are_refused(arch: str):
    with pytest.raises(ValueError):
        parse_arch(arch, latent=200)
    with pytest.raises(ValueError):
        VAE(latent=200, arch=arch)


def test_the_first_width_must_be_the_latents():
    with pytest.raises(ValueError, match="units next to the pixels"):
        VAE(latent=100, arch="200H-784V")


def test_categorical_latents_have_one_layer():
    assert VAE(latent=BITS_1, classes=4, arch=f"{BITS_1}H-{PIXELS}V", pixels=PIXELS).depth == 1
    with pytest.raises(ValueError, match="binary latents only"):
        VAE(latent=BITS_1, classes=4, arch=ARCH, pixels=PIXELS)


# -- the two-layer model, by enumeration ----------------------------------------------------------


def tiny_model() -> VAE:
    """``2H-3H-4V`` in float64 with a learned prior; every parameter N(0, 1) from a fixed seed."""
    model = VAE(latent=BITS_1, arch=ARCH, pixels=PIXELS, learn_prior=True, dtype=F64)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(generator=generator)
    return model


def images() -> Tensor:
    return torch.tensor([[0, 1, 0, 0], [1, 0, 1, 1], [1, 1, 1, 1]], dtype=F64)  # [B, P]


def bernoulli_log_prob(b: Tensor, logits: Tensor) -> Tensor:
    """``Σ_d b_d log σ(l_d) + (1 − b_d) log σ(−l_d)``, over the last dimension (real ``b`` too)."""
    return (b * F.logsigmoid(logits) + (1.0 - b) * F.logsigmoid(-logits)).sum(-1)


def log_weight(model: VAE, x: Tensor, b1: Tensor, b2: Tensor) -> Tensor:
    """``log w(b_1, b_2)`` from the model's maps: ``b1 [..., B, D1]``, ``b2 [..., B, D2]`` → ``[..., B]``."""
    log_p = (
        bernoulli_log_prob(x, model.decoder(b1))
        + bernoulli_log_prob(b1, model.upper_decoders[0](b2))
        + bernoulli_log_prob(b2, model.prior_logits)
    )
    log_q = bernoulli_log_prob(b1, model.encode(x)) + bernoulli_log_prob(b2, model.upper_encoders[0](b1))
    return log_p - log_q


def replay(generator: torch.Generator) -> torch.Generator:
    """A generator in ``generator``'s state: it will draw the same numbers next."""
    copy = torch.Generator()
    copy.set_state(generator.get_state())
    return copy


FIRST = BINARY.enumerate((BITS_1,), F64)  # every b_1: [8, D1]
SECOND = BINARY.enumerate((BITS_2,), F64)  # every b_2: [4, D2]


@torch.no_grad()
def conditional_moments(model: VAE, x: Tensor) -> tuple[Tensor, Tensor]:
    """``E[−log w | b_1]`` and ``Var[log w | b_1]`` over ``b_2 ~ q(·|b_1)``, for every ``b_1`` and row:
    ``[8, B]`` each."""
    rows = x.shape[0]
    b1 = FIRST[:, None, None, :].expand(-1, len(SECOND), rows, -1)  # [8, 4, B, D1]
    b2 = SECOND[None, :, None, :].expand(len(FIRST), -1, rows, -1)  # [8, 4, B, D2]
    log_w = log_weight(model, x, b1, b2)  # [8, 4, B]
    q = bernoulli_log_prob(b2, model.upper_encoders[0](b1)).exp()  # q(b_2|b_1): [8, 4, B]
    mean = (q * log_w).sum(1)
    return -mean, (q * (log_w - mean.unsqueeze(1)) ** 2).sum(1)


@torch.no_grad()
def test_first_layer_objective_averages_to_the_conditional_expectation():
    model, x = tiny_model(), images()
    draws = 20_000
    f = model.objective(x, model.encode(x), generator=torch.Generator().manual_seed(0))
    b1 = FIRST[:, None, :].expand(draws, -1, x.shape[0], -1)  # [S, 8, B, D1]: each b_1, every row
    mean = f(b1).mean(0)  # [8, B]: the objective's own b_2 draws, S per b_1
    expected, variance = conditional_moments(model, x)
    assert (variance > 1e-2).all()  # f really is random given b_1
    z = (mean - expected).abs() / (variance / draws).sqrt()
    assert float(z.max()) < z_critical(z.numel()), z


def test_first_layer_objective_is_minus_log_w_of_the_chain_it_samples():
    model, x = tiny_model(), images()
    logits = model.encode(x)
    generator = torch.Generator().manual_seed(1)
    f = model.objective(x, logits, generator=generator)
    noise = uniform_noise((5, *logits.shape), logits, torch.Generator().manual_seed(2))
    for b1 in (BINARY.sample(logits.detach(), noise), noise):  # hard samples, and real ones
        again = replay(generator)
        values = f(b1)  # [K, B]
        eta = model.upper_encoders[0](b1)  # [K, B, D2]
        b2 = BINARY.sample(eta, uniform_noise(eta.shape, eta, again))  # the objective's draw
        torch.testing.assert_close(values, -log_weight(model, x, b1, b2), rtol=1e-12, atol=1e-12)
        # Its graph reaches the second layer's encoder (through log q(b_2|b_1)), never the first's.
        grads = torch.autograd.grad(values.sum(), model.encoder_parameters(), allow_unused=True)
        split = len(list(model.encoder.parameters()))
        assert all(grad is None for grad in grads[:split])
        upper = list(model.upper_encoders.parameters())
        expected = torch.autograd.grad(bernoulli_log_prob(b2, eta).sum(), upper)
        for got, want in zip(grads[split:], expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert f.context is x
    assert f.downstream_parameters() == list(model.upper_encoders.parameters())


def test_second_layer_objective_is_minus_log_w_of_the_fixed_first_layer():
    model, x = tiny_model(), images()
    noise = uniform_noise((x.shape[0], BITS_1), x, torch.Generator().manual_seed(3))
    b1 = BINARY.sample(model.encode(x).detach(), noise)  # [B, D1]
    eta = model.layer_logits(2, b1)  # [B, D2]
    f = model.objective(x, eta, generator=torch.Generator().manual_seed(4), upstream=(b1,))
    b2 = SECOND[:, None, :].expand(-1, x.shape[0], -1)  # every b_2 for every row: [4, B, D2]
    values = f(b2)
    expected = -log_weight(model, x, b1.expand(len(SECOND), -1, -1), b2)
    torch.testing.assert_close(values, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(f(b2), values, rtol=0, atol=0)  # nothing below it to sample
    assert f.layer == 2 and torch.equal(f.context, b1) and f.downstream_parameters() == []


@torch.no_grad()
def exact_bounds(model: VAE, x: Tensor) -> dict[str, Tensor]:
    """log p(x), the ELBO, Var_q[log w] and χ² = Var_q[w / p(x)], per row, over the 32 chains."""
    rows = x.shape[0]
    b1 = FIRST[:, None, None, :].expand(-1, len(SECOND), rows, -1).reshape(-1, rows, BITS_1)  # [32, B, D1]
    b2 = SECOND[None, :, None, :].expand(len(FIRST), -1, rows, -1).reshape(-1, rows, BITS_2)  # [32, B, D2]
    log_w = log_weight(model, x, b1, b2)  # [32, B]
    log_q = bernoulli_log_prob(b1, model.encode(x)) + bernoulli_log_prob(b2, model.upper_encoders[0](b1))
    q = log_q.exp()
    log_px = torch.logsumexp(log_q + log_w, 0)  # [B]
    elbo = (q * log_w).sum(0)
    return {
        "log_px": log_px,
        "elbo": elbo,
        "log_w_var": (q * (log_w - elbo) ** 2).sum(0),
        "chi2": (q * (log_w - log_px).exp() ** 2).sum(0) - 1.0,
    }


@torch.no_grad()
def test_iwae_bound_with_one_sample_is_the_elbo_in_expectation():
    model, x = tiny_model(), images()
    exact = exact_bounds(model, x)
    repeats = 20_000
    per_row = iwae_bound(model, x.repeat(repeats, 1), torch.Generator().manual_seed(5), samples=1)
    mean = per_row.reshape(repeats, -1).mean(0)  # [B]
    z = (mean - exact["elbo"]).abs() / (exact["log_w_var"] / repeats).sqrt()
    assert float(z.max()) < z_critical(x.shape[0]), z


@torch.no_grad()
def test_iwae_bound_approaches_log_likelihood_from_below():
    model, x = tiny_model(), images()
    exact = exact_bounds(model, x)
    samples, repeats = 10_000, 100
    per_draw = iwae_bound(model, x.repeat(repeats, 1), torch.Generator().manual_seed(6), samples=samples)
    per_draw = per_draw.reshape(repeats, -1)  # [repeats, B]
    mean, standard_error = per_draw.mean(0), per_draw.std(0) / math.sqrt(repeats)
    threshold = z_critical(2 * x.shape[0])
    # log of a mean of S weights: biased low by about χ²/(2S) (delta method); χ²/S allows twice that.
    tolerance = threshold * standard_error + exact["chi2"] / samples  # [B]
    assert (mean <= exact["log_px"] + threshold * standard_error).all()
    assert (exact["log_px"] - mean <= tolerance).all()
    # Far closer than the ELBO: the gap log p(x) − ELBO (the KL) is many times that tolerance.
    assert (exact["log_px"] - exact["elbo"] > 10 * tolerance).all()


def hand_relaxed_chain(model: VAE, x: Tensor, y1: Tensor, u2: Tensor, temperature: float) -> Tensor:
    """The negative relaxed ELBO of both layers: ``y_1 [K, B, D1]`` in logit space, ``u2`` the
    uniforms of ``y_2 = (η_2(σ(y_1)) + L_2)/λ``; Binary Concrete densities at ``λ`` for ``q`` and at the
    prior's temperature for ``p(b_1|b_2)`` and ``p(b_2)``. ``[K, B]``."""
    density = BINARY.relaxed_log_prob
    eta_2 = model.upper_encoders[0](torch.sigmoid(y1))  # [K, B, D2]
    y2 = (eta_2 + logistic_from_uniform(u2)) / temperature
    log_p = (
        bernoulli_log_prob(x, model.decoder(torch.sigmoid(y1)))
        + density(y1, model.upper_decoders[0](torch.sigmoid(y2)), PRIOR_TEMPERATURE)
        + density(y2, model.prior_logits, PRIOR_TEMPERATURE)
    )
    log_q = density(y1, model.encode(x), temperature) + density(y2, eta_2, temperature)
    return log_q - log_p


def test_relaxed_first_layer_is_the_relaxed_chain():
    model, x, temperature = tiny_model(), images(), 0.6
    logits = model.encode(x)  # with its graph: the relaxed objective depends on η directly too
    generator = torch.Generator().manual_seed(8)
    f = model.objective(x, logits, generator=generator)
    u1 = uniform_noise((4, *logits.shape), logits, torch.Generator().manual_seed(9))
    y1 = (logits + logistic_from_uniform(u1)) / temperature  # [K, B, D1]
    u2 = uniform_noise((4, x.shape[0], BITS_2), x, replay(generator))  # what f.relaxed will draw
    values = f.relaxed(y1, logits, temperature)
    expected = hand_relaxed_chain(model, x, y1, u2, temperature)
    torch.testing.assert_close(values, expected, rtol=1e-12, atol=1e-12)
    # The same function of every parameter: the gradients through both layers agree.
    params = list(model.parameters())
    got_grads = torch.autograd.grad(values.sum(), params, retain_graph=True)  # y_1 is shared
    for got, want in zip(got_grads, torch.autograd.grad(expected.sum(), params), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
