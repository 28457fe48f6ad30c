"""A variational autoencoder with discrete latents: its model, its objective and its bounds.

The model of the DisARM / double-CV experiments (DESIGN §4.2) and, with categorical latents, of the
Gumbel-softmax experiments (§3.6; Jang, Gu & Poole 2017 use N = 20 variables of C = 10 classes). One
class for both latent families (:mod:`dcvbench.latent`): ``D`` binary latents with a Bernoulli prior,
or ``N`` categorical latents of ``C`` classes with a categorical prior (uniform, or learned); a
Bernoulli likelihood over binarised pixels; and one of two architectures over the ``U`` latent
units (``D``, or ``N·C``)::

    linear      encoder  x → Linear(P, U) → η            decoder  b → Linear(U, P) → pixel logits
    nonlinear   encoder  x → 200 → 200 → U → η           decoder  b → U → 200 → 200 → P
                (LeakyReLU(0.3) between layers)

Binary models may also have several stochastic layers, named as in the Concrete paper (Maddison,
Mnih & Teh 2017, §5.1), from the top layer down to the pixels: ``200H-784V`` (= ``linear``),
``200H-200H-784V`` (two layers of 200 bits, linear maps between neighbours), ``200H~784V``
(= ``nonlinear``) and ``200H~200H~784V``. A ``~`` is the nonlinear block above: two deterministic
layers of 200 units with LeakyReLU(0.3), the DisARM / double-CV code's, so that the one-layer
names and today's architectures are the same models. (The Concrete paper, after MuProp and
REBAR, used tanh units there; dcvbench keeps one nonlinear block for every architecture.) Two
layers have ``q(b_1|x) q(b_2|b_1)`` and ``p(b_2) p(b_1|b_2) p(x|b_1)``; ``f`` is then ``−log w`` of
the whole chain (:class:`NegativeELBO`).

The estimators minimise the negative single-sample ELBO (DESIGN §2)::

    f(b) = −[log p(x|b) + log p(b) − log q(b|x)],     b ~ q(·|x),  η = encode(x)

with ``log q`` evaluated at *detached* logits: its direct dependence on ``η`` has zero expected
gradient and is dropped, so the encoder learns only through the estimator's ``g ≈ ∇_η E_q[f]``.
Both latent log-probabilities are linear in ``b`` (``log q(b) = ⟨b, n(η)⟩ − A(η)``,
:meth:`~dcvbench.latent.LatentFamily.natural`), so ``f`` is defined for real ``b`` too —
``∇_b f`` and relaxed samples need nothing more.

The Concrete relaxation trains a *relaxed* model instead (Maddison, Mnih & Teh 2017; DESIGN §3.3):
each latent is a Concrete variable held in its family's base space — ``y = (a + L)/λ`` in logit
space for bits, ``y = log_softmax((a + G)/λ)`` on the log-simplex for classes — where its
log-density ``log p_λ(y; a)`` is stable (:meth:`~dcvbench.latent.LatentFamily.relaxed_log_prob`).
:meth:`NegativeELBO.relaxed` is the negative relaxed ELBO at ``y ~ q_λ(·; η)``, ``z`` the relaxed
point (``σ(y)`` or ``exp(y)``)::

    "relaxed"   −[log p(x | z) + log p_{λp}(y; a) − log q_λ(y; η)]
    "analytic"  −log p(x | z) + KL(q_η ‖ p_a)

with ``a`` the prior logits, ``λp`` the prior's temperature and ``λ`` the posterior's. The
relaxation is for training only: every bound here (:func:`iwae_bound`, :func:`elbo`) is on the
discrete model, with hard samples.

The training step that joins a model to an estimator is :func:`dcvbench.training.train_step`.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dcvbench.latent import LatentFamily
from dcvbench.latent.noise import uniform_noise
from dcvbench.objectives import Evaluation, ProblemShape

# The Concrete paper's names (Maddison, Mnih & Teh 2017, §5.1), read from the top stochastic layer
# down to the visible one: "-" a linear map between neighbours, "~" the nonlinear block. "linear" and
# "nonlinear" are the one-layer names of the DisARM / double-CV experiments (their D from `latent`).
ARCHITECTURES = ("linear", "nonlinear", "200H-784V", "200H-200H-784V", "200H~784V", "200H~200H~784V")
ARCH_PATTERN = re.compile(r"^(?:\d+H[-~])+\d+V$")

PIXELS = 784  # 28 × 28 images: MNIST, Fashion-MNIST, the 28×28 Omniglot
LATENT_BITS = 200  # binary latents D of the DisARM / double-CV experiments
# The Gumbel-softmax paper's categorical VAE: 20 variables of 10 classes each.
VARIABLES = 20
CLASSES = 10
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
# What a multi-sample-capable estimator trains: the ELBO (m = 1) or the K-sample bound L_K (m = K).
BOUNDS = ("elbo", "iwae")


@dataclass(frozen=True)
class Layout:
    """The stochastic layers of an architecture and the maps between them.

    Attributes:
        widths: latent units per stochastic layer, ``(D_1, …, D_L)``, ``D_1`` next to the pixels.
        nonlinear: the maps between neighbouring layers (and the pixels) are the nonlinear block
            (two deterministic hidden layers, LeakyReLU(0.3)) instead of one linear layer.
    """

    widths: tuple[int, ...]
    nonlinear: bool

    @property
    def depth(self) -> int:
        return len(self.widths)


def parse_arch(arch: str, latent: int, pixels: int = PIXELS) -> Layout:
    """The :class:`Layout` of an architecture name (module docstring).

    ``linear`` / ``nonlinear`` have one stochastic layer of ``latent`` units; a name in the Concrete
    paper's notation fixes its own widths, listed from the top layer down (``200H-200H-784V``: two
    layers of 200 bits), and its ``V`` must be ``pixels``. One separator throughout.
    """
    if arch in ("linear", "nonlinear"):
        return Layout((latent,), arch == "nonlinear")
    if not ARCH_PATTERN.match(arch) or ("-" in arch and "~" in arch):
        raise ValueError(
            f"unknown architecture {arch!r}; choose from: {', '.join(ARCHITECTURES)} (or another "
            "name of that form: widths of H layers, top first, then the pixels' V, one of - or ~ between)"
        )
    *hidden, visible = re.split(r"[-~]", arch)
    if int(visible[:-1]) != pixels:
        raise ValueError(f"architecture {arch!r} ends in {visible}, but the images have {pixels} pixels")
    widths = tuple(int(part[:-1]) for part in reversed(hidden))
    if min(widths) < 1:
        raise ValueError(f"architecture {arch!r} has a layer of no units")
    return Layout(widths, "~" in arch)


class VAE(nn.Module):
    """VAE with ``latent`` binary latents, or ``latent`` categorical ones of ``classes`` classes, and a
    Bernoulli likelihood over ``pixels`` pixels; with one stochastic layer or a chain of several.

    With ``L`` binary layers ``b_1 … b_L`` (``b_1`` next to the pixels; module docstring)::

        q(b_1|x) q(b_2|b_1) … q(b_L|b_{L−1})        p(b_L) p(b_{L−1}|b_L) … p(x|b_1)

    ``encoder`` maps ``x`` to ``η_1`` and ``decoder`` ``b_1`` to the pixel logits, whatever ``L``;
    ``upper_encoders[l−2]`` maps ``b_{l−1}`` to ``η_l`` and ``upper_decoders[l−2]`` ``b_l`` to the
    logits of ``p(b_{l−1}|b_l)``; ``prior_logits`` are the top layer's.

    Args:
        latent: ``D`` bits (200 in the DisARM / double-CV experiments), or ``N`` categorical variables;
            for an architecture in the Concrete paper's notation, the width of ``b_1`` it names.
        classes: ``None`` for binary latents; ``C ≥ 2`` classes per categorical variable (one
            stochastic layer only).
        arch: ``"linear"``, ``"nonlinear"`` or a name such as ``"200H~200H~784V"`` (:func:`parse_arch`).
        pixels: input dimension ``P`` (784 for 28×28 images).
        hidden: width of the nonlinear block's hidden layers.
        learn_prior: learn the prior's logits (the DisARM protocol) instead of keeping them fixed at
            0 (``Bernoulli(½)``, the double-CV protocol; uniform classes).
        input_mean: ``[P]`` training-set mean image, subtracted from the encoder's input (the
            DisARM protocol's mean-centring); ``None`` feeds ``x`` unchanged.
        output_bias_mean: ``[P]`` mean image whose clipped logit initialises the decoder's output
            bias (DisARM protocol), so an untrained decoder already predicts the mean image.
        generator: random numbers for the weight initialisation (Glorot-uniform weights and zero
            biases, the Keras defaults of the reference code); ``None`` uses torch's global one.
        device, dtype: where and in what precision the parameters live.
    """

    def __init__(
        self,
        latent: int = LATENT_BITS,
        classes: int | None = None,
        arch: str = "linear",
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
        if latent < 1:
            raise ValueError(f"latent must be ≥ 1, got {latent}")
        if classes is not None and classes < 2:
            raise ValueError(f"classes must be ≥ 2, got {classes}")
        if hidden < 1 or pixels < 1:
            raise ValueError(f"pixels and hidden must be ≥ 1, got {pixels}, {hidden}")
        layout = parse_arch(arch, latent, pixels)
        if layout.widths[0] != latent:
            raise ValueError(
                f"architecture {arch!r} has {layout.widths[0]} units next to the pixels, not {latent}"
            )
        if layout.depth > 1 and classes is not None:
            raise ValueError(f"architecture {arch!r} has several stochastic layers: binary latents only")
        factory = {"device": device, "dtype": dtype}
        self.latent, self.classes, self.arch, self.pixels = latent, classes, arch, pixels
        self.layout = layout
        event = self.family.event_shape(latent, classes)  # one row of latents: (D,) or (N, C)
        encoder, decoder = networks(layout.nonlinear, pixels, hidden, math.prod(event), factory)
        if len(event) > 1:
            # The encoder's last layer emits N·C logits, viewed as [N, C]; the decoder flattens a
            # one-hot [N, C] back to its N·C inputs. Both views live inside the modules, so the
            # encoder maps x to logits of the estimators' shape (what encoder-gradient VJPs
            # differentiate).
            encoder = nn.Sequential(*encoder, nn.Unflatten(-1, event))
            decoder = nn.Sequential(nn.Flatten(-len(event)), *decoder)
        self.encoder, self.decoder = encoder, decoder
        upper = [
            networks(layout.nonlinear, below, hidden, width, factory)
            for below, width in itertools.pairwise(layout.widths)
        ]
        self.upper_encoders = nn.ModuleList(encoder for encoder, _ in upper)  # b_{l−1} → η_l
        self.upper_decoders = nn.ModuleList(decoder for _, decoder in upper)  # b_l → logits of b_{l−1}
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight, generator=generator)
                nn.init.zeros_(module.bias)
        if output_bias_mean is not None:
            mean = _check_image(output_bias_mean, pixels, "output_bias_mean").clamp(MEAN_CLIP, 1 - MEAN_CLIP)
            with torch.no_grad():
                self.decoder[-1].bias.copy_(torch.logit(mean))
        top = event if layout.depth == 1 else (layout.widths[-1],)
        prior_logits = torch.zeros(top, **factory)  # Bernoulli(½) or uniform classes
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
    def problem_shape(self) -> ProblemShape:
        """What an estimator of the first layer is built for: its latents, and the pixels as context."""
        return ProblemShape(self.latent, context=self.pixels, classes=self.classes)

    def layer_shape(self, layer: int) -> ProblemShape:
        """What an estimator of stochastic layer ``layer`` (1-based) is built for: its latents, and
        the layer's input (the pixels for the first, ``b_{l−1}`` above it) as context."""
        if layer == 1:
            return self.problem_shape
        return ProblemShape(self.layout.widths[layer - 1], context=self.layout.widths[layer - 2])

    @property
    def depth(self) -> int:
        """The number of stochastic layers ``L``."""
        return self.layout.depth

    @property
    def family(self) -> LatentFamily:
        return self.problem_shape.family

    @property
    def learn_prior(self) -> bool:
        return isinstance(self.prior_logits, nn.Parameter)

    # -- parameter groups (each gets its own optimiser in training) ------------------------------

    def encoder_parameters(self) -> list[nn.Parameter]:
        """The inference network's parameters (every layer's): trained by the estimators' ``g``."""
        return list(self.encoder.parameters()) + list(self.upper_encoders.parameters())

    def decoder_parameters(self) -> list[nn.Parameter]:
        return list(self.decoder.parameters()) + list(self.upper_decoders.parameters())

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
        """Posterior logits ``η_1``: ``x [B, P]`` → ``[B, *latent]``."""
        return self.encoder(self.encoder_input(x))

    def layer_logits(self, layer: int, below: Tensor) -> Tensor:
        """Posterior logits ``η_l`` of layer ``l ≥ 2``: ``b_{l−1} [..., D_{l−1}]`` → ``[..., D_l]``."""
        return self.upper_encoders[layer - 2](below)

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
        """``log p(b)`` at the (top layer's) prior logits: ``[..., *latent]`` → ``[...]``."""
        return self.family.log_prob(b, self.prior_logits)

    def prior_chain_logits(self, chain: list[Tensor]) -> list[Tensor]:
        """The logits of ``p(b_l | b_{l+1})`` for ``l = 1 … L−1``, then the prior's: the generative
        model's logits of each layer given the samples ``chain = [b_1, …, b_L]`` ``[..., D_l]``."""
        conditional = [decoder(above) for decoder, above in zip(self.upper_decoders, chain[1:], strict=True)]
        return [*conditional, self.prior_logits]

    def log_posterior(self, b: Tensor, logits: Tensor) -> Tensor:
        """``log q(b|x)``: b ``[..., B, *latent]``, η ``[B, *latent]`` → ``[..., B]``."""
        return self.family.log_prob(b, logits)

    def log_joint(self, x: Tensor, b: Tensor) -> Tensor:
        """``log p(x, b) = log p(x|b) + log p(b)`` of a one-layer model: x ``[B, P]``, b
        ``[..., B, *latent]`` → ``[..., B]``."""
        return self.log_likelihood(x, b) + self.log_prior(b)

    def objective(
        self,
        x: Tensor,
        logits: Tensor,
        generative_grads: bool = True,
        prior_temperature: float = PRIOR_TEMPERATURE,
        kl: str = "relaxed",
        *,
        generator: torch.Generator | None = None,
        upstream: tuple[Tensor, ...] = (),
        bound: str = "elbo",
    ) -> NegativeELBO:
        """The objective the estimators see for the minibatch ``x [B, P]`` at the logits ``[B, D_l]``
        of layer ``l = len(upstream) + 1`` (the arguments are :class:`NegativeELBO`'s)."""
        return NegativeELBO(
            self,
            x,
            logits,
            generative_grads,
            prior_temperature,
            kl,
            generator=generator,
            upstream=upstream,
            bound=bound,
        )

    def sample_posterior(self, logits: Tensor, samples: int, generator: torch.Generator) -> Tensor:
        """``samples`` independent draws of ``q(·|x)`` ``[S, B, *latent]`` at logits ``[B, *latent]``."""
        noise = uniform_noise((samples, *logits.shape), logits, generator)
        return self.family.sample(logits, noise)


