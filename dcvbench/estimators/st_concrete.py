"""Straight-through Concrete (``st-concrete``; biased): discrete ``f`` forward, relaxed sample backward."""

from __future__ import annotations

from torch import Tensor

from dcvbench.estimators.base import Estimate, EstimatorInfo, Stat
from dcvbench.estimators.evaluation import evaluate
from dcvbench.estimators.registry import register
from dcvbench.estimators.relaxed import RelaxedEstimator
from dcvbench.objectives import Objective


@register(
    EstimatorInfo(
        name="st-concrete",
        summary="straight-through Concrete, Gumbel-softmax: f at hard b forward, relaxed z backward (biased)",
        unbiased=False,
        needs_input_grad=True,
        families=("binary", "categorical"),
        order=110,
        stats=(Stat("temperature"),),
        relaxation="straight-through",
    )
)
class StraightThroughConcrete(RelaxedEstimator):
    """``g = (1/K) Σ_k (∂z_k/∂η)ᵀ ∇_b f(b_k)``, ``b_k = harden(y_k)``, ``z_k`` the relaxed sample.

    Jang, Gu & Poole 2017 (straight-through Gumbel-softmax); Maddison, Mnih & Teh 2017. The gradient
    of ``f(b + z − stop_gradient(z))`` in closed form: ``∂z/∂η = Cov_z/λ``, ``z(1 − z)/λ`` for bits
    and ``(diag z − zzᵀ)/λ`` per categorical variable
    (:meth:`~dcvbench.latent.LatentFamily.covariance_product` at ``z``). Values ``f(b_k)``. Biased.
    """

    def estimate(self, logits: Tensor, f: Objective, noise: Tensor) -> Estimate:
        y = self.family.relax(logits, noise, self.temperature)  # [K, B, *event]
        z, b = self.family.relaxed_point(y), self.family.harden(y)  # [K, B, *event] each
        evaluation = evaluate(f, b, with_input_grad=True)  # values [K, B], input_grad [K, B, *event]
        # The relaxed sample's backward pass applied to ∇_b f at the hard b.
        grad = self.family.covariance_product(z, evaluation.input_grad).mean(0) / self.temperature
        return Estimate(
            grad=grad,
            values=evaluation.values,
            param_grads=evaluation.param_grads,
            stats={"temperature": self.temperature_stat(grad)},
        )
