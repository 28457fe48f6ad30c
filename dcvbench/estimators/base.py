"""The shared estimator interface.

Every estimator answers one question: given logits ``η`` of a factorised Bernoulli
``q(b) = Π_d σ(η_d)^{b_d} (1 − σ(η_d))^{1 − b_d}`` and a black-box objective ``f``, what is an
estimate of ``∇_η E_q[f(b)]``?

Shapes used throughout the package:

- ``logits``: ``[B, D]`` — B independent rows (data points in a VAE, variance draws in a study),
  D binary latents per row.
- samples ``b``: ``[K, B, D]`` — K samples per row.
- ``f(b)``: ``[K, B]`` — one value per sample and row; ``f`` must be differentiable in its input
  (``b`` is treated as a real vector) for estimators that need ``∇_b f``.
- the estimate ``g``: ``[B, D]``, the shape of ``logits``.

Categorical latents (:mod:`dcvbench.estimators.categorical`, DESIGN §3.6) add a class dimension:
logits ``[B, N, C]`` of N independent categorical variables with C classes each, one-hot samples
``[K, B, N, C]``, ``f: [K, B, N, C] → [K, B]`` and estimates ``[B, N, C]``; the interface is the same.

Sampling is kept apart from estimation: :meth:`Estimator.sample` draws the random numbers (uniform
noise), :meth:`Estimator.estimate` turns them into a gradient. Two estimators that draw noise of the
same shape from generators in the same state therefore see the same random numbers, which is what
paired ("grad basket") comparisons need.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import torch
from torch import Tensor, nn

from dcvbench.estimators.sampling import uniform_noise


class Objective(Protocol):
    """A function of binary samples, ``[K, B, D] -> [K, B]``, differentiable in its input.

    Optional attributes an objective may offer (looked up with ``getattr``):

    - ``context``: ``[B, C]`` the per-row input the estimator's own networks may condition on
      (the VAE's images ``x``; see :func:`context_of`). Toy objectives have none.
    - ``value_and_input_grad(b)``: values and ``∇_b f`` from one pass it controls (see
      :func:`evaluate`).
    - ``relaxed(y, logits, temperature)``: the objective of its relaxed model at relaxed samples
      in logit space (see :func:`dcvbench.estimators.concrete.relaxed_objective`), or for
      categorical latents on the log-simplex
      (:func:`dcvbench.estimators.categorical.concrete.relaxed_objective`).
    """

    def __call__(self, b: Tensor) -> Tensor: ...


class EstimatorError(ValueError):
    """An estimator was asked for something it cannot do (e.g. a K it does not support)."""


@dataclass
class Estimate:
    """The result of one gradient estimate.

    Attributes:
        grad: ``[B, D]`` estimate of ``∇_η E_q[f]`` (no autograd graph attached).
        values: ``[E, B]`` the objective at the estimator's samples (E per row: K, or 2 per
            antithetic pair), attached to ``f``'s graph so a model can train ``f``'s own
            parameters on them — unless ``f`` computed them with its own ``value_and_input_grad``,
            which then owns that training (the VAE's shared backward pass). Evaluations at other
            points (MuProp's at θ) are not included.
        stats: 0-d tensors worth logging (e.g. the control-variate weight ``alpha``); kept as
            tensors so that a training step never waits on the device to read them.
        control: for estimators of the form ``g = g₀ + α·h``, the direction ``h`` ``[B, D]``, so
            that ``α`` can be tuned to minimise ``‖g‖²``; ``None`` otherwise.
        surrogate: a 0-d tensor whose gradient trains ``f``'s own parameters (the generative model)
            when that is not the gradient of ``mean(values)`` — VIMCO trains the decoder on the
            K-sample bound, through self-normalised importance weights. ``None``: ``mean(values)``.
        learning: a 0-d loss whose gradient with respect to the estimator's own parameters trains
            them (RELAX: ``‖g‖²``; NVIL: the baseline's squared error), applied by
            :meth:`Estimator.update` after the estimate was used; ``None`` when nothing is learned
            from it (also whenever the estimator is in eval mode, see :func:`measuring`).
    """

    grad: Tensor
    values: Tensor
    stats: dict[str, Tensor] = field(default_factory=dict)
    control: Tensor | None = None
    surrogate: Tensor | None = None
    learning: Tensor | None = None


@dataclass(frozen=True)
class EstimatorSettings:
    """Options of every estimator, as one flat record (one field per CLI option).

    Each estimator class picks the fields it uses in :meth:`Estimator.from_settings`, so a job can
    build any registered estimator from the same settings without knowing its name.
    """

    alpha: float | None = None  # rloo-dcv: fixed α; None learns it
    alpha_learning: str = "sgd"  # rloo-dcv: "sgd" (the paper) or "optimal" (running α*)
    alpha_optimizer: str = "adam"  # rloo-dcv: optimiser of α (VAE reference: Adam 1e-3)
    alpha_lr: float = 1e-3
    temperature: float = 2.0 / 3.0  # concrete, st-concrete: the Concrete paper's posterior default
    baseline_decay: float = 0.9  # reinforce-ema, nvil: weight of the old running averages per update
    control_lr: float = 1e-3  # relax, rebar, nvil: Adam learning rate of their own learned parts


LATENT_TYPES = ("binary", "categorical")


@dataclass(frozen=True)
class ProblemShape:
    """The sizes an estimator is built for: its latent type, and the sizes its own networks need
    (RELAX's control net, NVIL's baseline).

    Attributes:
        latent: the latent variables per row: ``D`` bits (logits ``[B, D]``), or ``N`` categorical
            variables (logits ``[B, N, C]``).
        context: width of the per-row input the estimator may condition on (the VAE's pixels,
            :attr:`Objective.context`); 0 when there is none (toy).
        classes: ``None`` for binary latents; ``C ≥ 2`` for categorical ones. Binary latents are
            not a two-class categorical here: they keep one logit per bit, and their own estimators.
    """

    latent: int
    context: int = 0
    classes: int | None = None

    def __post_init__(self):
        if self.classes is not None and self.classes < 2:
            raise EstimatorError(f"categorical latents need at least 2 classes, got {self.classes}")

    @property
    def latent_type(self) -> str:
        """``"binary"`` or ``"categorical"`` (one of :data:`LATENT_TYPES`): which registry applies."""
        return "binary" if self.classes is None else "categorical"


@dataclass(frozen=True)
class EstimatorInfo:
    """What the registry knows about an estimator (the source of the CLI's choices)."""

    name: str
    summary: str
    unbiased: bool
    needs_input_grad: bool
    min_k: int = 1
    even_k: bool = False
    evals_per_sample: int = 1  # evaluations of f per sample (RELAX: f(b), c(z), c(z̃))
    extra_evals: int = 0  # evaluations of f beyond those of the K samples (MuProp evaluates f at θ)
    # The problems it runs on: exact-baseline needs the toy's closed-form E_q[f]; VIMCO needs f to be
    # a negative log importance weight, which only the VAE's objective is.
    problems: tuple[str, ...] = ("toy", "vae")

    def evals(self, k: int) -> int:
        """Evaluations of ``f`` per estimate with ``k`` samples."""
        return k * self.evals_per_sample + self.extra_evals

    def evals_rule(self) -> str:
        """Evaluations per estimate in words: ``K``, ``3K``, ``K+1``."""
        rule = "K" if self.evals_per_sample == 1 else f"{self.evals_per_sample}K"
        return rule + (f"+{self.extra_evals}" if self.extra_evals else "")

    def k_rule(self) -> str:
        """The constraint on K, in words (for tables and error messages)."""
        rule = f"K ≥ {self.min_k}"
        return rule + ", even" if self.even_k else rule

    def check_k(self, k: int) -> None:
        """Raise :class:`EstimatorError` naming the bad K and the rule, if ``k`` is not allowed."""
        if k < self.min_k:
            raise EstimatorError(f"K must be ≥ {self.min_k} for {self.name}, got {k}")
        if self.even_k and k % 2:
            raise EstimatorError(f"K must be even for {self.name}, got {k}")


class Estimator(nn.Module):
    """Base class: an estimator of ``∇_η E_q[f(b)]`` for factorised Bernoulli (or categorical) ``q``.

    Subclasses set ``info`` (through :func:`dcvbench.estimators.registry.register`) and implement
    :meth:`sample` and :meth:`estimate`. Learnable state (a control-variate weight, a baseline)
    lives in the module itself and is changed only by :meth:`update`, which a training loop calls
    *after* it has used the estimate, so every estimate stays unbiased.
    """

    info: ClassVar[EstimatorInfo]

    @classmethod
    def from_settings(cls, settings: EstimatorSettings, shape: ProblemShape) -> Estimator:
        """Build from the shared settings record for a problem of ``shape`` (default: no options)."""
        return cls()

    def sample(self, logits: Tensor, k: int, generator: torch.Generator) -> Tensor:
        """Draw the uniform noise this estimator needs, ``[K, *logits.shape]`` unless stated otherwise."""
        return uniform_noise((k, *logits.shape), logits, generator)

    def estimate(self, logits: Tensor, f: Objective, noise: Tensor) -> Estimate:
        raise NotImplementedError

    def forward(self, logits: Tensor, f: Objective, k: int, generator: torch.Generator) -> Estimate:
        """Sample and estimate: ``logits [B, D]`` → :class:`Estimate` with ``grad [B, D]``."""
        self.info.check_k(k)
        logits = logits.detach()
        return self.estimate(logits, f, self.sample(logits, k, generator))

    def update(self, estimate: Estimate) -> None:
        """Learn from an estimate that has already been used (default: nothing to learn)."""


@contextmanager
def measuring(estimator: Estimator) -> Iterator[Estimator]:
    """The estimator in eval mode for the duration: estimates for measurement, not for training.

    In eval mode an estimator builds no :attr:`Estimate.learning` loss (RELAX would otherwise build
    a second-order graph per draw); its current learned state is used as it is.
    """
    was_training = estimator.training
    estimator.eval()
    try:
        yield estimator
    finally:
        estimator.train(was_training)


# ---------------------------------------------------------------------------------------------
# Helpers shared by the estimators.


def context_of(f: Objective) -> Tensor | None:
    """The objective's per-row input ``[B, C]`` (``Objective.context``), or ``None`` if it has none."""
    return getattr(f, "context", None)


def evaluate(f: Objective, b: Tensor, with_input_grad: bool) -> tuple[Tensor, Tensor | None]:
    """Evaluate ``f`` at ``b [K, B, D]``; optionally also ``∇_b f`` ``[K, B, D]``.

    An objective may provide ``value_and_input_grad(b)`` to compute both in a single pass that it
    controls (the VAE does, to share one backward pass with its decoder gradients); otherwise the
    input gradient comes from autograd, keeping ``f``'s graph for the caller.
    """
    if not with_input_grad:
        return f(b), None
    custom = getattr(f, "value_and_input_grad", None)
    if custom is not None:
        return custom(b)
    with torch.enable_grad():
        b = b.detach().requires_grad_(True)
        values = f(b)  # [K, B]
        # Keep the graph: a model may still train its own parameters on these values.
        (grad,) = torch.autograd.grad(values.sum(), b, retain_graph=True)
    return values, grad


def leave_one_out_centre(x: Tensor) -> Tensor:
    """``x_k − mean_{j≠k} x_j`` along dim 0 (K ≥ 2), vectorised: ``K/(K−1) · (x_k − mean x)``."""
    k = x.shape[0]
    return (x - x.mean(0, keepdim=True)) * (k / (k - 1))
