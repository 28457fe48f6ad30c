"""Structured prediction: the lower half of a binarised digit from its upper half, through binary units.

The Concrete paper's second task (Maddison, Mnih & Teh, ICLR 2017, §5.2; after Raiko et al. 2015 and
MuProp, Gu et al. 2016). The input is the upper half ``x_u`` of a 28×28 image (the first 392 of its
784 pixels, row-major: rows 0–13), the output its lower half ``x_l`` (the last 392), and between
them ``L`` stochastic layers of binary units, each sampled from the one before::

    h_1 ~ p(h_1 | x_u),     h_l ~ p(h_l | h_{l−1}),     x_l ~ Bernoulli(σ(out(h_L)))

Architectures are named as in the paper, read from the input to the output: ``392V-240H-392V`` (one
layer of 240 bits, linear maps), ``392V-240H-240H-392V`` (two), and with ``~`` instead of ``-`` the
nonlinear block between neighbours: two deterministic layers of 200 units with LeakyReLU(0.3), the
VAE's (:func:`dcvbench.problems.vae.networks`; the paper used tanh units there, dcvbench keeps one
nonlinear block for every architecture). Both ``V`` are halves of the image: ``P//2`` in and
``P − P//2`` out for ``P`` pixels.

The model is trained on the multi-sample objective, with ``m`` samples from the model itself::

    L_m = E log (1/m) Σ_i p(x_l | h_i),        h_i = (h_{1,i}, …, h_{L,i}) ~ p(h | x_u)

— the paper's "m = 1" (``E_h[log p(x_l | h)]``) and "m = K". This is the VAE's importance-weighted
bound with the model's own prior as the proposal: the weight ``p(x_l, h | x_u) / q(h | x_u)`` is
``p(x_l | h_L)``, its density ratio being 1. So the estimators see the VAE's contract unchanged:
``f = −log w = −log p(x_l | h_L)``, the bound ``"elbo"`` trains the mean of ``f`` and ``"iwae"``
``L_K`` (:class:`~dcvbench.objectives.HasBound`); ``w`` has no ``−log q`` term
(``proposal_in_weight = False``, :class:`~dcvbench.objectives.HasImportanceWeight`). In the VAE's
vocabulary (which :func:`dcvbench.training.train_step` and the variance measurements speak), the
networks that produce the units' logits are the "encoder" (every layer's: they are prior and
proposal at once) and the output network ``h_L → x_l`` is the "decoder"; there is no prior of its
own to learn.

The held-out score is the test NLL of the lower half with ``S`` samples, ``−L_S``
(:func:`test_nll`): an upper bound on ``−log p(x_l | x_u)`` in expectation that tightens as ``S``
grows (Burda et al. 2016).
"""

from __future__ import annotations

import itertools
import re

import torch
from torch import Tensor, nn

from dcvbench.latent import BINARY, LatentFamily
from dcvbench.latent.noise import uniform_noise
from dcvbench.objectives import Evaluation, ProblemShape
from dcvbench.problems.vae import (
    BOUNDS,
    HIDDEN,
    PIXELS,
    PRIOR_TEMPERATURE,
    Layout,
    iwae_bound,
    networks,
    one_backward_pass,
)

# The Concrete paper's names (§5.2), read from the input half to the output half: "-" a linear map
# between neighbours, "~" the nonlinear block.
ARCHITECTURES = ("392V-240H-392V", "392V-240H-240H-392V", "392V~240H~392V", "392V~240H~240H~392V")
ARCH_PATTERN = re.compile(r"^\d+V(?:[-~]\d+H)+[-~]\d+V$")


