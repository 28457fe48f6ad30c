"""REINFORCE leave-one-out (RLOO) for categorical latents.

Kool, van Hoof & Welling, *Buy 4 REINFORCE samples, get a baseline for free!*, ICLR workshop 2019.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dcvbench.estimators.base import (
    Estimate,
    Estimator,
    EstimatorInfo,
    Objective,
    evaluate,
    leave_one_out_centre,
)
from dcvbench.estimators.registry import register
from dcvbench.estimators.reinforce import score_function_gradient
from dcvbench.estimators.sampling import categorical_from_uniform


@register(
    EstimatorInfo(
        name="rloo",
        summary="REINFORCE leave-one-out: each sample's baseline is the mean f of the others",
        unbiased=True,
        needs_input_grad=False,
        min_k=2,
    ),
    latent="categorical",
)
class CategoricalRLOO(Estimator):
    """``g = (1/K) Σ_k (f_k − (1/(K−1)) Σ_{j≠k} f_j)(b_k − π)``, ``b_k ~ Categorical(π)`` independent."""

    def estimate(self, logits: Tensor, f: Objective, noise: Tensor) -> Estimate:
        probs = torch.softmax(logits, -1)  # [B, N, C]
        b = categorical_from_uniform(noise, logits)  # [K, B, N, C]
        values, _ = evaluate(f, b, with_input_grad=False)  # [K, B]
        grad = score_function_gradient(leave_one_out_centre(values.detach()), b, probs)
        return Estimate(grad=grad, values=values)
