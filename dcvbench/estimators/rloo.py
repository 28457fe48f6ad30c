"""REINFORCE leave-one-out (RLOO).

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
from dcvbench.estimators.sampling import bernoulli_from_uniform


@register(
    EstimatorInfo(
        name="rloo",
        summary="REINFORCE leave-one-out: each sample's baseline is the mean f of the others",
        unbiased=True,
        needs_input_grad=False,
        min_k=2,
    )
)
class RLOO(Estimator):
    """``g = (1/K) Σ_k (f_k − (1/(K−1)) Σ_{j≠k} f_j)(b_k − θ)``, ``b_k ~ q`` independent."""

    def estimate(self, logits: Tensor, f: Objective, noise: Tensor) -> Estimate:
        probs = torch.sigmoid(logits)  # [B, D]
        b = bernoulli_from_uniform(noise, probs)  # [K, B, D]
        values, _ = evaluate(f, b, with_input_grad=False)  # [K, B]
        grad = score_function_gradient(leave_one_out_centre(values.detach()), b, probs)
        return Estimate(grad=grad, values=values)
