"""ARM: Augment-REINFORCE-Merge on antithetic pairs (``arm``)."""

from __future__ import annotations

from torch import Tensor

from dcvbench.estimators.antithetic import PairEstimator
from dcvbench.estimators.base import EstimatorInfo
from dcvbench.estimators.registry import register


@register(
    EstimatorInfo(
        name="arm",
        summary="Augment-REINFORCE-Merge: antithetic pair, (f(b) − f(b̃))(u − ½)",
        unbiased=True,
        needs_input_grad=False,
        min_k=2,
        even_k=True,
        families=("binary",),
        order=70,
    )
)
class ARM(PairEstimator):
    """``g = (f(1[u > σ(−η)]) − f(1[u < σ(η)]))(u − ½)``, averaged over K/2 pairs.

    Yin & Zhou, *ARM: Augment-REINFORCE-Merge Gradient for Stochastic Binary Networks*, ICLR 2019.
    """

    def pair_gradient(
        self, logits: Tensor, u: Tensor, b: Tensor, b_tilde: Tensor, difference: Tensor
    ) -> Tensor:
        return difference.unsqueeze(-1) * (u - 0.5)
