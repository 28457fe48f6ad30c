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
- :class:`HasExpectation`: ``E_q[f]`` in closed form (the toys);
- :class:`HasBound`: which bound a multi-sample-capable estimator trains (the ELBO, or the K-sample
  bound ``L_K``);
- :class:`HasSmoothCompletion`: ``f`` with the layers it samples itself relaxed, a continuous
  function of ``b`` for a control variate (REBAR, RELAX);
- :class:`HasImportanceWeight`: whether ``f = −log w`` carries ``−log q(b; η)`` (a VAE's) or not
  (structured prediction, which samples the model's own prior).
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


@runtime_checkable
class HasBound(Protocol):
    """An objective that says what a multi-sample-capable estimator (``concrete``) trains with it.

    ``bound``: ``"elbo"``, the mean of ``f`` over the K samples (the paper's "m = 1"), or ``"iwae"``,
    the K-sample bound ``L_K = log (1/K) Σ_k exp(−f_k)`` (Burda et al. 2016; "m = K").
    """

    @property
    def bound(self) -> str: ...


@runtime_checkable
class HasImportanceWeight(Protocol):
    """``f = −log w`` of an importance weight; ``proposal_in_weight`` says whether ``log w`` contains
    ``−log q(b; η)`` (a VAE's, whose direct gradient in ``η`` VIMCO adds itself), or not (structured
    prediction samples the model's own prior, ``w = p(y | b)``: no direct term). An objective without
    this protocol is taken to carry the proposal (the VAE's)."""

    @property
    def proposal_in_weight(self) -> bool: ...


@runtime_checkable
class HasSmoothCompletion(Protocol):
    """An objective that samples layers of its own below ``b`` (a model with several stochastic
    layers), and can complete the chain with *relaxed* samples at ``temperature`` instead of hard
    ones: ``smooth(b, temperature)`` ``[..., B, *event]`` → ``[..., B]``, continuous in ``b``.

    A hard completion jumps where a lower sample flips; a control variate built from ``f`` at
    relaxed points (REBAR, RELAX) must be differentiable in ``b`` for its reparameterised
    correction to cancel its score-function part, so it uses this instead. Without layers below,
    ``smooth(b, ·)`` is ``f(b)``.
    """

    def smooth(self, b: Tensor, temperature: float | Tensor) -> Tensor: ...
