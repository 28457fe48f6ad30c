"""REINFORCE (score function) for categorical latents.

Williams, *Simple statistical gradient-following algorithms for connectionist reinforcement
learning*, Machine Learning 1992. For a one-hot ``b`` of ``Categorical(π)``, ``π = softmax(η)``:
``∇_η log q(b) = b − π`` per variable, so ``g = (1/K) Σ_k f(b_k) (b_k − π)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dcvbench.estimators.base import Estimate, Estimator, EstimatorInfo, Objective, evaluate
from dcvbench.estimators.registry import register
from dcvbench.estimators.reinforce import score_function_gradient
from dcvbench.estimators.sampling import categorical_from_uniform


@register(
    EstimatorInfo(
        name="reinforce",
        summary="score function, no baseline: (1/K) Σ f_k (b_k − π)",
        unbiased=True,
        needs_input_grad=False,
    ),
    latent="categorical",
)
class CategoricalReinforce(Estimator):
    """``g = (1/K) Σ_k f(b_k) (b_k − π)``, ``b_k ~ Categorical(π)`` independent (Williams 1992)."""

    def estimate(self, logits: Tensor, f: Objective, noise: Tensor) -> Estimate:
        probs = torch.softmax(logits, -1)  # [B, N, C]
        b = categorical_from_uniform(noise, logits)  # [K, B, N, C]
        values, _ = evaluate(f, b, with_input_grad=False)  # [K, B]
        return Estimate(grad=score_function_gradient(values.detach(), b, probs), values=values)
