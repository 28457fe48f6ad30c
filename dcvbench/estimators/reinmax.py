"""ReinMax (``reinmax``; biased): straight-through made second-order accurate by Heun's method."""

from __future__ import annotations

from torch import Tensor

from dcvbench.estimators.base import Estimate, EstimatorInfo, Stat
from dcvbench.estimators.evaluation import evaluate
from dcvbench.estimators.registry import register
from dcvbench.estimators.relaxed import RelaxedEstimator
from dcvbench.objectives import Objective


@register(
    EstimatorInfo(
        name="reinmax",
        summary="ReinMax: straight-through corrected by Heun's method, second-order accurate (biased; τ ≥ 1)",
        unbiased=False,
        needs_input_grad=True,
        families=("binary", "categorical"),
        order=111,  # after st and st-concrete, the straight-through estimators it improves on
        stats=(Stat("temperature"),),
        relaxation="straight-through",
    )
)
class ReinMax(RelaxedEstimator):
    """``g = (1/K) Σ_k [2·J(π₁,k)ᵀ g_k − ½·J(π)ᵀ g_k]``, ``π₁,k = ½(p(η/τ) + b_k)``, ``b_k ~ q_η``.

    Liu, Dong, Liu, Yu & Gao, *Bridging Discrete and Backpropagation: Straight-Through and Beyond*,
    NeurIPS 2023 (DESIGN §3.7). ``g_k = ∇_b f(b_k)`` at the hard sample, ``J(p) = diag(p) − ppᵀ`` the
    softmax Jacobian at probabilities ``p`` per categorical variable, ``p(1 − p)`` for a bit
    (:meth:`~dcvbench.latent.LatentFamily.covariance_product`); ``p(·)`` is ``softmax`` or ``σ``.
    Straight-through is the forward Euler step of ``f(b) − f(b')`` along the path between two
    outcomes; ReinMax takes Heun's step instead: the Jacobian at the midpoint ``π₁`` of the
    tempered probabilities and the sample, doubled, less half the Jacobian at ``π``.

    Where ``τ`` enters, as the authors' code (``microsoft/ReinMax``, ``ReinMaxCore.backward``)
    confirms: only in the midpoint, ``π₁ = ½(softmax(η/τ) + D)``. The sample is drawn from the
    untempered ``π = softmax(η)``, and the second term uses that untempered ``π``. Their code
    refuses ``τ < 1`` ("ReinMax prefers to set the temperature larger or equal to 1"); so does this
    class (``min_temperature``), and its default is 1. Bits are the two-class case with logits
    ``[η, 0]``: ``softmax([η, 0]/τ)₁ = σ(η/τ)`` and ``(J(p) [g, 0])₁ = p(1 − p)·g``, so the same two
    covariance products serve both families. One evaluation of ``f`` and of ``∇_b f`` per sample.
    """

    default_temperature = 1.0
    min_temperature = 1.0

    def estimate(self, logits: Tensor, f: Objective, noise: Tensor) -> Estimate:
        probs = self.family.probs(logits)  # π: [B, *event]
        b = self.family.sample(logits, noise)  # [K, B, *event]
        evaluation = evaluate(f, b, with_input_grad=True)  # values [K, B], input_grad [K, B, *event]
        input_grad = evaluation.input_grad  # g_k: [K, B, *event]
        midpoint = 0.5 * (self.family.probs(logits / self.temperature) + b)  # π₁: [K, B, *event]
        heun = self.family.covariance_product(midpoint, input_grad).mean(0)  # [B, *event]
        # J(π) is the same for every sample: apply it once, to the mean input gradient.
        euler = self.family.covariance_product(probs, input_grad.mean(0))  # [B, *event]
        grad = 2.0 * heun - 0.5 * euler
        return Estimate(
            grad=grad,
            values=evaluation.values,
            param_grads=evaluation.param_grads,
            stats={"temperature": self.temperature_stat(grad)},
        )
