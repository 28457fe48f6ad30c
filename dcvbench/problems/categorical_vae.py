"""A variational autoencoder with categorical latents: its model, objective and bound.

The categorical counterpart of :mod:`dcvbench.problems.vae` (DESIGN §3.6; the Gumbel-softmax
experiments of Jang, Gu & Poole 2017 use N = 20 variables of C = 10 classes): N independent
categorical latents with a categorical prior (uniform, or learned), a Bernoulli likelihood over
binarised pixels, and the same two architectures with N·C latent units::

    linear      encoder  x → Linear(P, NC) → η [N, C]        decoder  b [N, C] → Linear(NC, P) → pixel logits
    nonlinear   encoder  x → 200 → 200 → NC → η [N, C]       decoder  b [N, C] → NC → 200 → 200 → P
                (LeakyReLU(0.3) between layers)

The estimators minimise the negative single-sample ELBO at one-hot samples ``b [..., B, N, C]``::

    f(b) = −[log p(x|b) + log p(b) − log q(b|x)],    log q(b|x) = Σ_n ⟨b_n, log softmax(η_n)⟩

with ``η`` detached inside ``f``, as for binary latents: its direct dependence on ``η`` has zero
expected gradient, and the encoder learns only through the estimator's ``g ≈ ∇_η E_q[f]``. Both
latent log-probabilities are linear in ``b``, so ``f`` is defined for real ``b`` (relaxed samples,
``∇_b f``).

The Concrete relaxation trains a relaxed model (Maddison, Mnih & Teh 2017, appendix C): each
latent is an ExpConcrete variable ``y = log_softmax((a + G)/λ)`` on the log-simplex, with the
closed-form log-density :func:`~dcvbench.estimators.categorical.exp_concrete_log_prob`.
:meth:`CategoricalNegativeELBO.relaxed` is the negative relaxed ELBO at ``y ~ q_λ(·; η)``::

    "relaxed"   −[log p(x | exp(y)) + log p_{λp}(y; a) − log q_λ(y; η)]
    "analytic"  −log p(x | exp(y)) + KL(Cat(softmax η) ‖ Cat(softmax a))

``a`` the prior logits, ``λp`` the prior's temperature, ``λ`` the posterior's. Evaluation is always
on the discrete model (:func:`iwae_bound`, hard samples).

The model offers what a training step and a bound need without knowing the latent type:
:meth:`CategoricalVAE.objective` (the objective the estimators see) and
:meth:`CategoricalVAE.sample_posterior` (hard samples for bounds), and its estimators' shape
(:attr:`CategoricalVAE.problem_shape`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dcvbench.estimators import ProblemShape
from dcvbench.estimators.categorical import exp_concrete_log_prob
from dcvbench.estimators.sampling import categorical_from_uniform, uniform_noise
from dcvbench.problems.vae import (
    ARCHITECTURES,
    HIDDEN,
    IWAE_CHUNK_ELEMENTS,
    KL_VARIANTS,
    MEAN_CLIP,
    PIXELS,
    PRIOR_TEMPERATURE,
    Architecture,
    _check_image,
    _chunks,
    _mlp,
)

# The Gumbel-softmax paper's categorical VAE: 20 variables of 10 classes each.
VARIABLES = 20
CLASSES = 10


class CategoricalVAE(nn.Module):
    """VAE with ``variables`` categorical latents of ``classes`` classes and a Bernoulli likelihood.

    Args:
        variables: number of categorical latents ``N``.
        classes: classes per latent ``C`` (≥ 2).
        arch: ``"linear"`` or ``"nonlinear"`` (see the module docstring).
        pixels: input dimension ``P`` (784 for 28×28 images).
        hidden: width of the nonlinear architecture's hidden layers.
        learn_prior: learn the prior's logits ``[N, C]`` instead of keeping the uniform prior
            (logits 0).
        input_mean: ``[P]`` training-set mean image, subtracted from the encoder's input; ``None``
            feeds ``x`` unchanged.
        output_bias_mean: ``[P]`` mean image whose clipped logit initialises the decoder's output bias.
        generator: random numbers for the weight initialisation (Glorot-uniform weights and zero
            biases, as for :class:`~dcvbench.problems.vae.BinaryVAE`); ``None`` uses torch's global one.
        device, dtype: where and in what precision the parameters live.
    """

    def __init__(
        self,
        variables: int = VARIABLES,
        classes: int = CLASSES,
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
        super().__init__()
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {arch!r}; choose from: {', '.join(ARCHITECTURES)}")
        if variables < 1 or pixels < 1 or hidden < 1:
            raise ValueError(f"variables, pixels and hidden must be ≥ 1, got {variables}, {pixels}, {hidden}")
        if classes < 2:
            raise ValueError(f"classes must be ≥ 2, got {classes}")
        self.variables, self.classes, self.pixels, self.arch = variables, classes, pixels, arch
        factory = {"device": device, "dtype": dtype}
        units = variables * classes
        widths = (pixels, units) if arch == "linear" else (pixels, hidden, hidden, units)
        # The encoder's last layer emits N·C logits, viewed as [N, C]; the decoder flattens a one-hot
        # [N, C] back to its N·C inputs. Both views live inside the modules, so the encoder maps x to
        # logits of the estimators' shape (what encoder-gradient VJPs differentiate).
        self.encoder = nn.Sequential(*_mlp(widths, factory), nn.Unflatten(-1, (variables, classes)))
        self.decoder = nn.Sequential(nn.Flatten(-2), *_mlp(widths[::-1], factory))
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight, generator=generator)
                nn.init.zeros_(module.bias)
        if output_bias_mean is not None:
            mean = _check_image(output_bias_mean, pixels, "output_bias_mean").clamp(MEAN_CLIP, 1 - MEAN_CLIP)
            with torch.no_grad():
                self.decoder[-1].bias.copy_(torch.logit(mean))
        prior = torch.zeros(variables, classes, **factory)  # uniform
        if learn_prior:
            self.prior_logits = nn.Parameter(prior)
        else:
            self.register_buffer("prior_logits", prior)
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
        """What an estimator for this model is built for: N variables of C classes, the pixels as context."""
        return ProblemShape(self.variables, context=self.pixels, classes=self.classes)

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
        """Posterior logits ``η``: ``x [B, P]`` → ``[B, N, C]``."""
        return self.encoder(self.encoder_input(x))

    def decode(self, b: Tensor) -> Tensor:
        """Pixel logits: ``b [..., N, C]`` (one-hot or relaxed) → ``[..., P]``."""
        return self.decoder(b)

    def log_likelihood(self, x: Tensor, b: Tensor) -> Tensor:
        """``log p(x|b) = Σ_p x_p l_p − softplus(l_p)``, ``l = decode(b)``.

        x ``[B, P]``, b ``[..., B, N, C]`` → ``[..., B]``.
        """
        pixel_logits = self.decode(b)  # [..., B, P]
        # −BCE-with-logits is exactly the Bernoulli log-probability, in a fused and stable kernel.
        nll = F.binary_cross_entropy_with_logits(pixel_logits, x.expand_as(pixel_logits), reduction="none")
        return -nll.sum(-1)

    def log_prior(self, b: Tensor) -> Tensor:
        """``log p(b) = Σ_n ⟨b_n, log softmax(a_n)⟩``, ``a`` the prior logits: ``[..., N, C]`` → ``[...]``."""
        return categorical_log_prob(b, self.prior_logits)

    def log_joint(self, x: Tensor, b: Tensor) -> Tensor:
        """``log p(x, b) = log p(x|b) + log p(b)``: x ``[B, P]``, b ``[..., B, N, C]`` → ``[..., B]``."""
        return self.log_likelihood(x, b) + self.log_prior(b)

    @staticmethod
    def log_posterior(b: Tensor, logits: Tensor) -> Tensor:
        """``log q(b|x) = Σ_n ⟨b_n, log softmax(η_n)⟩``: b ``[..., B, N, C]``, η ``[B, N, C]`` → ``[...]``."""
        return categorical_log_prob(b, logits)

    # -- what training and evaluation use ---------------------------------------------------------

    def objective(
        self,
        x: Tensor,
        logits: Tensor,
        generative_grads: bool = True,
        prior_temperature: float = PRIOR_TEMPERATURE,
        kl: str = "relaxed",
    ) -> CategoricalNegativeELBO:
        """The objective the estimators see for the minibatch ``x [B, P]`` at logits ``[B, N, C]``."""
        return CategoricalNegativeELBO(self, x, logits, generative_grads, prior_temperature, kl)

    @staticmethod
    def sample_posterior(logits: Tensor, samples: int, generator: torch.Generator) -> Tensor:
        """``samples`` one-hot draws of ``q(·|x)`` ``[S, B, N, C]`` at logits ``[B, N, C]`` (Gumbel-max)."""
        noise = uniform_noise((samples, *logits.shape), logits, generator)
        return categorical_from_uniform(noise, logits)


def categorical_log_prob(b: Tensor, logits: Tensor) -> Tensor:
    """``Σ_n ⟨b_n, log softmax(a_n)⟩`` over the last two dimensions; exact for one-hot ``b``, linear in it."""
    return (b * torch.log_softmax(logits, -1)).sum((-2, -1))


def categorical_kl(logits: Tensor, prior_logits: Tensor) -> Tensor:
    """``Σ_n KL(Cat(softmax η_n) ‖ Cat(softmax a_n))``: ``[..., N, C] → [...]``."""
    log_probs = torch.log_softmax(logits, -1)
    return (log_probs.exp() * (log_probs - torch.log_softmax(prior_logits, -1))).sum((-2, -1))


# ---------------------------------------------------------------------------------------------
# The objective the estimators see.


class CategoricalNegativeELBO:
    """``f(b) = −[log p(x|b) + log p(b) − log q(b|x)]`` for one minibatch: ``[..., B, N, C] → [..., B]``.

    The categorical counterpart of :class:`~dcvbench.problems.vae.NegativeELBO`, with the same
    contract: ``log q`` uses the logits detached, so ``f`` reaches the generative model but never
    the encoder; :meth:`value_and_input_grad` computes ``∇_b f`` and the generative gradients in
    one backward pass and keeps the latter for the training step (:meth:`take_generative_grads`),
    so ``rloo-dcv`` costs one extra input-gradient matrix product over ``rloo``; :meth:`relaxed`
    is the relaxed model's objective (the module docstring).

    Args:
        model: the VAE.
        x: ``[B, P]`` the minibatch.
        logits: ``[B, N, C]`` posterior logits ``η = encode(x)``; detached here.
        generative_grads: also differentiate ``value_and_input_grad``'s values with respect to the
            generative parameters (off for variance measurement, which only needs ``∇_b f``).
        prior_temperature: ``λp``, the temperature of the relaxed prior in :meth:`relaxed`.
        kl: ``"relaxed"`` (ExpConcrete densities) or ``"analytic"`` (the discrete KL) in
            :meth:`relaxed`.
    """

    def __init__(
        self,
        model: CategoricalVAE,
        x: Tensor,
        logits: Tensor,
        generative_grads: bool = True,
        prior_temperature: float = PRIOR_TEMPERATURE,
        kl: str = "relaxed",
    ):
        expected = (model.variables, model.classes)
        if x.shape[-1] != model.pixels or logits.shape[1:] != expected or x.shape[:1] != logits.shape[:1]:
            raise ValueError(
                f"x must be [B, {model.pixels}] and logits [B, {expected[0]}, {expected[1]}] with the same "
                f"B, got {tuple(x.shape)} and {tuple(logits.shape)}"
            )
        if not prior_temperature > 0.0:
            raise ValueError(f"prior_temperature must be > 0, got {prior_temperature}")
        if kl not in KL_VARIANTS:
            raise ValueError(f"unknown kl {kl!r}; choose from: {', '.join(KL_VARIANTS)}")
        self.model = model
        self.x = x  # [B, P]
        self.logits = logits.detach()  # [B, N, C]
        self.generative_grads = generative_grads
        self.prior_temperature = prior_temperature
        self.kl = kl
        self._log_posterior_probs = torch.log_softmax(self.logits, -1)  # [B, N, C]
        self._stored: tuple[Tensor, list[Tensor]] | None = None

    def __call__(self, b: Tensor) -> Tensor:
        """``f(b)``: ``b [..., B, N, C]`` → ``[..., B]``, attached to the generative model's graph."""
        log_prior_probs = torch.log_softmax(self.model.prior_logits, -1)  # [N, C]
        # log p(b) − log q(b|x) in one product with b (the prior stays in the graph when learned).
        latent = (b * (log_prior_probs - self._log_posterior_probs)).sum((-2, -1))  # [..., B]
        return -(self.model.log_likelihood(self.x, b) + latent)

    def relaxed(self, y: Tensor, logits: Tensor, temperature: float) -> Tensor:
        """The negative relaxed ELBO at ``z = exp(y)``: ``y [..., B, N, C]`` → ``[..., B]``.

        ``y`` are relaxed latents on the log-simplex, a sample of ``q_λ(·; η)`` with ``λ =
        temperature``; ``logits`` is ``η [B, N, C]`` *with* the caller's graph: this objective is
        differentiated pathwise, so its dependence on ``η`` through the posterior's density (or the
        KL) is part of its gradient along with that through ``y``. The result is attached to the
        generative model's graph, which trains on it.
        """
        reconstruction = self.model.log_likelihood(self.x, torch.exp(y))  # [..., B]
        prior = self.model.prior_logits  # [N, C]
        if self.kl == "analytic":
            return categorical_kl(logits, prior) - reconstruction  # [B] + [..., B]
        log_prior = exp_concrete_log_prob(y, prior, self.prior_temperature).sum(-1)  # [..., B]
        log_posterior = exp_concrete_log_prob(y, logits, temperature).sum(-1)  # [..., B]
        return -(reconstruction + log_prior - log_posterior)

    @property
    def context(self) -> Tensor:
        """``x [B, P]``: what an estimator's own networks may condition on."""
        return self.x

    def tile(self, times: int) -> CategoricalNegativeELBO:
        """The same objective over ``times`` stacked copies of the minibatch (row ``r`` is row
        ``r mod B``): what independent draws at one snapshot need (``measure.variance``)."""
        return CategoricalNegativeELBO(
            self.model,
            self.x.repeat(times, 1),
            self.logits.repeat(times, 1, 1),
            self.generative_grads,
            self.prior_temperature,
            self.kl,
        )

    def value_and_input_grad(self, b: Tensor) -> tuple[Tensor, Tensor]:
        """``f(b)`` ``[..., B]`` (detached) and ``∇_b f(b)`` ``[..., B, N, C]`` from one backward pass.

        The same pass gives ``∇ mean(f)`` for the generative parameters, kept for
        :meth:`take_generative_grads` under the identity of the returned values tensor (as in
        :meth:`~dcvbench.problems.vae.NegativeELBO.value_and_input_grad`).
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

        Order: :meth:`CategoricalVAE.generative_parameters` (only those requiring grad). Handing them
        out forgets them.
        """
        stored, self._stored = self._stored, None
        if stored is None or stored[0] is not values:
            return None
        return stored[1]


