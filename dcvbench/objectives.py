"""What an estimator may ask of an objective ``f``, as typed protocols; and what it is built for.

A bottom layer, beside :mod:`dcvbench.latent`: estimators read these protocols, problems (toys,
VAEs) satisfy them structurally, and neither imports the other.

Every objective maps latent samples ``b [K, B, *event]`` to values ``[K, B]``
(:class:`Objective`). The rest is optional, and an estimator checks for it with ``isinstance``:

- :class:`HasInputGrad`: ``f`` and ``∇_b f`` from one pass the objective controls (the VAE shares it
  with its decoder's gradients, and returns those too: :class:`Evaluation`);
- :class:`HasRelaxation`: the objective of the relaxed model (Concrete densities in place of the
  discrete log-probabilities);
- :class:`HasContext`: a per-row input ``[B, W]`` an estimator's own networks may condition on;
- :class:`HasExpectation`: ``E_q[f]`` in closed form (the toys).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import Tensor

from dcvbench.latent import LatentFamily, family_named


@dataclass(frozen=True)
class ProblemShape:
    """The sizes an estimator is built for: its latents, and the sizes its own networks need.

    Attributes:
        latent: latent variables per row: ``D`` bits (logits ``[B, D]``), or ``N`` categorical
            variables (logits ``[B, N, C]``).
        context: width of the per-row input the estimator may condition on (the VAE's pixels,
            :class:`HasContext`); 0 when there is none (toy).
        classes: ``None`` for binary latents; ``C ≥ 2`` for categorical ones.
    """

    latent: int
    context: int = 0
    classes: int | None = None

    def __post_init__(self):
        if self.classes is not None and self.classes < 2:
            raise ValueError(f"categorical latents need at least 2 classes, got {self.classes}")

    @property
    def latent_type(self) -> str:
        """``"binary"`` or ``"categorical"``."""
        return "binary" if self.classes is None else "categorical"

    @property
    def family(self) -> LatentFamily:
        return family_named(self.latent_type)

    @property
    def event(self) -> tuple[int, ...]:
        """One row's latents: ``(D,)`` or ``(N, C)``."""
        return self.family.event_shape(self.latent, self.classes)


@dataclass(frozen=True)
class Evaluation:
    """``f`` at samples, with what one pass computed beside it.

    Attributes:
        values: ``[K, B]``.
        input_grad: ``∇_b f`` ``[K, B, *event]``, or ``None`` when not asked for.
        param_grads: the gradients of ``mean(values)`` with respect to the objective's own trainable
            parameters (a VAE's decoder and learned prior), in the order the objective lists them,
            when its pass computed them; ``None`` otherwise (then ``values`` carry their graph and a
            training step differentiates them).
    """

    values: Tensor
    input_grad: Tensor | None = None
    param_grads: tuple[Tensor, ...] | None = None


@runtime_checkable
class Objective(Protocol):
    """``f``: samples ``[K, B, *event]`` → values ``[K, B]``, differentiable in its input."""

    def __call__(self, b: Tensor) -> Tensor: ...


@runtime_checkable
class HasInputGrad(Protocol):
    """An objective that computes ``f`` and ``∇_b f`` in one pass of its own."""

    def value_and_input_grad(self, b: Tensor) -> Evaluation: ...


@runtime_checkable
class HasRelaxation(Protocol):
    """An objective whose relaxed model is more than ``f`` at the relaxed point.

    ``relaxed(y, logits, temperature)``: the relaxed model's objective at base-space samples ``y``
    (logit space for bits, log-simplex for classes) ``[K, B, *event]`` → ``[K, B]``; ``logits``
    carry the caller's graph, so a density term's dependence on them is part of the pathwise gradient.
    """

    def relaxed(self, y: Tensor, logits: Tensor, temperature: float) -> Tensor: ...


@runtime_checkable
class HasContext(Protocol):
    """An objective with a per-row input ``context [B, W]`` (the VAE's images)."""

    @property
    def context(self) -> Tensor: ...


@runtime_checkable
class HasExpectation(Protocol):
    """An objective with a closed-form ``E_q[f]``: ``expectation(probs [B, *event]) → [B]``."""

    def expectation(self, probs: Tensor) -> Tensor: ...
