"""Binary Concrete relaxation: pathwise gradients through relaxed samples (biased).

Maddison, Mnih & Teh, *The Concrete Distribution: A Continuous Relaxation of Discrete Random
Variables*, ICLR 2017; Jang, Gu & Poole, *Categorical Reparameterization with Gumbel-Softmax*,
ICLR 2017.

With logistic noise ``L = log u − log(1 − u)`` and temperature ``λ``: ``z = σ((η + L)/λ)``, and
``z → b = 1[η + L > 0] ~ Bernoulli(σ(η))`` as ``λ → 0``. Since ``∂z/∂η = z(1 − z)/λ``, the pathwise
gradient of ``f(z)`` is ``∇_z f(z) ⊙ z(1 − z)/λ``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dcvbench.estimators.base import (
    Estimate,
    Estimator,
    EstimatorInfo,
    EstimatorSettings,
    Objective,
    ProblemShape,
    evaluate,
)
from dcvbench.estimators.registry import register
from dcvbench.estimators.sampling import logistic_from_uniform


class _RelaxedEstimator(Estimator):
    """Shared relaxation; subclasses choose where ``f`` and ``∇f`` are evaluated."""

    def __init__(self, temperature: float = 2.0 / 3.0):
        super().__init__()
        if not temperature > 0.0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    @classmethod
    def from_settings(cls, settings: EstimatorSettings, shape: ProblemShape) -> _RelaxedEstimator:
        return cls(temperature=settings.temperature)

    def relax(self, logits: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        """Relaxed ``z = σ((η + L)/λ)`` and its hard counterpart ``b = 1[η + L > 0]``, ``[K, B, D]``."""
        shifted = logits + logistic_from_uniform(noise)  # η + L: [K, B, D]
        return torch.sigmoid(shifted / self.temperature), (shifted > 0).to(logits.dtype)

    def pathwise(self, input_grad: Tensor, z: Tensor) -> Tensor:
        """``(1/K) Σ_k ∇f ⊙ ∂z_k/∂η``, with ``∂z/∂η = z(1 − z)/λ``: → ``[B, D]``."""
        return (input_grad * z * (1.0 - z)).mean(0) / self.temperature


@register(
    EstimatorInfo(
        name="concrete",
        summary="Binary Concrete relaxation: pathwise gradient of f at relaxed z (biased)",
        unbiased=False,
        needs_input_grad=True,
    )
)
class Concrete(_RelaxedEstimator):
    """``g = (1/K) Σ_k ∇_z f(z_k) ⊙ z_k(1 − z_k)/λ`` — the gradient of the relaxed objective."""

    def estimate(self, logits: Tensor, f: Objective, noise: Tensor) -> Estimate:
        z, _ = self.relax(logits, noise)  # [K, B, D]
        values, input_grad = evaluate(f, z, with_input_grad=True)  # [K, B], [K, B, D]
        return Estimate(grad=self.pathwise(input_grad, z), values=values)


@register(
    EstimatorInfo(
        name="st-concrete",
        summary="straight-through Concrete: f at hard b forward, relaxed z backward (biased)",
        unbiased=False,
        needs_input_grad=True,
    )
)
class StraightThroughConcrete(_RelaxedEstimator):
    """``g = (1/K) Σ_k ∇_b f(b_k) ⊙ z_k(1 − z_k)/λ`` with ``b_k = 1[z_k > ½]``."""

    def estimate(self, logits: Tensor, f: Objective, noise: Tensor) -> Estimate:
        z, b = self.relax(logits, noise)  # [K, B, D] each
        values, input_grad = evaluate(f, b, with_input_grad=True)  # [K, B], [K, B, D]
        return Estimate(grad=self.pathwise(input_grad, z), values=values)