def parse_arch(arch: str, pixels: int = PIXELS) -> Layout:
    """The :class:`~dcvbench.problems.vae.Layout` of an architecture name (module docstring).

    ``widths`` lists the stochastic layers from the input on (``D_1`` next to ``x_u``); the first
    ``V`` must be ``pixels // 2`` and the last ``pixels − pixels // 2``; one separator throughout.
    """
    if not ARCH_PATTERN.match(arch):
        raise ValueError(
            f"unknown architecture {arch!r}; choose from: {', '.join(ARCHITECTURES)} (or another name "
            "of that form: the input half's V, widths of H layers from the input on, the output half's V)"
        )
    if "-" in arch and "~" in arch:
        raise ValueError(f"architecture {arch!r} mixes '-' and '~'; use one separator throughout")
    first, *hidden, last = re.split(r"[-~]", arch)
    upper, lower = pixels // 2, pixels - pixels // 2
    if int(first[:-1]) != upper:
        raise ValueError(
            f"architecture {arch!r} starts with {first}, but the upper half of {pixels}-pixel images "
            f"has {upper} pixels"
        )
    if int(last[:-1]) != lower:
        raise ValueError(
            f"architecture {arch!r} ends with {last}, but the lower half of {pixels}-pixel images "
            f"has {lower} pixels"
        )
    widths = tuple(int(part[:-1]) for part in hidden)
    if min(widths) < 1:
        raise ValueError(f"architecture {arch!r} has a layer of no units")
    return Layout(widths, "~" in arch)