def networks(
    nonlinear: bool, inputs: int, hidden: int, units: int, factory: dict
) -> tuple[nn.Sequential, nn.Sequential]:
    """The encoder ``inputs → units`` and decoder ``units → inputs`` between two neighbouring layers.

    One linear layer, or the nonlinear block ``inputs → hidden → hidden → units`` (LeakyReLU(0.3)
    between). ``units`` are the latent units: D bits, or N·C for N categorical variables of C
    classes; ``factory`` holds the parameters' ``device`` and ``dtype``.
    """
    if units < 1 or inputs < 1 or hidden < 1:
        raise ValueError(f"latent units, inputs and hidden must be ≥ 1, got {units}, {inputs}, {hidden}")
    widths = (inputs, hidden, hidden, units) if nonlinear else (inputs, units)
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


class NegativeELBO:
    """``f(b) = −[log p(x, b) − log q(b|x)]`` for one minibatch: ``[..., B, *latent] → [..., B]``.

    ``log q`` uses the logits *detached*, so ``f`` reaches the generative model (decoder, learned
    prior) but never the encoder. ``b`` may be real (relaxed samples): every term is linear in the
    latents except through the decoder, which is a function of real inputs. :meth:`relaxed` is the
    objective of the relaxed model (the module docstring), which the ``concrete`` estimator trains
    on; ``prior_temperature`` and ``kl`` are its settings and change nothing else.

    **Several stochastic layers.** The objective of layer ``l`` (``upstream = (b_1, …, b_{l−1})``,
    one sample ``[B, D_j]`` each, fixed) is a function of ``b_l`` alone: it completes the chain by
    sampling ``b_{l+1}, …, b_L`` from ``q`` given ``b_l`` with its ``generator`` (fresh noise at
    every call, so ``f`` is a random function of ``b_l`` whose mean is ``E[f | b_l]``), and returns
    ``−log w`` of the whole chain, ``log w = log p(x, b_1..b_L) − log q(b_1..b_L | x)``. The
    downstream layers are sampled by a hard threshold, so ``∇_{b_l} f`` holds them fixed; the
    downstream logits ``η_{>l}`` keep their graph to the encoder's parameters (an estimator that
    trains the whole chain from one estimate, ``EstimatorInfo.trains_chain``, differentiates them;
    no other training path does). :meth:`relaxed` relaxes layer ``l`` and every layer below it.

    :meth:`value_and_input_grad` computes ``∇_b f`` and the generative model's gradient in *one*
    backward pass and returns both (:class:`~dcvbench.objectives.Evaluation`), so an estimator that
    needs ``∇_b f`` (``rloo-dcv``, ``st-concrete``) costs one extra input-gradient matrix product
    over one that does not, instead of a second backward pass.

    Args:
        model: the VAE.
        x: ``[B, P]`` the minibatch.
        logits: ``[B, *latent]`` posterior logits ``η_l`` of the objective's layer; detached here.
        generative_grads: also differentiate ``value_and_input_grad``'s values with respect to the
            generative parameters (off for variance measurement, which only needs ``∇_b f``).
        prior_temperature: ``λp``, the temperature of the relaxed prior in ``relaxed``.
        kl: ``relaxed``'s latent term: ``"relaxed"`` (Concrete densities) or ``"analytic"`` (the
            discrete KL in closed form; one stochastic layer only).
        generator: the random numbers of the downstream layers' samples (models with several
            stochastic layers only).
        upstream: the fixed samples of the layers above this objective's, ``(b_1, …, b_{l−1})``.
        bound: what a multi-sample-capable estimator trains: ``"elbo"`` (the mean of ``f``) or
            ``"iwae"`` (the K-sample bound ``log (1/K) Σ_k exp(−f_k)``;
            :class:`~dcvbench.objectives.HasBound`).
    """

    def __init__(
        self,
        model: VAE,
        x: Tensor,
        logits: Tensor,
        generative_grads: bool = True,
        prior_temperature: float = PRIOR_TEMPERATURE,
        kl: str = "relaxed",
        *,
        generator: torch.Generator | None = None,
        upstream: tuple[Tensor, ...] = (),
        bound: str = "elbo",
    ):
        layer = len(upstream) + 1
        if layer > model.depth:
            raise ValueError(
                f"the model has {model.depth} stochastic layers; got {len(upstream)} upstream samples"
            )
        latent = tuple(model.prior_logits.shape) if model.depth == 1 else (model.layout.widths[layer - 1],)
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
        if bound not in BOUNDS:
            raise ValueError(f"unknown bound {bound!r}; choose from: {', '.join(BOUNDS)}")
        if model.depth > 1 and generator is None:
            raise ValueError(
                "a model with several stochastic layers needs a generator to sample the layers below"
            )
        if model.depth > 1 and kl == "analytic":
            raise ValueError(
                "the analytic KL is for one stochastic layer; a chain's relaxed ELBO uses kl='relaxed'"
            )
        self.model = model
        self.family = model.family
        self.x = x  # [B, P]
        self.logits = logits.detach()  # [B, *latent]
        self.generative_grads = generative_grads
        self.prior_temperature = prior_temperature
        self.kl = kl
        self.generator = generator
        self.upstream = tuple(sample.detach() for sample in upstream)  # [B, D_j] each
        self.layer = layer
        self.bound = bound
        self._posterior_natural = self.family.natural(self.logits)  # n(η): [B, *latent]
        self._posterior_normaliser = self.family.normaliser(self.logits)  # A(η): [B]
        if layer > 1:
            # The upstream layers are constants of this objective: their log q and the pixels'
            # likelihood (which depends on b_1 alone) are computed once, not per sample.
            with torch.no_grad():
                upstream_logits = [model.encode(x)] + [
                    model.layer_logits(j, self.upstream[j - 2]) for j in range(2, layer)
                ]
            self._upstream_log_q = sum(
                self.family.log_prob(b, eta) for b, eta in zip(self.upstream, upstream_logits, strict=True)
            )  # [B]
            self._upstream_log_likelihood = model.log_likelihood(x, self.upstream[0])  # [B]

    def __call__(self, b: Tensor) -> Tensor:
        """``f(b)``: ``b [..., B, *latent]`` → ``[..., B]``, attached to the generative model's graph."""
        if self.model.depth > 1:
            return -self._chain_log_weight(b)
        family, prior = self.family, self.model.prior_logits  # prior: [*latent]
        # log p(b) − log q(b|x) = ⟨b, n(a) − n(η)⟩ − A(a) + A(η): one product with b instead of two
        # (the prior's terms stay in the graph when the prior is learned).
        natural = family.natural(prior) - self._posterior_natural  # [B, *latent]
        latent = family.reduce(b * natural) + (self._posterior_normaliser - family.normaliser(prior))
        return -(self.model.log_likelihood(self.x, b) + latent)  # [..., B]

    def smooth(self, b: Tensor, temperature: float | Tensor) -> Tensor:
        """``f(b)`` with the layers below completed by Concrete samples at ``temperature`` instead
        of hard ones (:class:`~dcvbench.objectives.HasSmoothCompletion`): continuous in ``b``, for
        REBAR's and RELAX's control. ``f(b)`` itself when no layer lies below."""
        if self.layer == self.model.depth:
            return self(b)
        return -self._chain_log_weight(b, temperature)

    def _chain_log_weight(self, b: Tensor, temperature: float | Tensor | None = None) -> Tensor:
        """``log w`` of the chain completed below ``b [..., B, D_l]`` → ``[..., B]``: by hard
        samples, or (``temperature``) by relaxed points ``σ(y)`` at which ``log w`` is still defined
        (every latent term is linear in the latents)."""
        family, model = self.family, self.model
        lead = b.shape[:-2]
        chain = [sample.expand(*lead, *sample.shape) for sample in self.upstream] + [b]
        log_q = family.reduce(b * self._posterior_natural) - self._posterior_normaliser  # [..., B]
        for layer in range(self.layer + 1, model.depth + 1):
            eta = model.layer_logits(layer, chain[-1])  # [..., B, D]: graph to the encoder kept
            noise = uniform_noise(eta.shape, eta, self.generator)
            if temperature is None:
                sample = family.sample(eta, noise)
            else:
                sample = family.relaxed_point(family.relax(eta, noise, temperature))
            log_q = log_q + family.log_prob(sample, eta)
            chain.append(sample)
        log_prior = sum(
            family.log_prob(sample, logits)
            for sample, logits in zip(chain, model.prior_chain_logits(chain), strict=True)
        )  # [..., B]
        if self.layer == 1:
            return model.log_likelihood(self.x, b) + log_prior - log_q
        return self._upstream_log_likelihood + log_prior - (log_q + self._upstream_log_q)

    def relaxed(self, y: Tensor, logits: Tensor, temperature: float) -> Tensor:
        """The negative relaxed ELBO at ``z = relaxed_point(y)``: ``y [..., B, *latent]`` → ``[..., B]``.

        ``y`` are the relaxed latents in the family's base space, a sample of ``q_λ(·; η)`` with
        ``λ = temperature``; ``logits`` is ``η [B, *latent]`` *with* the caller's graph: unlike
        :meth:`__call__`, this objective is differentiated pathwise, so its dependence on ``η``
        through the posterior's density (or the KL) is part of its gradient along with that through
        ``y``. The result is attached to the generative model's graph (decoder and learned prior),
        which trains on it. With several stochastic layers, every layer below this one is relaxed
        too, ``y_j = (η_j(z_{j−1}) + L_j)/λ`` (reparameterised, so the graph runs through them).
        """
        if self.model.depth > 1:
            return self._relaxed_chain(y, logits, temperature)
        family, prior = self.family, self.model.prior_logits  # prior: [*latent]
        reconstruction = self.model.log_likelihood(self.x, family.relaxed_point(y))  # [..., B]
        if self.kl == "analytic":
            return family.kl(logits, prior) - reconstruction  # [B] + [..., B]
        log_prior = family.relaxed_log_prob(y, prior, self.prior_temperature)  # [..., B]
        log_posterior = family.relaxed_log_prob(y, logits, temperature)  # [..., B]
        return -(reconstruction + log_prior - log_posterior)

    def _relaxed_chain(self, y: Tensor, logits: Tensor, temperature: float) -> Tensor:
        family, model = self.family, self.model
        lead = y.shape[:-2]
        relaxed = [y]  # base-space samples of this layer and those below: [..., B, D_j]
        log_q = family.relaxed_log_prob(y, logits, temperature)  # [..., B]
        for layer in range(self.layer + 1, model.depth + 1):
            eta = model.layer_logits(layer, family.relaxed_point(relaxed[-1]))  # [..., B, D]
            below = family.relax(eta, uniform_noise(eta.shape, eta, self.generator), temperature)
            log_q = log_q + family.relaxed_log_prob(below, eta, temperature)
            relaxed.append(below)
        hard = [sample.expand(*lead, *sample.shape) for sample in self.upstream]
        points = hard + [family.relaxed_point(sample) for sample in relaxed]
        prior_logits = model.prior_chain_logits(points)
        # Upstream samples are discrete (their density given a relaxed parent is the Bernoulli's);
        # this layer and those below have Concrete densities at the prior's temperature.
        log_prior = sum(family.log_prob(b, a) for b, a in zip(hard, prior_logits, strict=False)) + sum(
            family.relaxed_log_prob(sample, a, self.prior_temperature)
            for sample, a in zip(relaxed, prior_logits[len(hard) :], strict=True)
        )
        if self.layer == 1:
            return -(model.log_likelihood(self.x, points[0]) + log_prior - log_q)
        return -(self._upstream_log_likelihood + log_prior - (log_q + self._upstream_log_q))

    @property
    def context(self) -> Tensor:
        """What an estimator's own networks may condition on (NVIL's baseline, RELAX's control net):
        the layer's input, ``x [B, P]`` for the first layer and ``b_{l−1} [B, D_{l−1}]`` above it."""
        return self.x if self.layer == 1 else self.upstream[-1]

    def generative_parameters(self) -> list[nn.Parameter]:
        """The generative model's parameters that ``f`` trains, in the order of
        :attr:`Evaluation.param_grads <dcvbench.objectives.Evaluation.param_grads>`: those of
        :meth:`VAE.generative_parameters` (decoder, then a learned prior) that require grad."""
        return [p for p in self.model.generative_parameters() if p.requires_grad]

    def downstream_parameters(self) -> list[nn.Parameter]:
        """The encoder parameters of the layers this objective samples itself (below its own):
        what an estimator that trains the whole chain from one estimate trains through ``f``."""
        return [p for p in self.model.upper_encoders[self.layer - 1 :].parameters() if p.requires_grad]

    def tile(self, times: int) -> NegativeELBO:
        """The same objective over ``times`` stacked copies of the minibatch (row ``r`` is row
        ``r mod B``): what independent draws at one snapshot need (``measure.variance``)."""
        return NegativeELBO(
            self.model,
            self.x.repeat(times, 1),
            self.logits.repeat(times, *[1] * (self.logits.dim() - 1)),
            self.generative_grads,
            self.prior_temperature,
            self.kl,
            generator=self.generator,
            upstream=tuple(sample.repeat(times, 1) for sample in self.upstream),
            bound=self.bound,
        )

    def value_and_input_grad(self, b: Tensor) -> Evaluation:
        """``f(b)`` ``[..., B]`` (detached) and ``∇_b f(b)`` ``[..., B, *latent]`` from one backward pass.

        With ``generative_grads``, the same pass gives ``∇ mean(f)`` for
        :meth:`generative_parameters`, returned as ``param_grads``: the gradients of *these* values,
        which a training step assigns instead of differentiating the values again.
        """
        params = self.generative_parameters() if self.generative_grads else None
        return one_backward_pass(self, b, params)


