"""REINFORCE: the score-function estimator without a baseline (``reinforce``)."""

from __future__ import annotations

from torch import Tensor

from dcvbench.estimators.base import Estimate, Estimator, EstimatorInfo
from dcvbench.estimators.evaluation import evaluate
from dcvbench.estimators.registry import register
from dcvbench.estimators.score_function import score_function_gradient
from dcvbench.objectives import Objective


@register(
    EstimatorInfo(
        name="reinforce",
        summary="score function, no baseline: (1/K) Σ f_k (b_k − θ)",
        unbiased=True,
        needs_input_grad=False,
        families=("binary", "categorical"),
        order=10,
    )
)
class Reinforce(Estimator):
    """``g = (1/K) Σ_k f(b_k) ∇_η log q(b_k)``, ``b_k ~ q`` independent.

    Williams, *Simple statistical gradient-following algorithms for connectionist reinforcement
    learning*, Machine Learning 1992. The score is ``b − θ`` for bits and ``b − π`` per one-hot
    categorical variable.
    """

    def estimate(self, logits: Tensor, f: Objective, noise: Tensor) -> Estimate:
        probs = self.family.probs(logits)  # [B, *event]
        b = self.family.sample(logits, noise)  # [K, B, *event]
        evaluation = evaluate(f, b, with_input_grad=False)
        grad = score_function_gradient(evaluation.values.detach(), b, probs)
        return Estimate(grad=grad, values=evaluation.values, param_grads=evaluation.param_grads)