# ---------------------------------------------------------------------------------------------
# Bounds for evaluation (always on the discrete model).


@torch.no_grad()
def iwae_bound(
    model: CategoricalVAE,
    x: Tensor,
    generator: torch.Generator,
    samples: int = 100,
    chunk: int | None = None,
) -> Tensor:
    """The importance-weighted bound ``log (1/S) Σ_s exp(log p(x, b_s) − log q(b_s|x))`` per row, ``[B]``.

    ``b_s ~ q(·|x)`` one-hot and independent, ``S = samples`` per row (Burda et al. 2016), drawn
    ``chunk`` at a time (default: about ``IWAE_CHUNK_ELEMENTS`` pixel logits per chunk) with the
    log-sum-exp accumulated across chunks. Written against the model's :meth:`~CategoricalVAE.objective`
    and :meth:`~CategoricalVAE.sample_posterior` only.
    """
    if samples < 1:
        raise ValueError(f"samples must be ≥ 1, got {samples}")
    logits = model.encode(x)  # [B, N, C]
    chunk = chunk or max(1, IWAE_CHUNK_ELEMENTS // max(1, x.shape[0] * model.pixels))
    f = model.objective(x, logits)
    total = torch.full(logits.shape[:1], -math.inf, device=logits.device, dtype=logits.dtype)  # [B]
    for size in _chunks(samples, chunk):
        b = model.sample_posterior(logits, size, generator)  # [s, B, N, C]
        total = torch.logaddexp(total, torch.logsumexp(-f(b), 0))  # log Σ_s w_s so far: [B]
    return total - math.log(samples)
