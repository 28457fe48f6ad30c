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

Sampling is kept apart from estimation: :meth:`Estimator.sample` draws the random numbers (uniform
noise), :meth:`Estimator.estimate` turns them into a gradient. Two estimators that draw noise of the
same shape from generators in the same state therefore see the same random numbers, which is what
paired ("grad basket") comparisons need.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import torch
from torch import Tensor, nn

from dcvbench.estimators.sampling import uniform_noise


class Objective(Protocol):
    """A function of binary samples, ``[K, B, D] -> [K, B]``, differentiable in its input."""

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
    """

    grad: Tensor
    values: Tensor
    stats: dict[str, Tensor] = field(default_factory=dict)
    control: Tensor | None = None


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
    baseline_decay: float = 0.9  # reinforce-ema: weight of the old baseline per update


@dataclass(frozen=True)
class EstimatorInfo:
    """What the registry knows about an estimator (the source of the CLI's choices)."""

    name: str
    summary: str
    unbiased: bool
    needs_input_grad: bool
    min_k: int = 1
    even_k: bool = False
    extra_evals: int = 0  # evaluations of f beyond the K samples (MuProp evaluates f at θ)
    needs_exact_mean: bool = False  # only for objectives with a closed-form expectation (toy)

    def evals(self, k: int) -> int:
        """Evaluations of ``f`` per estimate with ``k`` samples."""
        return k + self.extra_evals

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
    """Base class: an estimator of ``∇_η E_q[f(b)]`` for factorised Bernoulli ``q``.

    Subclasses set ``info`` (through :func:`dcvbench.estimators.registry.register`) and implement
    :meth:`sample` and :meth:`estimate`. Learnable state (a control-variate weight, a baseline)
    lives in the module itself and is changed only by :meth:`update`, which a training loop calls
    *after* it has used the estimate, so every estimate stays unbiased.
    """

    info: ClassVar[EstimatorInfo]

    @classmethod
    def from_settings(cls, settings: EstimatorSettings) -> Estimator:
        """Build from the shared settings record (default: the estimator has no options)."""
        return cls()

    def sample(self, logits: Tensor, k: int, generator: torch.Generator) -> Tensor:
        """Draw the uniform noise this estimator needs, ``[K, B, D]`` unless stated otherwise."""
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


# ---------------------------------------------------------------------------------------------
# Helpers shared by the estimators.


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
