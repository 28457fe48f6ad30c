"""Binary Concrete relaxation: pathwise gradients through relaxed samples (biased).

Maddison, Mnih & Teh, *The Concrete Distribution: A Continuous Relaxation of Discrete Random
Variables*, ICLR 2017; Jang, Gu & Poole, *Categorical Reparameterization with Gumbel-Softmax*,
ICLR 2017.

With logistic noise ``L = log u − log(1 − u)`` and temperature ``λ``, the relaxed sample in logit
space is ``y = (η + L)/λ`` and in probability space ``z = σ(y)``; ``z → b = 1[η + L > 0] ~
Bernoulli(σ(η))`` as ``λ → 0``.

- ``concrete`` trains the *relaxed* model: its values are the relaxed objective ``f̃(y; η)`` at the
  K samples (:func:`relaxed_objective`) and ``g = ∇_η (1/K) Σ_k f̃(y_k; η)``, by autograd through
  both ``y = (η + L)/λ`` and any direct dependence of ``f̃`` on ``η``. For an objective of ``z``
  alone (the toy's, ``f̃ = f(σ(y))``) that is ``(1/K) Σ_k ∇_z f(z_k) ⊙ z_k(1 − z_k)/λ``; for the
  VAE, ``f̃`` is the negative relaxed ELBO with Binary Concrete log-densities
  (:meth:`dcvbench.problems.vae.NegativeELBO.relaxed`).
- ``st-concrete`` (straight-through) evaluates the discrete ``f`` at the hard ``b`` and
  back-propagates as if through ``z``: ``g = (1/K) Σ_k ∇_b f(b_k) ⊙ z_k(1 − z_k)/λ``.

Both are biased for the discrete objective. The temperature ``λ`` is an attribute a training loop
may change between steps (annealing).
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


def relaxed_objective(f: Objective, y: Tensor, logits: Tensor, temperature: float) -> Tensor:
    """The objective of the relaxed model at relaxed samples ``y = (η + L)/λ``: ``[K, B, D] → [K, B]``.

    An objective whose relaxation is more than ``f`` at ``z = σ(y)`` offers
    ``relaxed(y, logits, temperature)`` — the VAE's, whose latent log-probabilities become the
    Binary Concrete densities of ``y`` under the prior and under ``q_λ(·; η)``. Any other (the toy's)
    is evaluated at ``σ(y)``. ``logits`` is ``η`` ``[B, D]`` with the caller's graph, so a relaxed
    objective that depends on ``η`` directly contributes that path to the pathwise gradient too.
    """
    relaxed = getattr(f, "relaxed", None)
    if relaxed is not None:
        return relaxed(y, logits, temperature)
    return f(torch.sigmoid(y))


class RelaxedEstimator(Estimator):
    """Shared relaxation; subclasses choose the objective they evaluate and differentiate."""

    def __init__(self, temperature: float = 2.0 / 3.0):
        super().__init__()
        if not temperature > 0.0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    @classmethod
    def from_settings(cls, settings: EstimatorSettings, shape: ProblemShape) -> RelaxedEstimator:
        return cls(temperature=settings.temperature)

    def relaxed_logits(self, logits: Tensor, noise: Tensor) -> Tensor:
        """``y = (η + L)/λ`` ``[K, B, D]``: relaxed samples in logit space; ``z = σ(y)``, ``b = 1[y > 0]``."""
        return (logits + logistic_from_uniform(noise)) / self.temperature


@register(
    EstimatorInfo(
        name="concrete",
        summary="Binary Concrete relaxation: pathwise gradient of the relaxed objective (biased)",
        unbiased=False,
        needs_input_grad=True,
    )
)
class Concrete(RelaxedEstimator):
    """``g = ∇_η (1/K) Σ_k f̃(y_k; η)``, ``y_k = (η + L_k)/λ``; values ``f̃(y_k; η)`` ``[K, B]``.

    ``f̃`` is :func:`relaxed_objective`. The values keep their graph, so a model trains its own
    parameters (the VAE's decoder and learned prior) on the same relaxed objective.
    """

    def estimate(self, logits: Tensor, f: Objective, noise: Tensor) -> Estimate:
        with torch.enable_grad():
            eta = logits.detach().requires_grad_(True)  # [B, D]: g is the gradient at this leaf
            y = self.relaxed_logits(eta, noise)  # [K, B, D]
            values = relaxed_objective(f, y, eta, self.temperature)  # [K, B]
            # Rows are independent, so the gradient of the sum over rows is each row's own;
            # retain_graph: the model still back-propagates these values into its parameters.
            (grad,) = torch.autograd.grad(values.mean(0).sum(), eta, retain_graph=True)
        return Estimate(grad=grad, values=values)


@register(
    EstimatorInfo(
        name="st-concrete",
        summary="straight-through Concrete: f at hard b forward, relaxed z backward (biased)",
        unbiased=False,
        needs_input_grad=True,
    )
)
class StraightThroughConcrete(RelaxedEstimator):
    """``g = (1/K) Σ_k ∇_b f(b_k) ⊙ z_k(1 − z_k)/λ`` with ``b_k = 1[z_k > ½]``; values ``f(b_k)``."""

    def estimate(self, logits: Tensor, f: Objective, noise: Tensor) -> Estimate:
        y = self.relaxed_logits(logits, noise)  # [K, B, D]
        z, b = torch.sigmoid(y), (y > 0).to(logits.dtype)  # [K, B, D] each
        values, input_grad = evaluate(f, b, with_input_grad=True)  # [K, B], [K, B, D]
        # ∂z/∂η = z(1 − z)/λ: the backward pass of the relaxed sample, applied to ∇_b f at b.
        return Estimate(grad=(input_grad * z * (1.0 - z)).mean(0) / self.temperature, values=values)
