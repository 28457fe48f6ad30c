"""Plain straight-through (``st``; biased): the hard sample forward, the identity backward."""

from __future__ import annotations

from torch import Tensor

from dcvbench.estimators.base import Estimate, Estimator, EstimatorInfo
from dcvbench.estimators.evaluation import evaluate
from dcvbench.estimators.registry import register
from dcvbench.objectives import Objective


@register(
    EstimatorInfo(
        name="st",
        summary="straight-through: f at the hard b forward, backward as if b were its mean (biased)",
        unbiased=False,
        needs_input_grad=True,
        families=("binary", "categorical"),
        order=105,  # beside the other straight-through estimator, st-concrete
    )
)
class StraightThrough(Estimator):
    """``g = (∂p/∂η)ᵀ (1/K) Σ_k ∇_b f(b_k)``, ``b_k ~ q`` independent, ``p`` the probabilities.

    Bengio, Léonard & Courville, *Estimating or Propagating Gradients Through Stochastic Neurons
    for Conditional Computation*, 2013. The forward pass uses the discrete sample; the backward pass
    treats the sampling step as the identity, as if ``b`` were ``p = E[b]``: the gradient of
    ``f(b + p − stop_gradient(p))``. ``∂p/∂η`` is ``θ(1 − θ)`` for bits and the softmax Jacobian
    ``diag(π) − ππᵀ`` per categorical variable
    (:meth:`~dcvbench.latent.LatentFamily.covariance_product`). One evaluation of ``f`` and of
    ``∇_b f`` per sample; biased unless ``f`` is linear in ``b``, where ``g`` is exact.
    """

    def estimate(self, logits: Tensor, f: Objective, noise: Tensor) -> Estimate:
        probs = self.family.probs(logits)  # [B, *event]
        b = self.family.sample(logits, noise)  # [K, B, *event]
        evaluation = evaluate(f, b, with_input_grad=True)  # values [K, B], input_grad [K, B, *event]
        # ∂p/∂η is linear and the same for every sample: apply it once, to the mean input gradient.
        grad = self.family.covariance_product(probs, evaluation.input_grad.mean(0))  # [B, *event]
        return Estimate(grad=grad, values=evaluation.values, param_grads=evaluation.param_grads)
