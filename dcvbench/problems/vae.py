"""A variational autoencoder with factorised Bernoulli latents, its objective, training step and bounds.

The model of the DisARM / double-CV experiments (DESIGN §4.2): ``D`` binary latents with a
Bernoulli prior, a Bernoulli likelihood over binarised pixels, and one of two architectures::

    linear      encoder  x → Linear(P, D) → η            decoder  b → Linear(D, P) → pixel logits
    nonlinear   encoder  x → 200 → 200 → D               decoder  b → 200 → 200 → P
                (LeakyReLU(0.3) between layers)

The estimators minimise the negative single-sample ELBO (DESIGN §2)::

    f(b) = −[log p(x|b) + log p(b) − log q(b|x)],     b ~ q(·|x) = Bernoulli(σ(η)),  η = encode(x)

with ``log q`` evaluated at *detached* logits: its direct dependence on ``η`` has zero expected
gradient and is dropped, so the encoder learns only through the estimator's ``g ≈ ∇_η E_q[f]``.
Every log-probability is linear in ``b`` (``log Bern(b; a) = b·a − softplus(a)``), so ``f`` is
defined for real ``b`` too — ``∇_b f`` needs nothing more.

The Concrete relaxation trains a *relaxed* model instead (Maddison, Mnih & Teh 2017; DESIGN §3.3):
each latent is a Binary Concrete variable, held in logit space as
``y = (a + L)/λ`` (``L`` standard logistic), whose log-density is::

    log p_λ(y; a) = log λ − λy + a − 2·softplus(a − λy)

(stable where the density of ``σ(y)`` in probability space is not). :meth:`NegativeELBO.relaxed`
is the negative relaxed ELBO at ``y ~ q_λ(·; η)``::

    "relaxed"   −[log p(x | σ(y)) + log p_{λp}(y; a) − log q_λ(y; η)]
    "analytic"  −log p(x | σ(y)) + KL(Bern(σ(η)) ‖ Bern(σ(a)))

with ``a`` the prior logits, ``λp`` the prior's temperature and ``λ`` the posterior's. The
relaxation is for training only: every bound here (:func:`iwae_bound`, :func:`elbo`) is on the
discrete model, with hard samples.

A training step (:func:`train_step`) splits the gradient two ways: the generative model (decoder and
a learned prior) follows the pathwise gradient of the mean of ``f`` over the estimator's samples;
the encoder receives ``g`` through one vector–Jacobian product of ``logits = encode(x)``.

What does not depend on the latent type lives in the base classes :class:`VAE` (networks, parameter
groups, likelihood) and :class:`VAEObjective` (the shared backward pass); training and the bounds
use only their interface, and serve the categorical VAE
(:mod:`dcvbench.problems.categorical_vae`) as they serve this one.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dcvbench.estimators import Estimate, Estimator, ProblemShape
from dcvbench.estimators.sampling import bernoulli_from_uniform, uniform_noise

Architecture = Literal["linear", "nonlinear"]
ARCHITECTURES: tuple[Architecture, ...] = ("linear", "nonlinear")

PIXELS = 784  # 28 × 28 images: MNIST, Fashion-MNIST, the 28×28 Omniglot
LATENT_BITS = 200  # binary latents D of the DisARM / double-CV experiments
HIDDEN = 200  # hidden width of the nonlinear architecture (DisARM / double-CV experiments)
LEAKY_SLOPE = 0.3  # LeakyReLU slope of the reference code
# The DisARM code clips the mean image to [1e-3, 1 − 1e-3] before taking its logit for the decoder's
# output bias: a pixel that is always 0 must not start at logit −∞.
MEAN_CLIP = 1e-3
# Elements of the largest [S, B, P] pixel-logit tensor of one IWAE chunk (~16 MB in float32).
IWAE_CHUNK_ELEMENTS = 4_000_000
# The relaxed prior's temperature commonly used beside the posterior's 2/3 (both attributed to the
# Concrete paper's experiments; the source was not checked here).
PRIOR_TEMPERATURE = 0.5
# How the relaxed objective treats the latents: Concrete densities, or the discrete KL.
KL_VARIANTS = ("relaxed", "analytic")


class VAE(nn.Module):
    """What a VAE over binarised pixels is whatever its latents: networks, parameter groups, likelihood.

    Subclasses — :class:`BinaryVAE` and :class:`~dcvbench.problems.categorical_vae.CategoricalVAE` —
    build the networks (:func:`networks`) and say what their latents are: :meth:`log_prior`,
    :meth:`log_posterior`, :meth:`objective` (what the estimators see), :meth:`sample_posterior`
    (hard samples for the bounds) and :attr:`problem_shape` (what their estimators are built for).
    Training (:func:`train_step`), the bounds (:func:`iwae_bound`, :func:`elbo`) and the variance
    measurement use this interface alone, so they serve both latent types.

    Args:
        encoder: ``x [B, P]`` → posterior logits ``[B, *latent]``.
        decoder: latents ``[..., *latent]`` → pixel logits ``[..., P]``; its last layer is a Linear.
        prior_logits: the prior's initial logits ``[*latent]``.
        pixels: input dimension ``P``.
        learn_prior: learn the prior's logits (the DisARM protocol) instead of keeping them fixed.
        input_mean: ``[P]`` training-set mean image, subtracted from the encoder's input (the
            DisARM protocol's mean-centring); ``None`` feeds ``x`` unchanged.
        output_bias_mean: ``[P]`` mean image whose clipped logit initialises the decoder's output
            bias (DisARM protocol), so an untrained decoder already predicts the mean image.
        generator: random numbers for the weight initialisation (Glorot-uniform weights and zero
            biases, the Keras defaults of the reference code); ``None`` uses torch's global one.
    """

    def __init__(
        self,
        encoder: nn.Sequential,
        decoder: nn.Sequential,
        prior_logits: Tensor,
        pixels: int,
        learn_prior: bool = False,
        input_mean: Tensor | None = None,
        output_bias_mean: Tensor | None = None,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        self.pixels = pixels
        self.encoder, self.decoder = encoder, decoder
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight, generator=generator)
                nn.init.zeros_(module.bias)
        if output_bias_mean is not None:
            mean = _check_image(output_bias_mean, pixels, "output_bias_mean").clamp(MEAN_CLIP, 1 - MEAN_CLIP)
            with torch.no_grad():
                self.decoder[-1].bias.copy_(torch.logit(mean))
        if learn_prior:
            self.prior_logits = nn.Parameter(prior_logits)
        else:
            self.register_buffer("prior_logits", prior_logits)
        if input_mean is not None:
            # In the parameters' dtype, so that centring never promotes the encoder's input.
            weight = self.encoder[0].weight
            input_mean = _check_image(input_mean, pixels, "input_mean").to(weight.device, weight.dtype)
        self.register_buffer("input_mean", input_mean)

    @property
    def learn_prior(self) -> bool:
        return isinstance(self.prior_logits, nn.Parameter)

    @property
    def problem_shape(self) -> ProblemShape:
        """What an estimator for this model is built for: its latents, and the pixels as context."""
        raise NotImplementedError

    # -- parameter groups (each gets its own optimiser in training) ------------------------------

    def encoder_parameters(self) -> list[nn.Parameter]:
        """The inference network's parameters: trained by the estimator's ``g``."""
        return list(self.encoder.parameters())

    def decoder_parameters(self) -> list[nn.Parameter]:
        return list(self.decoder.parameters())

    def prior_parameters(self) -> list[nn.Parameter]:
        """``[prior_logits]`` when the prior is learned, else ``[]``."""
        return [self.prior_logits] if self.learn_prior else []

    def generative_parameters(self) -> list[nn.Parameter]:
        """Decoder and (learned) prior: trained by the pathwise gradient of the mean of ``f``."""
        return self.decoder_parameters() + self.prior_parameters()

    # -- the model ------------------------------------------------------------------------------

    def encoder_input(self, x: Tensor) -> Tensor:
        """``x`` as the encoder sees it: mean-centred when ``input_mean`` was given."""
        return x if self.input_mean is None else x - self.input_mean

    def encode(self, x: Tensor) -> Tensor:
        """Posterior logits ``η``: ``x [B, P]`` → ``[B, *latent]``."""
        return self.encoder(self.encoder_input(x))

    def decode(self, b: Tensor) -> Tensor:
        """Pixel logits: latents ``b [..., *latent]`` (discrete or relaxed) → ``[..., P]``."""
        return self.decoder(b)

    def log_likelihood(self, x: Tensor, b: Tensor) -> Tensor:
        """``log p(x|b) = Σ_p x_p l_p − softplus(l_p)``, ``l = decode(b)``.

        x ``[B, P]``, b ``[..., B, *latent]`` → ``[..., B]``.
        """
        pixel_logits = self.decode(b)  # [..., B, P]
        # −BCE-with-logits is exactly the Bernoulli log-probability, in a fused and stable kernel.
        nll = F.binary_cross_entropy_with_logits(pixel_logits, x.expand_as(pixel_logits), reduction="none")
        return -nll.sum(-1)

    def log_prior(self, b: Tensor) -> Tensor:
        """``log p(b)``: ``[..., *latent]`` → ``[...]``."""
        raise NotImplementedError

    def log_joint(self, x: Tensor, b: Tensor) -> Tensor:
        """``log p(x, b) = log p(x|b) + log p(b)``: x ``[B, P]``, b ``[..., B, *latent]`` → ``[..., B]``."""
        return self.log_likelihood(x, b) + self.log_prior(b)

    # -- what training and evaluation use ---------------------------------------------------------

    def objective(
        self,
        x: Tensor,
        logits: Tensor,
        generative_grads: bool = True,
        prior_temperature: float = PRIOR_TEMPERATURE,
        kl: str = "relaxed",
    ) -> VAEObjective:
        """The objective the estimators see for the minibatch ``x [B, P]`` at logits ``[B, *latent]``
        (the arguments are :class:`VAEObjective`'s)."""
        raise NotImplementedError

    @staticmethod
    def sample_posterior(logits: Tensor, samples: int, generator: torch.Generator) -> Tensor:
        """``samples`` independent draws of ``q(·|x)`` ``[S, B, *latent]`` at logits ``[B, *latent]``."""
        raise NotImplementedError


class BinaryVAE(VAE):
    """VAE with ``latent`` Bernoulli latents and a Bernoulli likelihood over ``pixels`` pixels.

    Args:
        latent: number of binary latents ``D`` (200 in the reference experiments).
        arch: ``"linear"`` or ``"nonlinear"`` (see the module docstring).
        pixels: input dimension ``P`` (784 for 28×28 images).
        hidden: width of the nonlinear architecture's hidden layers.
        learn_prior: learn the prior's logits (the DisARM protocol) instead of keeping the
            fixed ``Bernoulli(½)`` (logits 0) of the double-CV protocol.
        input_mean, output_bias_mean, generator: as for :class:`VAE`.
        device, dtype: where and in what precision the parameters live.
    """

    def __init__(
        self,
        latent: int = LATENT_BITS,
        arch: Architecture = "linear",
        pixels: int = PIXELS,
        hidden: int = HIDDEN,
        learn_prior: bool = False,
        input_mean: Tensor | None = None,
        output_bias_mean: Tensor | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        factory = {"device": device, "dtype": dtype}
        encoder, decoder = networks(arch, pixels, hidden, latent, factory)
        prior = torch.zeros(latent, **factory)  # Bernoulli(½)
        super().__init__(
            encoder, decoder, prior, pixels, learn_prior, input_mean, output_bias_mean, generator
        )
        self.latent, self.arch = latent, arch

    @property
    def problem_shape(self) -> ProblemShape:
        """What an estimator for this model is built for: D bits, the pixels as context."""
        return ProblemShape(self.latent, context=self.pixels)

    def log_prior(self, b: Tensor) -> Tensor:
        """``log p(b) = Σ_d b_d π_d − softplus(π_d)``, ``π`` the prior logits: ``[..., D]`` → ``[...]``."""
        return bernoulli_log_prob(b, self.prior_logits)

    @staticmethod
    def log_posterior(b: Tensor, logits: Tensor) -> Tensor:
        """``log q(b|x) = Σ_d b_d η_d − softplus(η_d)``: b ``[..., B, D]``, η ``[B, D]`` → ``[..., B]``."""
        return bernoulli_log_prob(b, logits)

    def objective(
        self,
        x: Tensor,
        logits: Tensor,
        generative_grads: bool = True,
        prior_temperature: float = PRIOR_TEMPERATURE,
        kl: str = "relaxed",
    ) -> NegativeELBO:
        return NegativeELBO(self, x, logits, generative_grads, prior_temperature, kl)

    @staticmethod
    def sample_posterior(logits: Tensor, samples: int, generator: torch.Generator) -> Tensor:
        """``samples`` binary draws of ``q(·|x)`` ``[S, B, D]`` at logits ``[B, D]``."""
        noise = uniform_noise((samples, *logits.shape), logits, generator)
        return bernoulli_from_uniform(noise, torch.sigmoid(logits))


def bernoulli_log_prob(b: Tensor, logits: Tensor) -> Tensor:
    """``Σ_d b_d a_d − softplus(a_d)`` over the last dimension; exact for binary ``b``, linear in ``b``."""
    return (b * logits).sum(-1) - F.softplus(logits).sum(-1)


def binary_concrete_log_density(y: Tensor, logits: Tensor, temperature: float) -> Tensor:
    """Log-density of ``Y = (a + L)/λ``, ``L`` standard logistic: the Binary Concrete in logit space.

    ``log p_λ(y; a) = log λ − λy + a − 2·softplus(a − λy)``, summed over the last dimension:
    y ``[..., D]``, logits ``a`` broadcasting against it → ``[...]``. ``σ(Y)`` is Maddison et al.'s
    ``BinConcrete(e^a, λ)``; its density in probability space carries ``x^{−λ−1}`` and
    ``(1−x)^{−λ−1}``, which overflow near 0 and 1 where this form stays finite.
    """
    scaled = temperature * y  # λy = a + L at a sample of this distribution
    return (math.log(temperature) - scaled + logits - 2.0 * F.softplus(logits - scaled)).sum(-1)


def bernoulli_kl(logits: Tensor, prior_logits: Tensor) -> Tensor:
    """``KL(Bern(σ(η)) ‖ Bern(σ(a)))`` summed over the last dimension: ``[..., D] → [...]``.

    Both log-probabilities are linear in ``b``, so the expectation is theirs at ``b = θ = σ(η)``:
    ``Σ_d θ_d (η_d − a_d) − softplus(η_d) + softplus(a_d)``.
    """
    probs = torch.sigmoid(logits)  # θ: [..., D]
    return (probs * (logits - prior_logits) - F.softplus(logits) + F.softplus(prior_logits)).sum(-1)


def networks(
    arch: Architecture, pixels: int, hidden: int, units: int, factory: dict
) -> tuple[nn.Sequential, nn.Sequential]:
    """The encoder ``P → units`` and decoder ``units → P`` of architecture ``arch`` (module docstring).

    ``units`` are the latent units: D bits, or N·C for N categorical variables of C classes.
    ``factory`` holds the parameters' ``device`` and ``dtype``.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose from: {', '.join(ARCHITECTURES)}")
    if units < 1 or pixels < 1 or hidden < 1:
        raise ValueError(f"latent units, pixels and hidden must be ≥ 1, got {units}, {pixels}, {hidden}")
    widths = (pixels, units) if arch == "linear" else (pixels, hidden, hidden, units)
    return _mlp(widths, factory), _mlp(widths[::-1], factory)


def _mlp(widths: tuple[int, ...], factory: dict) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
        if i:
            layers.append(nn.LeakyReLU(LEAKY_SLOPE))
        layers.append(nn.Linear(fan_in, fan_out, **factory))
    return nn.Sequential(*layers)


def _check_image(image: Tensor, pixels: int, name: str) -> Tensor:
    if image.shape != (pixels,):
        raise ValueError(f"{name} must have shape ({pixels},), got {tuple(image.shape)}")
    return image


# ---------------------------------------------------------------------------------------------
# The objective the estimators see.


class VAEObjective:
    """``f(b) = −[log p(x|b) + log p(b) − log q(b|x)]`` for one minibatch: ``[..., B, *latent] → [..., B]``.

    What the objectives of both latent types share — :class:`NegativeELBO` (binary) and
    :class:`~dcvbench.problems.categorical_vae.CategoricalNegativeELBO` — which define ``f`` itself
    (``__call__``) and the objective of their relaxed model (``relaxed``, which the ``concrete``
    estimator trains on; ``prior_temperature`` and ``kl`` are its settings and change nothing else).

    ``log q`` uses the logits *detached*, so ``f`` reaches the generative model (decoder, learned
    prior) but never the encoder. ``b`` may be real (relaxed samples): every term is linear in the
    latents except through the decoder, which is a function of real inputs.

    :meth:`value_and_input_grad` computes ``∇_b f`` and the generative model's gradient in *one*
    backward pass and keeps the latter for :func:`train_step` (:meth:`take_generative_grads`), so an
    estimator that needs ``∇_b f`` (``rloo-dcv``, ``st-concrete``) costs one extra input-gradient
    matrix product over one that does not, instead of a second backward pass.

    Args:
        model: the VAE.
        x: ``[B, P]`` the minibatch.
        logits: ``[B, *latent]`` posterior logits ``η = encode(x)``; detached here.
        generative_grads: also differentiate ``value_and_input_grad``'s values with respect to the
            generative parameters (off for variance measurement, which only needs ``∇_b f``).
        prior_temperature: ``λp``, the temperature of the relaxed prior in ``relaxed``.
        kl: ``relaxed``'s latent term: ``"relaxed"`` (Concrete densities) or ``"analytic"`` (the
            discrete KL in closed form).
    """

    def __init__(
        self,
        model: VAE,
        x: Tensor,
        logits: Tensor,
        generative_grads: bool = True,
        prior_temperature: float = PRIOR_TEMPERATURE,
        kl: str = "relaxed",
    ):
        latent = tuple(model.prior_logits.shape)  # one row of latents: (D,) or (N, C)
        if x.shape[-1:] != (model.pixels,) or logits.shape[1:] != latent or x.shape[:-1] != logits.shape[:1]:
            sizes = ", ".join(map(str, latent))
            raise ValueError(
                f"x must be [B, {model.pixels}] and logits [B, {sizes}] with the same B, "
                f"got {tuple(x.shape)} and {tuple(logits.shape)}"
            )
        if not prior_temperature > 0.0:
            raise ValueError(f"prior_temperature must be > 0, got {prior_temperature}")
        if kl not in KL_VARIANTS:
            raise ValueError(f"unknown kl {kl!r}; choose from: {', '.join(KL_VARIANTS)}")
        self.model = model
        self.x = x  # [B, P]
        self.logits = logits.detach()  # [B, *latent]
        self.generative_grads = generative_grads
        self.prior_temperature = prior_temperature
        self.kl = kl
        self._stored: tuple[Tensor, list[Tensor]] | None = None

    def __call__(self, b: Tensor) -> Tensor:
        """``f(b)``: ``b [..., B, *latent]`` → ``[..., B]``, attached to the generative model's graph."""
        raise NotImplementedError

    @property
    def context(self) -> Tensor:
        """``x [B, P]``: what an estimator's own networks may condition on (NVIL's baseline, RELAX's
        control net)."""
        return self.x

    def tile(self, times: int) -> VAEObjective:
        """The same objective over ``times`` stacked copies of the minibatch (row ``r`` is row
        ``r mod B``): what independent draws at one snapshot need (``measure.variance``)."""
        return type(self)(
            self.model,
            self.x.repeat(times, 1),
            self.logits.repeat(times, *[1] * (self.logits.dim() - 1)),
            self.generative_grads,
            self.prior_temperature,
            self.kl,
        )

    def value_and_input_grad(self, b: Tensor) -> tuple[Tensor, Tensor]:
        """``f(b)`` ``[..., B]`` (detached) and ``∇_b f(b)`` ``[..., B, *latent]`` from one backward pass.

        The same pass gives ``∇ mean(f)`` for the generative parameters, kept for
        :meth:`take_generative_grads` under the identity of the returned values tensor: the
        gradients belong to *these* values, and a training step that backpropagates different
        values (MuProp evaluates ``f`` at θ with input gradients, but trains on its K samples)
        finds nothing stored for them and falls back to autograd.
        """
        params = [p for p in self.model.generative_parameters() if p.requires_grad]
        params = params if self.generative_grads else []
        with torch.enable_grad():
            b = b.detach().requires_grad_(True)
            values = self(b)  # [..., B]
            # Seeded with 1/n, as values.mean().backward() is: the parameters get ∇ mean f exactly
            # as on the autograd path, and only the (smaller) input gradient needs rescaling.
            count = values.numel()
            seed = torch.full_like(values, 1.0 / count)
            grads = torch.autograd.grad(values, [b, *params], grad_outputs=seed)
        values = values.detach()
        if params:
            self._stored = (values, list(grads[1:]))
        return values, grads[0] * count  # ∇_b f_k: each value depends only on its own b

    def take_generative_grads(self, values: Tensor) -> list[Tensor] | None:
        """The stored generative gradients if they belong to ``values`` (the same tensor), else ``None``.

        Order: :meth:`VAE.generative_parameters` (only those requiring grad). Handing them out
        forgets them.
        """
        stored, self._stored = self._stored, None
        if stored is None or stored[0] is not values:
            return None
        return stored[1]


class NegativeELBO(VAEObjective):
    """The objective of a :class:`BinaryVAE` (see :class:`VAEObjective`): ``[..., B, D] → [..., B]``.

    Its relaxed model (:meth:`relaxed`, the module docstring) has Binary Concrete latents.
    """

    def __init__(
        self,
        model: BinaryVAE,
        x: Tensor,
        logits: Tensor,
        generative_grads: bool = True,
        prior_temperature: float = PRIOR_TEMPERATURE,
        kl: str = "relaxed",
    ):
        super().__init__(model, x, logits, generative_grads, prior_temperature, kl)
        self._posterior_normaliser = F.softplus(self.logits).sum(-1)  # Σ_d softplus(η_d): [B]

    def __call__(self, b: Tensor) -> Tensor:
        prior = self.model.prior_logits  # [D]
        # log p(b) − log q(b|x) = Σ_d b_d (π_d − η_d) − softplus(π_d) + softplus(η_d): one product
        # with b instead of two (the prior's terms stay in the graph when the prior is learned).
        latent = (b * (prior - self.logits)).sum(-1) + (self._posterior_normaliser - F.softplus(prior).sum())
        return -(self.model.log_likelihood(self.x, b) + latent)  # [..., B]

    def relaxed(self, y: Tensor, logits: Tensor, temperature: float) -> Tensor:
        """The negative relaxed ELBO at ``z = σ(y)``: ``y [..., B, D]`` → ``[..., B]``.

        ``y`` are the relaxed latents in logit space, a sample of ``q_λ(·; η)`` with ``λ =
        temperature``; ``logits`` is ``η [B, D]`` *with* the caller's graph: unlike :meth:`__call__`,
        this objective is differentiated pathwise, so its dependence on ``η`` through the posterior's
        density (or the KL) is part of its gradient along with that through ``y``. The result is
        attached to the generative model's graph (decoder and learned prior), which trains on it.
        """
        reconstruction = self.model.log_likelihood(self.x, torch.sigmoid(y))  # [..., B]
        prior = self.model.prior_logits  # [D]
        if self.kl == "analytic":
            return bernoulli_kl(logits, prior) - reconstruction  # [B] + [..., B]
        log_prior = binary_concrete_log_density(y, prior, self.prior_temperature)  # [..., B]
        log_posterior = binary_concrete_log_density(y, logits, temperature)  # [..., B]
        return -(reconstruction + log_prior - log_posterior)


# ---------------------------------------------------------------------------------------------
# Training.


@dataclass
class StepOutput:
    """What one training step reports (tensors on the model's device; nothing synchronised).

    Attributes:
        train_elbo: 0-d, the mean over batch and samples of ``−f``: the training ELBO (the relaxed
            ELBO for an estimator that trains on the objective's ``relaxed`` model).
        estimate: the estimator's :class:`~dcvbench.estimators.Estimate` (``grad`` is ``g``,
            ``[B, *latent]``, the per-row logit gradient of ``E[f]``).
    """

    train_elbo: Tensor
    estimate: Estimate


def train_step(
    model: VAE,
    estimator: Estimator,
    x: Tensor,
    k: int,
    generator: torch.Generator,
    encoder_optimizer: torch.optim.Optimizer,
    decoder_optimizer: torch.optim.Optimizer,
    prior_optimizer: torch.optim.Optimizer | None = None,
    *,
    prior_temperature: float = PRIOR_TEMPERATURE,
    kl: str = "relaxed",
) -> StepOutput:
    """One step on the minibatch ``x [B, P]``, minimising ``(1/B) Σ_b E_q[f_b]`` (= −mean ELBO).

    1. ``η = encode(x)``; the estimator draws its ``k`` samples of ``f = model.objective(x, η)`` and
       returns ``g ≈ ∇_η E[f]`` ``[B, *latent]``. ``prior_temperature`` and ``kl`` configure the
       relaxed objective (:meth:`NegativeELBO.relaxed` and its categorical counterpart), for
       estimators that train on it (``concrete``: then ``f`` is the negative relaxed ELBO
       throughout, values and ``g`` alike).
    2. Generative model: the gradient of ``mean(f)`` over the estimator's sample values — taken
       from the objective when the estimator's values came from
       :meth:`VAEObjective.value_and_input_grad` (one shared backward pass), else by autograd —
       or of the estimate's own ``surrogate`` where it gives one (VIMCO's K-sample bound).
    3. Encoder: one vector–Jacobian product, ``η.backward(g / B)`` (``g`` is per row; the
       objective averages the rows).
    4. The optimisers step; then ``estimator.update`` learns its own state (``α``), after ``g`` was
       used, so ``g`` stays unbiased.

    The prior's gradient is written when the prior is learned: step it with ``prior_optimizer``
    (the DisARM protocol's SGD), or put it in ``decoder_optimizer``'s parameters. Gradients stay
    in ``.grad`` after the step (for :class:`~dcvbench.measure.vae_variance.EMAVariance`); nothing
    here waits on the device.
    """
    model.zero_grad(set_to_none=True)
    logits = model.encode(x)  # [B, *latent]
    f = model.objective(x, logits, prior_temperature=prior_temperature, kl=kl)
    estimate = estimator(logits, f, k, generator)
    values = estimate.values  # [E, B]

    params = [p for p in model.generative_parameters() if p.requires_grad]
    shared = f.take_generative_grads(values) if estimate.surrogate is None else None
    surrogate = values.mean() if estimate.surrogate is None else estimate.surrogate
    if shared is not None:
        for param, grad in zip(params, shared, strict=True):
            param.grad = grad
    elif surrogate.requires_grad:
        # inputs=params: the surrogate may also reach an estimator's own leaves (a relaxed
        # sample's logits), which are not the generative model's to train.
        surrogate.backward(inputs=params)
    elif params:
        raise RuntimeError(
            f"{type(estimator).__name__} returned objective values without a graph and without "
            "gradients from the objective's value_and_input_grad: the decoder cannot be trained"
        )
    logits.backward(estimate.grad / x.shape[0])

    encoder_optimizer.step()
    decoder_optimizer.step()
    if prior_optimizer is not None:
        prior_optimizer.step()
    estimator.update(estimate)
    return StepOutput(train_elbo=-values.detach().mean(), estimate=estimate)


# ---------------------------------------------------------------------------------------------
# Bounds for evaluation (always on the discrete model).


@torch.no_grad()
def iwae_bound(
    model: VAE,
    x: Tensor,
    generator: torch.Generator,
    samples: int = 100,
    chunk: int | None = None,
) -> Tensor:
    """The importance-weighted bound ``log (1/S) Σ_s exp(log p(x, b_s) − log q(b_s|x))`` per row, ``[B]``.

    ``b_s ~ q(·|x)`` independent, ``S = samples`` per row (Burda et al. 2016); a lower bound on
    ``log p(x)`` that tightens as ``S`` grows, and equals the ELBO in expectation at ``S = 1``.
    Samples are drawn ``chunk`` at a time (default: about ``IWAE_CHUNK_ELEMENTS`` pixel logits per
    chunk) and the log-sum-exp is accumulated across chunks, so memory does not grow with ``S``.
    Written against :meth:`VAE.objective` and :meth:`VAE.sample_posterior` only: either latent type.
    """
    if samples < 1:
        raise ValueError(f"samples must be ≥ 1, got {samples}")
    logits = model.encode(x)  # [B, *latent]
    chunk = chunk or max(1, IWAE_CHUNK_ELEMENTS // max(1, x.shape[0] * model.pixels))
    f = model.objective(x, logits)
    total = torch.full(logits.shape[:1], -math.inf, device=logits.device, dtype=logits.dtype)  # [B]
    for size in _chunks(samples, chunk):
        b = model.sample_posterior(logits, size, generator)  # [s, B, *latent]
        total = torch.logaddexp(total, torch.logsumexp(-f(b), 0))  # log Σ_s w_s so far: [B]
    return total - math.log(samples)


@torch.no_grad()
def elbo(model: VAE, x: Tensor, generator: torch.Generator, samples: int = 1) -> Tensor:
    """Monte Carlo ELBO per row, ``[B]``: the mean over ``samples`` draws of ``log p(x, b) − log q(b|x)``."""
    logits = model.encode(x)  # [B, *latent]
    b = model.sample_posterior(logits, samples, generator)  # [S, B, *latent]
    return -model.objective(x, logits)(b).mean(0)


def _chunks(total: int, chunk: int) -> Iterator[int]:
    """Sizes of consecutive chunks of at most ``chunk`` that add up to ``total``."""
    for start in range(0, total, chunk):
        yield min(chunk, total - start)
