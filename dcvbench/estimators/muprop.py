"""MuProp: a first-order Taylor baseline around the mean, with its analytic correction.

Gu, Levine, Sutskever & Mnih, *MuProp: Unbiased Backpropagation for Stochastic Neural Networks*,
ICLR 2016.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dcvbench.estimators.base import Estimate, Estimator, EstimatorInfo, Objective, evaluate
from dcvbench.estimators.registry import register
from dcvbench.estimators.reinforce import score_function_gradient
from dcvbench.estimators.sampling import bernoulli_from_uniform


@register(
    EstimatorInfo(
        name="muprop",
        summary="score function with a Taylor baseline at the mean θ, plus its analytic term",
        unbiased=True,
        needs_input_grad=True,
        extra_evals=1,
    )
)
class MuProp(Estimator):
    """``g = (1/K) Σ_k (f_k − f(θ) − ∇f(θ)ᵀ(b_k − θ))(b_k − θ) + ∇f(θ) ⊙ θ(1−θ)``.

    ``f`` and ``∇_b f`` are evaluated once more, at the mean ``θ`` (K + 1 evaluations).
    """

    def estimate(self, logits: Tensor, f: Objective, noise: Tensor) -> Estimate:
        probs = torch.sigmoid(logits)  # [B, D]
        b = bernoulli_from_uniform(noise, probs)  # [K, B, D]
        score = b - probs  # [K, B, D]
        values, _ = evaluate(f, b, with_input_grad=False)  # [K, B]
        mean_value, mean_grad = evaluate(f, probs.unsqueeze(0), with_input_grad=True)  # [1,B],[1,B,D]
        mean_value, mean_grad = mean_value.detach(), mean_grad.detach()
        baseline = mean_value + (mean_grad * score).sum(-1)  # [K, B]
        grad = score_function_gradient(values.detach() - baseline, b, probs)
        grad = grad + mean_grad[0] * probs * (1.0 - probs)
        return Estimate(grad=grad, values=values)
