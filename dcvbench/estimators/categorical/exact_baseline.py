"""The oracle baseline for categorical latents: REINFORCE with the exact ``E_q[f]`` ("R*").

Only possible where ``E_q[f]`` has a closed form, i.e. on the categorical toy problems.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dcvbench.estimators.base import Estimate, Estimator, EstimatorError, EstimatorInfo, Objective, evaluate
from dcvbench.estimators.registry import register
from dcvbench.estimators.reinforce import score_function_gradient
from dcvbench.estimators.sampling import categorical_from_uniform


@register(
    EstimatorInfo(
        name="exact-baseline",
        summary="oracle: score function with the exact E_q[f] as baseline (toy only)",
        unbiased=True,
        needs_input_grad=False,
        problems=("toy",),
    ),
    latent="categorical",
)
class CategoricalExactBaseline(Estimator):
    """``g = (1/K) Σ_k (f_k − E_q[f])(b_k − π)``; ``f`` must offer ``expectation(probs [B, N, C]) -> [B]``."""

    def estimate(self, logits: Tensor, f: Objective, noise: Tensor) -> Estimate:
        expectation = getattr(f, "expectation", None)
        if expectation is None:
            raise EstimatorError(
                "exact-baseline needs an objective with a closed-form expectation (the toy problems)"
            )
        probs = torch.softmax(logits, -1)  # [B, N, C]
        b = categorical_from_uniform(noise, logits)  # [K, B, N, C]
        values, _ = evaluate(f, b, with_input_grad=False)  # [K, B]
        baseline = expectation(probs).detach()  # [B]
        grad = score_function_gradient(values.detach() - baseline, b, probs)
        return Estimate(grad=grad, values=values)
