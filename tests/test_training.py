"""The training step: what it gives the generative model, the encoder and the estimator.

Small float64 VAEs of both latent families. The shared backward pass's gradients (an estimate's
``param_grads``) and back-propagation through the values must give the same step.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor

from dcvbench.estimators import (
    Estimate,
    Estimator,
    build_estimator,
    default_settings,
    estimator_info,
    estimator_names,
    get_estimator,
)
from dcvbench.latent import family_named
from dcvbench.latent.noise import logistic_from_uniform, uniform_noise
from dcvbench.problems.vae import KL_VARIANTS, VAE, NegativeELBO
from dcvbench.training import train_step

F64 = torch.float64
PIXELS = 16
# The latents of each family: 6 bits, or 4 variables of 3 classes.
LATENTS = {"binary": (6, None), "categorical": (4, 3)}
# Every VAE estimator of every family.
CASES = [
    (family, name)
    for family in LATENTS
    for name in estimator_names(family)
    if "vae" in estimator_info(name, family).problems
]


def make_model(family: str = "binary", seed: int = 0, **options) -> VAE:
    latent, classes = LATENTS[family]
    options = {"latent": latent, "classes": classes, "pixels": PIXELS, "hidden": 7, "dtype": F64, **options}
    return VAE(generator=torch.Generator().manual_seed(seed), **options)


def binary_images(rows: int, seed: int = 1) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(rows, PIXELS, generator=generator, dtype=F64) < 0.3).to(F64)  # [B, P]


def optimizers(model: VAE, lr: float = 1e-2) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    return (
        torch.optim.Adam(model.encoder_parameters(), lr=lr),
        torch.optim.Adam(model.generative_parameters(), lr=lr),
    )


def with_random_prior(model: VAE, seed: int = 5) -> VAE:
    with torch.no_grad():
        model.prior_logits.normal_(generator=torch.Generator().manual_seed(seed))
    return model


@pytest.mark.parametrize("arch", ["linear", "nonlinear"])
@pytest.mark.parametrize(("family", "name"), CASES)
def test_every_estimator_trains_every_parameter_group(family, name, arch):
    model = make_model(family, arch=arch, learn_prior=True)
    before = copy.deepcopy(model)
    # As the VAE job builds it: estimators with networks (relax, nvil) need the shape and x's width.
    estimator = build_estimator(name, default_settings("vae"), model.problem_shape)
    encoder = torch.optim.Adam(model.encoder_parameters(), lr=1e-2)
    decoder = torch.optim.Adam(model.decoder_parameters(), lr=1e-2)
    prior = torch.optim.SGD(model.prior_parameters(), lr=1e-2)
    x, generator = binary_images(4), torch.Generator().manual_seed(0)
    for _ in range(3):
        out = train_step(model, estimator, x, 2, generator, encoder, decoder, prior, prior_temperature=0.4)
        assert out.train_elbo.shape == () and torch.isfinite(out.train_elbo)
        assert out.estimate.grad.shape == (4, *model.problem_shape.event)
        assert torch.isfinite(out.estimate.grad).all()
    for group in ("encoder_parameters", "decoder_parameters", "prior_parameters"):
        new, old = getattr(model, group)(), getattr(before, group)()
        assert all(torch.isfinite(p).all() for p in new)
        assert any(not torch.equal(p, q) for p, q in zip(new, old, strict=True)), group


@pytest.mark.parametrize(("family", "name"), CASES)
def test_every_estimate_gives_the_generative_model_a_gradient(family, name):
    # What a training step needs: g of the logits' shape, and values that train the generative model —
    # through the gradients of the shared backward pass, or the values' own graph.
    model = with_random_prior(make_model(family, learn_prior=True))
    x = binary_images(3)
    logits = model.encode(x)
    f = model.objective(x, logits)
    estimator = build_estimator(name, default_settings("vae"), model.problem_shape)
    estimate = estimator(logits, f, 2, torch.Generator().manual_seed(0))
    assert estimate.grad.shape == logits.shape and torch.isfinite(estimate.grad).all()
    grads = estimate.param_grads
    if grads is None:
        grads = torch.autograd.grad(estimate.values.mean(), model.generative_parameters())
    assert len(grads) == len(model.generative_parameters())
    assert all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


STEP_ESTIMATORS = {"binary": ("rloo", "rloo-dcv", "muprop"), "categorical": ("rloo", "rloo-dcv")}


@pytest.mark.parametrize("family", LATENTS)
@pytest.mark.parametrize("arch", ["linear", "nonlinear"])
def test_decoder_and_encoder_gradients_of_a_step(family, arch):
    """rloo (autograd path), rloo-dcv (shared backward) and muprop (shared backward of *another*
    evaluation, which must not train the decoder) draw the same K samples from the same seed: all
    must give the decoder the gradient of mean f over those samples, and the encoder J_ηᵀ g / B."""
    k, rows = 3, 4
    x = binary_images(rows)
    reference = make_model(family, arch=arch, learn_prior=True)
    logits = reference.encode(x)
    noise = uniform_noise((k, *logits.shape), logits, torch.Generator().manual_seed(7))
    b = family_named(family).sample(logits.detach(), noise)  # [K, B, *latent]
    params = reference.generative_parameters()
    expected = torch.autograd.grad(NegativeELBO(reference, x, logits)(b).mean(), params)

    decoder_grads = {}
    for name in STEP_ESTIMATORS[family]:
        model = copy.deepcopy(reference)
        estimator = get_estimator(name, family)
        if name == "rloo-dcv":
            estimator.set_alpha(-0.5)  # a non-trivial control variate
        encoder_optimizer, decoder_optimizer = optimizers(model)
        generator = torch.Generator().manual_seed(7)
        out = train_step(model, estimator, x, k, generator, encoder_optimizer, decoder_optimizer)
        decoder_grads[name] = [p.grad for p in model.generative_parameters()]
        for got, want in zip(decoder_grads[name], expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        # Encoder: the surrogate (η · g).sum() / B at the pre-step parameters.
        pre = copy.deepcopy(reference)
        surrogate = (pre.encode(x) * out.estimate.grad.detach()).sum() / rows
        surrogate_grads = torch.autograd.grad(surrogate, pre.encoder_parameters())
        for got, want in zip(model.encoder_parameters(), surrogate_grads, strict=True):
            torch.testing.assert_close(got.grad, want, rtol=1e-12, atol=1e-12)
    for a, c in zip(decoder_grads["rloo"], decoder_grads["rloo-dcv"], strict=True):
        torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-12)


def test_learned_prior_is_stepped_by_its_own_optimizer():
    model = make_model(learn_prior=True)
    encoder_optimizer = torch.optim.Adam(model.encoder_parameters(), lr=1e-3)
    decoder_optimizer = torch.optim.Adam(model.decoder_parameters(), lr=1e-3)
    prior_optimizer = torch.optim.SGD(model.prior_parameters(), lr=1e-2)
    before = model.prior_logits.detach().clone()
    generator = torch.Generator().manual_seed(0)
    for name in ("rloo", "rloo-dcv"):
        train_step(
            model, get_estimator(name), binary_images(4), 2, generator,
            encoder_optimizer, decoder_optimizer, prior_optimizer,
        )  # fmt: skip
        assert not torch.equal(model.prior_logits, before)
        before = model.prior_logits.detach().clone()


def test_alpha_is_learned_after_the_estimate_is_used():
    model = make_model()
    estimator = get_estimator("rloo-dcv")
    encoder_optimizer, decoder_optimizer = optimizers(model)
    out = train_step(
        model, estimator, binary_images(4), 2, torch.Generator().manual_seed(0),
        encoder_optimizer, decoder_optimizer,
    )  # fmt: skip
    assert float(out.estimate.stats["alpha"]) == 0.0  # the estimate used α before its update
    assert float(estimator.alpha.detach()) != 0.0


class _Graphless(Estimator):
    """Returns values without a graph and without parameter gradients: the decoder cannot train."""

    info = estimator_info("rloo")

    def estimate(self, logits, f, noise):
        return Estimate(grad=torch.zeros_like(logits), values=f(noise.round()).detach())


def test_values_without_graph_or_parameter_gradients_are_an_error():
    model = make_model()
    encoder_optimizer, decoder_optimizer = optimizers(model)
    with pytest.raises(RuntimeError, match="without a graph"):
        train_step(
            model, _Graphless(), binary_images(4), 2, torch.Generator().manual_seed(0),
            encoder_optimizer, decoder_optimizer,
        )  # fmt: skip


@pytest.mark.parametrize("kl", KL_VARIANTS)
def test_concrete_step_trains_the_generative_model_on_the_relaxed_objective(kl):
    """The decoder and the learned prior get ∇ of the mean relaxed objective over the estimator's
    samples; the encoder gets J_ηᵀ g / B; the logged training ELBO is the relaxed one."""
    k, temperature, prior_temperature = 3, 0.6, 0.45
    reference = with_random_prior(make_model(latent=5, learn_prior=True, seed=2), seed=2)
    x = binary_images(3)
    logits = reference.encode(x)
    eta = logits.detach()
    noise = uniform_noise((k, *eta.shape), eta, torch.Generator().manual_seed(7))  # as the estimator draws
    y = (eta + logistic_from_uniform(noise)) / temperature
    f = NegativeELBO(reference, x, logits, prior_temperature=prior_temperature, kl=kl)
    values = f.relaxed(y, eta, temperature)  # [K, B]
    params = reference.generative_parameters()
    expected = torch.autograd.grad(values.mean(), params)

    model = copy.deepcopy(reference)
    estimator = get_estimator("concrete", temperature=temperature)
    encoder_optimizer, decoder_optimizer = optimizers(model)
    out = train_step(
        model, estimator, x, k, torch.Generator().manual_seed(7), encoder_optimizer, decoder_optimizer,
        prior_temperature=prior_temperature, kl=kl,
    )  # fmt: skip
    assert model.generative_parameters()[-1] is model.prior_logits  # the prior's gradient is checked
    for got, want in zip(model.generative_parameters(), expected, strict=True):
        torch.testing.assert_close(got.grad, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.train_elbo, -values.mean().detach(), rtol=1e-12, atol=1e-12)
    surrogate = (reference.encode(x) * out.estimate.grad.detach()).sum() / x.shape[0]
    for got, want in zip(
        model.encoder_parameters(),
        torch.autograd.grad(surrogate, reference.encoder_parameters()),
        strict=True,
    ):
        torch.testing.assert_close(got.grad, want, rtol=1e-12, atol=1e-12)
