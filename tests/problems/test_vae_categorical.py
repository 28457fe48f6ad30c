"""The VAE with categorical latents: its layers and log-probabilities, the objective, the relaxed
objective (ExpConcrete densities or the analytic KL), and the importance-weighted bound.

What is the same for both latent families (the shared backward pass) is tested in ``test_vae.py``,
the training step in ``tests/test_training.py``.

Small models in float64; tiny latent spaces (N = 2 variables of C = 3 classes: 9 configurations)
allow exact enumeration of log p(x) and of the ELBO.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import Tensor
from torch.distributions import Bernoulli, Categorical, OneHotCategorical, kl_divergence
from torch.distributions.relaxed_categorical import ExpRelaxedCategorical
from torch.testing import assert_close

from dcvbench.estimators import build_estimator, default_settings
from dcvbench.latent import CATEGORICAL
from dcvbench.latent.noise import gumbel_from_uniform, uniform_noise
from dcvbench.problems.vae import CLASSES, VAE, VARIABLES, NegativeELBO, elbo, iwae_bound

F64 = torch.float64
PIXELS = 12


def make_model(seed: int = 0, **options) -> VAE:
    options = {"latent": 4, "classes": 3, "pixels": PIXELS, "hidden": 7, "dtype": F64, **options}
    return VAE(generator=torch.Generator().manual_seed(seed), **options)


def binary_images(rows: int, pixels: int = PIXELS, seed: int = 1) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(rows, pixels, generator=generator, dtype=F64) < 0.3).to(F64)  # [B, P]


def with_random_prior(model: VAE, seed: int = 5) -> VAE:
    with torch.no_grad():
        model.prior_logits.copy_(
            torch.randn(model.prior_logits.shape, generator=torch.Generator().manual_seed(seed))
        )
    return model


def all_configurations(variables: int, classes: int) -> Tensor:
    """Every one-hot configuration, ``[C^N, 1, N, C]``."""
    indices = torch.tensor(list(itertools.product(range(classes), repeat=variables)))  # [C^N, N]
    return torch.nn.functional.one_hot(indices, classes).to(F64).unsqueeze(1)


# -- the model ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "encoder", "decoder"),
    [
        ("linear", [(PIXELS, 12)], [(12, PIXELS)]),
        ("nonlinear", [(PIXELS, 7), (7, 7), (7, 12)], [(12, 7), (7, 7), (7, PIXELS)]),
    ],
)
def test_architectures_have_n_times_c_latent_units(arch, encoder, decoder):
    model = make_model(arch=arch)
    shapes = [(m.in_features, m.out_features) for m in model.encoder if isinstance(m, torch.nn.Linear)]
    assert shapes == encoder
    assert [
        (m.in_features, m.out_features) for m in model.decoder if isinstance(m, torch.nn.Linear)
    ] == decoder
    x = binary_images(5)
    assert model.encode(x).shape == (5, 4, 3)
    assert model.decode(torch.zeros(2, 5, 4, 3, dtype=F64)).shape == (2, 5, PIXELS)
    assert model.problem_shape.latent == 4 and model.problem_shape.classes == 3
    assert model.problem_shape.context == PIXELS and model.problem_shape.latent_type == "categorical"


def test_the_issue_s_default_sizes():
    model = VAE(VARIABLES, CLASSES)
    assert (model.latent, model.classes, model.pixels) == (20, 10, 784)
    assert model.encoder[0].out_features == 200 and model.decoder[1].in_features == 200


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="classes must be ≥ 2, got 1"):
        make_model(classes=1)
    with pytest.raises(ValueError, match="unknown architecture 'deep'"):
        make_model(arch="deep")


def test_log_probabilities_match_torch_distributions():
    model = with_random_prior(make_model())
    x = binary_images(3)
    logits = model.encode(x)  # [B, N, C]
    b = model.sample_posterior(logits, 5, torch.Generator().manual_seed(2))  # [S, B, N, C]
    assert ((b == 0) | (b == 1)).all() and (b.sum(-1) == 1).all()  # one-hot
    assert_close(model.log_posterior(b, logits), OneHotCategorical(logits=logits).log_prob(b).sum(-1))
    assert_close(model.log_prior(b), OneHotCategorical(logits=model.prior_logits).log_prob(b).sum(-1))
    expected = Bernoulli(logits=model.decode(b)).log_prob(x.expand(5, 3, PIXELS)).sum(-1)
    assert_close(model.log_likelihood(x, b), expected)


def test_posterior_samples_follow_the_class_probabilities():
    logits = torch.tensor([[[2.0, 0.0, -1.0]]], dtype=F64)  # [1, 1, 3]
    samples = make_model(latent=1).sample_posterior(logits, 40_000, torch.Generator().manual_seed(3))
    frequencies = samples.mean(0)[0, 0]
    probs = torch.softmax(logits[0, 0], -1)
    error = (probs * (1 - probs) / 40_000).sqrt()
    assert ((frequencies - probs).abs() < 5 * error).all()


def test_fixed_prior_is_a_uniform_buffer_and_learned_prior_a_parameter():
    fixed, learned = make_model(), make_model(learn_prior=True)
    assert "prior_logits" in dict(fixed.named_buffers()) and fixed.prior_parameters() == []
    assert torch.equal(fixed.prior_logits, torch.zeros(4, 3, dtype=F64))
    assert learned.prior_parameters() == [learned.prior_logits] and learned.learn_prior
    assert len(learned.generative_parameters()) == len(learned.decoder_parameters()) + 1


# -- the objective ------------------------------------------------------------------------------


def test_objective_is_the_negative_elbo_and_never_reaches_the_encoder():
    model = with_random_prior(make_model(learn_prior=True))
    x = binary_images(3)
    logits = model.encode(x)
    f = model.objective(x, logits)
    b = model.sample_posterior(logits.detach(), 4, torch.Generator().manual_seed(0))
    values = f(b)  # [K, B]
    expected = -(model.log_joint(x, b) - model.log_posterior(b, logits.detach()))
    assert_close(values, expected)
    params = model.encoder_parameters()
    grads = torch.autograd.grad(values.sum(), params + model.generative_parameters(), allow_unused=True)
    assert all(g is None for g in grads[: len(params)])  # the encoder is trained by g only
    assert all(g is not None for g in grads[len(params) :])
    relaxed = torch.softmax(torch.randn(4, 3, 4, 3, dtype=F64), -1)  # real inputs are fine
    assert torch.isfinite(f(relaxed)).all()


def test_tiled_objective_repeats_the_rows():
    model = make_model()
    x = binary_images(3)
    f = model.objective(x, model.encode(x), prior_temperature=0.3, kl="analytic")
    tiled = f.tile(4)
    b = model.sample_posterior(tiled.logits, 2, torch.Generator().manual_seed(1))  # [K, 12, N, C]
    assert_close(tiled(b), torch.stack([f(b[:, 3 * i : 3 * i + 3]) for i in range(4)], 1).flatten(1))
    assert (tiled.prior_temperature, tiled.kl, tiled.generative_grads) == (0.3, "analytic", True)


def test_bad_objective_arguments_are_named():
    model = make_model()
    x = binary_images(2)
    with pytest.raises(ValueError, match=r"logits \[B, 4, 3\]"):
        NegativeELBO(model, x, torch.zeros(2, 12, dtype=F64))
    with pytest.raises(ValueError, match="unknown kl 'exact'"):
        model.objective(x, model.encode(x), kl="exact")
    with pytest.raises(ValueError, match="prior_temperature must be > 0"):
        model.objective(x, model.encode(x), prior_temperature=0.0)


# -- the relaxed objective ----------------------------------------------------------------------


def _relaxed_sample(logits: Tensor, temperature: float, samples: int = 3, seed: int = 6) -> Tensor:
    noise = uniform_noise((samples, *logits.shape), logits, torch.Generator().manual_seed(seed))
    return torch.log_softmax((logits + gumbel_from_uniform(noise)) / temperature, -1)  # y: [K, B, N, C]


def test_relaxed_objective_uses_exp_concrete_densities_of_posterior_and_prior():
    model = with_random_prior(make_model())
    x = binary_images(3)
    logits = model.encode(x).detach()
    f = model.objective(x, logits, prior_temperature=0.4)
    y = _relaxed_sample(logits, 0.7)
    log_q = ExpRelaxedCategorical(torch.tensor(0.7, dtype=F64), logits=logits).log_prob(y).sum(-1)
    prior = ExpRelaxedCategorical(torch.tensor(0.4, dtype=F64), logits=model.prior_logits.expand_as(logits))
    expected = -(model.log_likelihood(x, y.exp()) + prior.log_prob(y).sum(-1) - log_q)
    assert_close(f.relaxed(y, logits, 0.7), expected, rtol=1e-12, atol=1e-10)


def test_analytic_variant_is_reconstruction_plus_the_discrete_kl():
    model = with_random_prior(make_model())
    x = binary_images(3)
    logits = model.encode(x).detach()
    f = model.objective(x, logits, kl="analytic")
    y = _relaxed_sample(logits, 0.5)
    kl = kl_divergence(Categorical(logits=logits), Categorical(logits=model.prior_logits)).sum(-1)  # [B]
    assert_close(f.relaxed(y, logits, 0.5), kl - model.log_likelihood(x, y.exp()), rtol=1e-12, atol=1e-10)


def test_posterior_density_at_its_own_reparameterised_sample_does_not_depend_on_eta():
    """At ``y = log_softmax((η + G)/λ)``, ``log q_λ(y; η) = log (C−1)! + (C−1) log λ − Σ_c G_c −
    C·logsumexp_c(−G_c)``: free of η. The relaxed ELBO's gradient reaches η through the prior's
    density and the decoder at y, and only if both arguments of log q are differentiated does this
    cancellation happen."""
    generator = torch.Generator().manual_seed(4)
    eta = (2 * torch.randn(3, 4, 5, generator=generator, dtype=F64)).requires_grad_(True)
    gumbel = gumbel_from_uniform(uniform_noise((2, 3, 4, 5), eta, generator))  # [K, B, N, C]
    y = torch.log_softmax((eta + gumbel) / 0.6, -1)
    log_q = ExpRelaxedCategorical(torch.tensor(0.6, dtype=F64), logits=eta).log_prob(y)  # [K, B, N]
    got = CATEGORICAL.relaxed_log_prob(y, eta, 0.6)  # [K, B], summed over the variables
    expected = math.lgamma(5) + 4 * math.log(0.6) - gumbel.sum(-1) - 5 * torch.logsumexp(-gumbel, -1)
    assert_close(got, expected.sum(-1), rtol=1e-12, atol=1e-12)
    assert_close(got, log_q.sum(-1), rtol=1e-12, atol=1e-12)
    (grad,) = torch.autograd.grad(got.sum(), eta)
    assert grad.abs().max() < 1e-10


def test_concrete_trains_on_the_relaxed_objective_through_both_paths():
    model = with_random_prior(make_model(learn_prior=True))
    x = binary_images(3)
    logits = model.encode(x).detach()
    f = model.objective(x, logits, prior_temperature=0.5)
    settings = {**default_settings("vae"), "temperature": 0.6}
    estimator = build_estimator("concrete", settings, model.problem_shape)
    noise = estimator.sample(logits, 2, torch.Generator().manual_seed(8))
    estimate = estimator.estimate(logits, f, noise)
    eta = logits.clone().requires_grad_(True)
    y = torch.log_softmax((eta + gumbel_from_uniform(noise)) / 0.6, -1)
    values = f.relaxed(y, eta, 0.6)
    (expected,) = torch.autograd.grad(values.mean(0).sum(), eta)
    assert_close(estimate.grad, expected, rtol=1e-12, atol=1e-12)
    assert_close(estimate.values.detach(), values.detach())
    # The values keep their graph to the generative model (decoder and learned prior): it trains on them.
    grads = torch.autograd.grad(estimate.values.mean(), model.generative_parameters())
    assert grads[-1].abs().sum() > 0  # the prior, through its ExpConcrete density


# -- the bound ------------------------------------------------------------------------------------


def _tiny() -> tuple[VAE, Tensor, dict[str, Tensor]]:
    """A model with N = 2, C = 3, its data, and exact quantities per row ``[B]`` by enumeration:
    log p(x), the ELBO, and χ² = Var_q(w)/p(x)² of the importance weights w = p(x, b)/q(b|x)."""
    model = with_random_prior(make_model(latent=2, classes=3, arch="nonlinear", seed=3))
    x = binary_images(3, seed=4)
    b = all_configurations(2, 3).expand(9, x.shape[0], 2, 3)  # [9, B, N, C]
    with torch.no_grad():
        logits = model.encode(x)
        log_joint = model.log_joint(x, b)  # [9, B]
        log_q = model.log_posterior(b, logits)  # [9, B]
    log_px = torch.logsumexp(log_joint, 0)
    relative = (log_joint - log_q - log_px).exp()  # w / p(x)
    exact = {
        "log_px": log_px,
        "elbo": (log_q.exp() * (log_joint - log_q)).sum(0),
        "chi2": (log_q.exp() * relative**2).sum(0) - 1.0,
    }
    return model, x, exact


def test_iwae_converges_to_the_exact_log_likelihood():
    model, x, exact = _tiny()
    samples = 20_000
    bound = iwae_bound(model, x, torch.Generator().manual_seed(0), samples=samples)
    # log of a mean of S weights: s.d. ≈ √(χ²/S), bias ≈ −χ²/(2S) (delta method), as for binary latents.
    tolerance = 5 * (exact["chi2"] / samples).sqrt() + exact["chi2"] / samples
    assert ((bound - exact["log_px"]).abs() <= tolerance).all(), (bound, exact["log_px"], tolerance)
    assert (exact["log_px"] - exact["elbo"] > 10 * tolerance).all()  # it tells the bound from the ELBO


def test_iwae_with_one_sample_and_the_elbo_are_the_exact_elbo_in_expectation():
    model, x, exact = _tiny()
    draws = 4_000
    # One sample per row, for 4,000 copies of the rows at once.
    for bound in (
        lambda generator: iwae_bound(model, x.repeat(draws, 1), generator, samples=1),
        lambda generator: elbo(model, x.repeat(draws, 1), generator),
    ):
        bounds = bound(torch.Generator().manual_seed(0)).reshape(draws, x.shape[0])
        error = bounds.std(0) / math.sqrt(draws)
        assert ((bounds.mean(0) - exact["elbo"]).abs() < 5 * error).all()


def test_iwae_chunking_does_not_change_the_bound():
    model, x, _ = _tiny()
    whole = iwae_bound(model, x, torch.Generator().manual_seed(5), samples=50)
    chunked = iwae_bound(model, x, torch.Generator().manual_seed(5), samples=50, chunk=7)
    assert_close(whole, chunked, rtol=1e-12, atol=1e-12)
