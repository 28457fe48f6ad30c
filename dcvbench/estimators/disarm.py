"""DisARM: ARM with the augmentation integrated out analytically (``disarm``)."""

from __future__ import annotations

import torch
from torch import Tensor

from dcvbench.estimators.antithetic import PairEstimator
from dcvbench.estimators.base import EstimatorInfo
from dcvbench.estimators.registry import register


@register(
    EstimatorInfo(
        name="disarm",
        summary="DisARM: ARM with the augmentation integrated out analytically",
        unbiased=True,
        needs_input_grad=False,
        min_k=2,
        even_k=True,
        families=("binary",),
        order=80,
    )
)
class DisARM(PairEstimator):
    """``g = ½ (f(b) − f(b̃)) (−1)^{b̃} 1[b ≠ b̃] σ(|η|)``, averaged over K/2 pairs.

    Dong, Mnih & Tucker, *DisARM: An Antithetic Gradient Estimator for Binary Latent Variables*,
    NeurIPS 2020.
    """

    def pair_gradient(
        self, logits: Tensor, u: Tensor, b: Tensor, b_tilde: Tensor, difference: Tensor
    ) -> Tensor:
        sign = 1.0 - 2.0 * b_tilde  # (−1)^{b̃}
        disagree = (b != b_tilde).to(u.dtype)
        return 0.5 * difference.unsqueeze(-1) * sign * disagree * torch.sigmoid(logits.abs())
