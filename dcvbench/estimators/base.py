"""The shared estimator interface: what an estimator is, what it returns, what the registry knows.

Every estimator answers one question: given logits ``η`` of a factorised distribution ``q_η`` of
discrete latents (a :class:`~dcvbench.latent.LatentFamily`: bits or one-hot classes) and a
black-box objective ``f``, what is an estimate of ``∇_η E_q[f(b)]``?

Shapes used throughout the package (``event`` is one row's latents, ``(D,)`` or ``(N, C)``):

- ``logits``: ``[B, *event]`` — B independent rows (data points in a VAE, variance draws in a study);
- samples ``b``: ``[K, B, *event]`` — K samples per row;
- ``f(b)``: ``[K, B]`` — one value per sample and row; ``f`` must be differentiable in its input
  (``b`` is treated as a real vector) for estimators that need ``∇_b f``;
- the estimate ``g``: ``[B, *event]``, the shape of ``logits``.

Sampling is kept apart from estimation: :meth:`Estimator.sample` draws the random numbers (uniform
noise), :meth:`Estimator.estimate` turns them into a gradient. Two estimators that draw noise of the
same shape from generators in the same state therefore see the same random numbers, which is what
paired ("grad basket") comparisons need.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from dcvbench.estimators.options import Option
from dcvbench.latent import BINARY, LatentFamily
from dcvbench.latent.noise import uniform_noise
from dcvbench.objectives import Objective, ProblemShape


class EstimatorError(ValueError):
    """An estimator was asked for something it cannot do (e.g. a K it does not support)."""


@dataclass
class Estimate:
    """The result of one gradient estimate.

    Attributes:
        grad: ``[B, *event]`` estimate of ``∇_η E_q[f]`` (no autograd graph attached).
        values: ``[E, B]`` the objective at the estimator's samples (E per row: K, or 2 per
            antithetic pair). Evaluations at other points (MuProp's at θ) are not included.
        param_grads: the objective's parameter gradients from the pass that evaluated ``values``
            (:attr:`dcvbench.objectives.Evaluation.param_grads`: the VAE's shared backward pass),
            which a training step assigns; ``None``: it differentiates :attr:`surrogate` (or
            ``mean(values)``, which then carry ``f``'s graph).
        stats: 0-d tensors worth logging, as :attr:`EstimatorInfo.stats` declares them; kept as
            tensors so that a training step never waits on the device to read them.
        control: for estimators of the form ``g = g₀ + α·h``, the direction ``h`` ``[B, *event]``, so
            that ``α`` can be tuned to minimise ``‖g‖²``; ``None`` otherwise.
        surrogate: a 0-d tensor whose gradient trains ``f``'s own parameters (the generative model)
            when that is not the gradient of ``mean(values)`` — VIMCO trains the decoder on the
            K-sample bound, through self-normalised importance weights. ``None``: ``mean(values)``.
        chain_surrogate: a 0-d tensor whose gradient trains the encoder layers that the objective
            sampled itself, below the estimated layer, for an estimator that trains a whole chain of
            stochastic layers from one estimate (:attr:`EstimatorInfo.trains_chain`); ``None``: the
            same tensor as trains the generative model (``surrogate``, or ``mean(values)``).
        learning: a 0-d loss whose gradient with respect to the estimator's own parameters trains
            them (RELAX: ``‖g‖²``; NVIL: the baseline's squared error), applied by
            :meth:`Estimator.update` after the estimate was used; ``None`` when nothing is learned
            from it (also whenever the estimator is in eval mode, see :func:`measuring`).
    """

    grad: Tensor
    values: Tensor
    param_grads: tuple[Tensor, ...] | None = None
    stats: dict[str, Tensor] = field(default_factory=dict)
    control: Tensor | None = None
    surrogate: Tensor | None = None
    chain_surrogate: Tensor | None = None
    learning: Tensor | None = None


@dataclass(frozen=True)
class Stat:
    """One value an estimate reports in :attr:`Estimate.stats`, a trace column of the toy and VAE jobs.

    ``reduce``: ``"last"`` logs the row step's value; ``"mean"`` the mean over the steps since the
    previous row (VIMCO's training bound).
    """

    name: str
    reduce: Literal["last", "mean"] = "last"


@dataclass(frozen=True)
class EstimatorInfo:
    """What the registry knows about an estimator (the source of the CLI's choices and listings)."""

    name: str
    summary: str
    unbiased: bool
    needs_input_grad: bool
    min_k: int = 1
    even_k: bool = False
    evals_per_sample: int = 1  # evaluations of f per sample (RELAX: f(b), c(z), c(z̃))
    extra_evals: int = 0  # evaluations of f beyond those of the K samples (MuProp evaluates f at θ)
    # Evaluates f at every one-variable change of each sample too (IndeCateR's local expectations):
    # D more per sample for bits, N(C−1) for classes (LatentFamily.neighbour_count).
    neighbour_evals: bool = False
    # The problems it runs on ("user": the user's own objective, dcvbench.compare): exact-baseline
    # needs the toy's closed-form E_q[f]; VIMCO needs f to be a negative log importance weight, which
    # the VAE's and structured prediction's objectives are. On "user", what `requires` says.
    problems: tuple[str, ...] = ("toy", "vae", "predict", "user")
    # The optional protocols of dcvbench.objectives it cannot do without, beyond f: a user's objective
    # must implement them (missing_hooks); the built-in problems in `problems` suit it as they are.
    requires: tuple[type, ...] = ()
    families: tuple[str, ...] = ("binary",)  # the latent types it is registered for
    order: int = 1000  # place in listings, ascending (ties by name); undeclared: after the rest
    stats: tuple[Stat, ...] = ()
    # "relaxed": trains the relaxed objective (concrete); "straight-through": discrete forward,
    # relaxed backward (st-concrete). Such an estimator has a settable ``temperature`` (annealing).
    relaxation: Literal["relaxed", "straight-through"] | None = None
    # The bounds it trains on a VAE or structured prediction ("elbo": the mean of f; "iwae": the
    # K-sample bound L_K, objectives.HasBound): VIMCO trains L_K only, concrete either.
    bounds: tuple[str, ...] = ("elbo",)
    # With several stochastic layers: False, one estimate per layer, with the layers above fixed at
    # one sample and those below sampled by the objective (the DisARM / RODEO multi-layer code);
    # True, one estimate of the first layer whose values (or chain_surrogate) carry the graph
    # through every layer below it, which trains them too (concrete relaxes the whole chain; VIMCO
    # trains L_K of whole chains).
    trains_chain: bool = False

    def __post_init__(self):
        if self.neighbour_evals and (self.evals_per_sample != 1 or self.extra_evals):
            raise ValueError(f"{self.name}: neighbour_evals counts one evaluation per sample and no others")

    def missing_hooks(self, objective: object) -> tuple[type, ...]:
        """The protocols of :attr:`requires` that ``objective`` does not implement; empty when the
        estimator can run on it."""
        return tuple(protocol for protocol in self.requires if not isinstance(objective, protocol))

    def evals(self, k: int, shape: ProblemShape | None = None) -> int:
        """Evaluations of ``f`` per estimate with ``k`` samples, for latents of ``shape`` (needed
        only by an estimator whose cost depends on them: :attr:`neighbour_evals`)."""
        per_sample = self.evals_per_sample
        if self.neighbour_evals:
            if shape is None:
                raise ValueError(f"{self.name}'s evaluations depend on the latent shape: pass it")
            per_sample += shape.family.neighbour_count(shape.event)
        return k * per_sample + self.extra_evals

    def evals_rule(self) -> str:
        """Evaluations per estimate in words: ``K``, ``3K``, ``K+1``, ``K(1+M)``."""
        if self.neighbour_evals:
            return "K(1+M)"  # M one-variable changes per sample: D bit flips, or N(C−1)
        rule = "K" if self.evals_per_sample == 1 else f"{self.evals_per_sample}K"
        return rule + (f"+{self.extra_evals}" if self.extra_evals else "")

    def k_for_budget(self, budget: int, shape: ProblemShape) -> int | None:
        """The largest allowed K whose estimate costs at most ``budget`` evaluations of ``f`` on
        latents of ``shape``, or ``None`` when even the smallest allowed K costs more."""
        fixed = self.evals(0, shape)  # evaluations that do not scale with K
        per_sample = self.evals(1, shape) - fixed
        k = (budget - fixed) // per_sample
        if self.even_k and k % 2:
            k -= 1
        return k if k >= self.min_k else None

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
    """Base class: an estimator of ``∇_η E_q[f(b)]`` for the latents of one :class:`LatentFamily`.

    Subclasses set ``info`` (through :func:`dcvbench.estimators.registry.register`), declare their
    hyperparameters in ``options`` (constructor arguments of the same names) and implement
    :meth:`estimate` (and :meth:`sample` when they need other noise than ``K`` uniforms per latent).
    Learnable state (a control-variate weight, a baseline) lives in the module itself and is changed
    only by :meth:`update`, which a training loop calls *after* it has used the estimate, so every
    estimate stays unbiased.
    """

    info: ClassVar[EstimatorInfo]
    options: ClassVar[tuple[Option, ...]] = ()

    def __init__(self, family: LatentFamily = BINARY):
        super().__init__()
        self.family = family

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], shape: ProblemShape) -> Estimator:
        """Build for a problem of ``shape`` with this class's options read from ``settings``."""
        return cls(family=shape.family, **{option.name: option.read(settings) for option in cls.options})

    def sample(self, logits: Tensor, k: int, generator: torch.Generator) -> Tensor:
        """Draw the uniform noise this estimator needs, ``[K, *logits.shape]`` unless stated otherwise."""
        return uniform_noise((k, *logits.shape), logits, generator)

    def noise_per_sample(self) -> int:
        """Uniforms :meth:`sample` draws per sample and logit (1 unless stated otherwise): what sizes
        the chunks of a variance measurement's draws, so that its memory stays bounded."""
        return 1

    def estimate(self, logits: Tensor, f: Objective, noise: Tensor) -> Estimate:
        raise NotImplementedError

    def forward(self, logits: Tensor, f: Objective, k: int, generator: torch.Generator) -> Estimate:
        """Sample and estimate: ``logits [B, *event]`` → :class:`Estimate` with ``grad [B, *event]``."""
        self.info.check_k(k)
        logits = logits.detach()
        return self.estimate(logits, f, self.sample(logits, k, generator))

    def update(self, estimate: Estimate) -> None:
        """Learn from an estimate that has already been used (default: nothing to learn)."""

    def state_stats(self) -> dict[str, float]:
        """The current values of the ``"last"`` stats, without an estimate (a trace's step-0 row)."""
        return {}


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