class Predictor(nn.Module):
    """``p(x_l | x_u) = Σ_h p(h_1 | x_u) p(h_2 | h_1) … p(x_l | h_L)`` with binary units ``h_l``.

    ``encoder`` maps ``x_u`` to the logits ``η_1`` of ``h_1``, ``upper_encoders[l−2]`` maps
    ``h_{l−1}`` to ``η_l``, and ``decoder`` maps ``h_L`` to the logits of ``x_l`` (the VAE's names,
    module docstring). Every method that takes images takes the *whole* image ``x [B, P]`` and
    splits it itself.

    Args:
        arch: a name such as ``"392V~240H~240H~392V"`` (:func:`parse_arch`).
        pixels: ``P``, the whole image's pixels (784 for 28×28 images): ``P//2`` in, the rest out.
        hidden: width of the nonlinear block's hidden layers.
        generator: random numbers for the weight initialisation (Glorot-uniform weights and zero
            biases, as the VAE's); ``None`` uses torch's global one.
        device, dtype: where and in what precision the parameters live.
    """

    def __init__(
        self,
        arch: str,
        pixels: int = PIXELS,
        hidden: int = HIDDEN,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        if pixels < 2 or hidden < 1:
            raise ValueError(f"pixels must be ≥ 2 and hidden ≥ 1, got {pixels}, {hidden}")
        self.arch, self.pixels = arch, pixels
        self.layout = parse_arch(arch, pixels)
        self.inputs, self.outputs = pixels // 2, pixels - pixels // 2  # sizes of x_u and x_l
        factory = {"device": device, "dtype": dtype}
        widths, nonlinear = self.layout.widths, self.layout.nonlinear
        # networks(…) builds a map and its mirror image; each place here needs one direction only.
        self.encoder = networks(nonlinear, self.inputs, hidden, widths[0], factory)[0]  # x_u → η_1
        self.upper_encoders = nn.ModuleList(
            networks(nonlinear, below, hidden, width, factory)[0]  # h_{l−1} → η_l
            for below, width in itertools.pairwise(widths)
        )
        self.decoder = networks(nonlinear, self.outputs, hidden, widths[-1], factory)[1]  # h_L → logits
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight, generator=generator)
                nn.init.zeros_(module.bias)

    @property
    def depth(self) -> int:
        """The number of stochastic layers ``L``."""
        return self.layout.depth

    @property
    def family(self) -> LatentFamily:
        return BINARY

    @property
    def problem_shape(self) -> ProblemShape:
        """What an estimator of the first layer is built for: its units, and ``x_u`` as context."""
        return ProblemShape(self.layout.widths[0], context=self.inputs)

    def layer_shape(self, layer: int) -> ProblemShape:
        """What an estimator of stochastic layer ``layer`` (1-based) is built for: its units, and the
        layer's input (``x_u`` for the first, ``h_{l−1}`` above it) as context."""
        if layer == 1:
            return self.problem_shape
        return ProblemShape(self.layout.widths[layer - 1], context=self.layout.widths[layer - 2])

    # -- parameter groups (each gets its own optimiser in training) ------------------------------

    def encoder_parameters(self) -> list[nn.Parameter]:
        """The networks of the units' logits, every layer's: trained by the estimators' ``g``."""
        return list(self.encoder.parameters()) + list(self.upper_encoders.parameters())

    def decoder_parameters(self) -> list[nn.Parameter]:
        """The output network ``h_L → x_l``: trained by the pathwise gradient of the bound."""
        return list(self.decoder.parameters())

    def prior_parameters(self) -> list[nn.Parameter]:
        """``[]``: the units' distribution is the encoder's, there is no separate prior."""
        return []

    def generative_parameters(self) -> list[nn.Parameter]:
        return self.decoder_parameters()

    # -- the model ------------------------------------------------------------------------------

    def encoder_input(self, x: Tensor) -> Tensor:
        """``x_u``, what the encoder sees: the upper half of ``x [..., P]`` → ``[..., P//2]``."""
        return x[..., : self.inputs]

    def encode(self, x: Tensor) -> Tensor:
        """The logits ``η_1`` of ``p(h_1 | x_u)``: the whole image ``x [B, P]`` → ``[B, D_1]``."""
        return self.encoder(self.encoder_input(x))

    def layer_logits(self, layer: int, below: Tensor) -> Tensor:
        """The logits ``η_l`` of ``p(h_l | h_{l−1})``, ``l ≥ 2``: ``[..., D_{l−1}]`` → ``[..., D_l]``."""
        return self.upper_encoders[layer - 2](below)

    def log_likelihood(self, x: Tensor, h: Tensor) -> Tensor:
        """``log p(x_l | h_L) = Σ_p x_p l_p − softplus(l_p)``, ``l = decoder(h_L)``.

        x ``[B, P]`` (the whole image), h ``[..., B, D_L]`` (discrete or relaxed) → ``[..., B]``.
        """
        pixel_logits = self.decoder(h)  # [..., B, P − P//2]
        target = x[..., self.inputs :].expand_as(pixel_logits)
        # −BCE-with-logits is exactly the Bernoulli log-probability, in a fused and stable kernel.
        nll = nn.functional.binary_cross_entropy_with_logits(pixel_logits, target, reduction="none")
        return -nll.sum(-1)

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
    ) -> NegativeLogLikelihood:
        """The objective the estimators see for the images ``x [B, P]`` at the logits ``[B, D_l]`` of
        layer ``l = len(upstream) + 1`` (the arguments are :class:`NegativeLogLikelihood`'s)."""
        return NegativeLogLikelihood(
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
        """``samples`` independent draws of ``h_1 ~ p(h_1 | x_u)`` at its logits ``[B, D_1]``,
        ``[S, B, D_1]`` (the proposal, hence the VAE's name)."""
        noise = uniform_noise((samples, *logits.shape), logits, generator)
        return self.family.sample(logits, noise)


# ---------------------------------------------------------------------------------------------
# The objective the estimators see.


class NegativeLogLikelihood:
    """``f(h_l) = −log p(x_l | h_L)`` for one minibatch, the chain completed below ``h_l``.

    The objective of layer ``l`` (``upstream = (h_1, …, h_{l−1})``, one fixed sample ``[B, D_j]``
    each) is a function of ``h_l [..., B, D_l]`` alone: it samples ``h_{l+1}, …, h_L`` from the model
    given ``h_l`` with its ``generator`` (fresh noise at every call, so ``f`` is a random function
    of ``h_l`` whose mean is ``E[f | h_l]``) and returns ``−log p(x_l | h_L)``, attached to the
    output network's graph. ``h_l`` may be real (the relaxed point).

    There is no density term: the proposal is the model's own distribution of the units, so
    ``log p(h | ·) − log q(h | ·) = 0`` (module docstring). ``prior_temperature`` and ``kl``, the
    VAE's settings of those terms, are accepted for :func:`~dcvbench.training.train_step`'s sake and
    change nothing. For each layer ``j`` *below* its own the objective adds the term
    ``log p(h_j | h_{j−1}) − [log p(h_j | h_{j−1})]_detached``, of value zero, whose gradient is the
    score of the sampled ``h_j`` with respect to the network of ``η_j`` — with the sign of the
    ``+log q(h_j | ·)`` in the VAE's ``f = −log w``, so that an estimator that trains the whole chain
    from one estimate (VIMCO's ``chain_surrogate``, :mod:`dcvbench.estimators.vimco`), weighting each
    sample's ``f`` by its learning signal, trains those networks by the score function as it does a
    VAE's. The term's logits see ``h_l`` detached: ``∇_{h_l} f`` holds the samples below fixed, as
    the VAE's does, and ``f`` then does not depend on ``h_l`` at all (``∇_{h_l} f = 0`` for
    ``l < L``).

    :meth:`value_and_input_grad` computes ``∇_{h_l} f`` and the output network's gradient in one
    backward pass (:class:`~dcvbench.objectives.Evaluation`), as the VAE's objective does.

    Args:
        model: the predictor.
        x: ``[B, P]`` the whole images.
        logits: ``[B, D_l]`` the logits ``η_l`` of the objective's layer; detached here.
        generative_grads: also differentiate ``value_and_input_grad``'s values with respect to the
            output network (off for variance measurement, which only needs ``∇_b f``).
        prior_temperature, kl: ignored (above).
        generator: the random numbers of the layers below (models with several layers only).
        upstream: the fixed samples of the layers above this objective's, ``(h_1, …, h_{l−1})``.
        bound: what a multi-sample-capable estimator trains: ``"elbo"`` (the mean of ``f``) or
            ``"iwae"`` (``L_K = log (1/K) Σ_k exp(−f_k)``; :class:`~dcvbench.objectives.HasBound`).
    """

    # w = p(x_l | h): no −log q(h; η) in the weight (objectives.HasImportanceWeight).
    proposal_in_weight = False

    def __init__(
        self,
        model: Predictor,
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
        width = model.layout.widths[layer - 1]
        rows = x.shape[:-1]
        if x.shape[-1:] != (model.pixels,) or logits.shape[1:] != (width,) or rows != logits.shape[:1]:
            raise ValueError(
                f"x must be [B, {model.pixels}] and logits [B, {width}] with the same B, "
                f"got {tuple(x.shape)} and {tuple(logits.shape)}"
            )
        if bound not in BOUNDS:
            raise ValueError(f"unknown bound {bound!r}; choose from: {', '.join(BOUNDS)}")
        if layer < model.depth and generator is None:
            raise ValueError("the layers below this objective's need a generator to be sampled")
        self.model = model
        self.family = model.family
        self.x = x  # [B, P]
        self.logits = logits.detach()  # [B, D_l]
        self.generative_grads = generative_grads
        self.generator = generator
        self.upstream = tuple(sample.detach() for sample in upstream)  # [B, D_j] each
        self.layer = layer
        self.bound = bound

    def __call__(self, b: Tensor) -> Tensor:
        """``f(h_l)``: ``b [..., B, D_l]`` → ``[..., B]``, attached to the output network's graph (and,
        through the zero-valued score terms, to the networks of the layers below; class docstring)."""
        family, model = self.family, self.model
        h = b if self.layer == model.depth else b.detach()  # [..., B, D]: the chain's last sample
        score = torch.zeros((), dtype=b.dtype, device=b.device)
        for layer in range(self.layer + 1, model.depth + 1):
            eta = model.layer_logits(layer, h)  # [..., B, D_layer]: graph to this layer's network
            h = family.sample(eta, uniform_noise(eta.shape, eta, self.generator))
            log_p = family.log_prob(h, eta)  # [..., B]
            score = score + (log_p - log_p.detach())
        return score - model.log_likelihood(self.x, h)

    def relaxed(self, y: Tensor, logits: Tensor, temperature: float) -> Tensor:
        """``−log p(x_l | z_L)`` with this layer and every one below relaxed: ``y [..., B, D_l]`` →
        ``[..., B]``.

        ``y`` is this layer's Binary Concrete sample in logit space (``y = (η_l + L)/λ``, with the
        caller's graph to ``η_l``), ``z_l = σ(y)``; below it ``z_j = σ((η_j(z_{j−1}) + L_j)/λ)`` with
        logistic ``L_j`` from the generator, reparameterised, so the graph runs through every layer.
        The relaxed model keeps prior = proposal, so no density term appears (their ratio is 1),
        and ``logits`` (the protocol's, :class:`~dcvbench.objectives.HasRelaxation`) is not needed:
        ``η_l`` enters through ``y`` alone.
        """
        return self.smooth(self.family.relaxed_point(y), temperature)

    def smooth(self, b: Tensor, temperature: float | Tensor) -> Tensor:
        """``−log p(x_l | z_L)`` from ``b [..., B, D_l]`` (hard or relaxed) with every layer below
        relaxed at ``temperature`` (:class:`~dcvbench.objectives.HasSmoothCompletion`): continuous in
        ``b``, for REBAR's and RELAX's control; ``f(b)`` itself at the last layer."""
        family, model = self.family, self.model
        z = b  # [..., B, D_l]
        for layer in range(self.layer + 1, model.depth + 1):
            eta = model.layer_logits(layer, z)  # [..., B, D_layer]
            noise = uniform_noise(eta.shape, eta, self.generator)
            z = family.relaxed_point(family.relax(eta, noise, temperature))
        return -model.log_likelihood(self.x, z)

    @property
    def context(self) -> Tensor:
        """What an estimator's own networks may condition on (NVIL's baseline): the layer's input,
        ``x_u [B, P//2]`` for the first layer and ``h_{l−1} [B, D_{l−1}]`` above it."""
        return self.model.encoder_input(self.x) if self.layer == 1 else self.upstream[-1]

    def generative_parameters(self) -> list[nn.Parameter]:
        """The output network's parameters that require grad, in the order of
        :attr:`Evaluation.param_grads <dcvbench.objectives.Evaluation.param_grads>`."""
        return [p for p in self.model.generative_parameters() if p.requires_grad]

    def downstream_parameters(self) -> list[nn.Parameter]:
        """The networks of the layers this objective samples itself (below its own): what an
        estimator that trains the whole chain from one estimate trains through ``f``."""
        return [p for p in self.model.upper_encoders[self.layer - 1 :].parameters() if p.requires_grad]

    def tile(self, times: int) -> NegativeLogLikelihood:
        """The same objective over ``times`` stacked copies of the minibatch (row ``r`` is row
        ``r mod B``): what independent draws at one snapshot need (``measure.variance``)."""
        return NegativeLogLikelihood(
            self.model,
            self.x.repeat(times, 1),
            self.logits.repeat(times, 1),
            self.generative_grads,
            generator=self.generator,
            upstream=tuple(sample.repeat(times, 1) for sample in self.upstream),
            bound=self.bound,
        )

    def value_and_input_grad(self, b: Tensor) -> Evaluation:
        """``f(h_l)`` ``[..., B]`` (detached) and ``∇_{h_l} f`` ``[..., B, D_l]`` from one backward pass.

        With ``generative_grads``, the same pass gives ``∇ mean(f)`` for
        :meth:`generative_parameters`, returned as ``param_grads``. Below the last layer ``f`` does
        not depend on ``h_l`` with the samples below held fixed (class docstring): its gradient is 0.
        """
        params = self.generative_parameters() if self.generative_grads else None
        return one_backward_pass(self, b, params)


def test_nll(
    model: Predictor, x: Tensor, generator: torch.Generator, samples: int = 100, chunk: int | None = None
) -> Tensor:
    """The test NLL of the lower halves with ``S = samples``, ``−log (1/S) Σ_s p(x_l | h_s)`` per row ``[B]``.

    ``h_s ~ p(h | x_u)`` whole chains, independent. It is ``−L_S`` (module docstring), the VAE's
    importance-weighted bound with ``w = p(x_l | h)``, so it is computed by
    :func:`~dcvbench.problems.vae.iwae_bound`, which needs of a model only its objective and its
    samples (chunked, ``chunk`` samples at a time, with a running log-sum-exp; no graph). In
    expectation an upper bound on ``−log p(x_l | x_u)`` that decreases as ``S`` grows.
    """
    return -iwae_bound(model, x, generator, samples, chunk)


# pytest collects test_* functions from the modules a test imports by name: this one is not a test.
test_nll.__test__ = False