def one_backward_pass(f, b: Tensor, params: list[nn.Parameter] | None) -> Evaluation:
    """``f(b)`` ``[..., B]`` (detached), ``∇_b f`` and, unless ``params`` is ``None``, ``∇ mean(f)``
    for ``params``: one backward pass, the objectives' :meth:`value_and_input_grad` (VAE, structured
    prediction). A parameter or input ``f`` does not reach gets a zero gradient."""
    with torch.enable_grad():
        b = b.detach().requires_grad_(True)
        values = f(b)  # [..., B]
        # Seeded with 1/n, as values.mean().backward() is: the parameters get ∇ mean f exactly
        # as on the autograd path, and only the (smaller) input gradient needs rescaling.
        count = values.numel()
        seed = torch.full_like(values, 1.0 / count)
        grads = torch.autograd.grad(values, [b, *(params or [])], grad_outputs=seed, materialize_grads=True)
    param_grads = None if params is None else tuple(grads[1:])
    # ∇_b f_k: each value depends only on its own b.
    return Evaluation(values.detach(), grads[0] * count, param_grads)


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
    Written against :meth:`VAE.objective` and :meth:`VAE.sample_posterior` only: either latent type,
    and any number of stochastic layers (``b_s`` is then a whole chain of hard samples, the layers
    below the first drawn by the objective with ``generator``).
    """
    if samples < 1:
        raise ValueError(f"samples must be ≥ 1, got {samples}")
    logits = model.encode(x)  # [B, *latent]
    chunk = chunk or max(1, IWAE_CHUNK_ELEMENTS // max(1, x.shape[0] * model.pixels))
    f = model.objective(x, logits, generator=generator)
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
    return -model.objective(x, logits, generator=generator)(b).mean(0)


def _chunks(total: int, chunk: int) -> Iterator[int]:
    """Sizes of consecutive chunks of at most ``chunk`` that add up to ``total``."""
    for start in range(0, total, chunk):
        yield min(chunk, total - start)
