"""REINFORCE leave-one-out (``rloo``)."""

from __future__ import annotations

from torch import Tensor

from dcvbench.estimators.base import Estimate, Estimator, EstimatorInfo
from dcvbench.estimators.evaluation import evaluate
from dcvbench.estimators.registry import register
from dcvbench.estimators.score_function import leave_one_out_centre, score_function_gradient
from dcvbench.objectives import Objective


@register(
    EstimatorInfo(
        name="rloo",
        summary="REINFORCE leave-one-out: each sample's baseline is the mean f of the others",
        unbiased=True,
        needs_input_grad=False,
        min_k=2,
        families=("binary", "categorical"),
        order=30,
    )
)
class RLOO(Estimator):
    """``g = (1/K) Σ_k (f_k − (1/(K−1)) Σ_{j≠k} f_j) ∇_η log q(b_k)``, ``b_k ~ q`` independent.

    Kool, van Hoof & Welling, *Buy 4 REINFORCE samples, get a baseline for free!*, ICLR workshop
    2019. Each sample's baseline uses only the other samples, so the estimate stays unbiased.
    """

    def estimate(self, logits: Tensor, f: Objective, noise: Tensor) -> Estimate:
        probs = self.family.probs(logits)  # [B, *event]
        b = self.family.sample(logits, noise)  # [K, B, *event]
        evaluation = evaluate(f, b, with_input_grad=False)
        grad = score_function_gradient(leave_one_out_centre(evaluation.values.detach()), b, probs)
        return Estimate(grad=grad, values=evaluation.values, param_grads=evaluation.param_grads)
