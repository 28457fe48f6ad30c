"""The oracle baseline (``exact-baseline``): REINFORCE with the exact ``E_q[f]`` as its baseline."""

from __future__ import annotations

from torch import Tensor

from dcvbench.estimators.base import Estimate, Estimator, EstimatorError, EstimatorInfo
from dcvbench.estimators.evaluation import evaluate
from dcvbench.estimators.registry import register
from dcvbench.estimators.score_function import score_function_gradient
from dcvbench.objectives import HasExpectation, Objective


@register(
    EstimatorInfo(
        name="exact-baseline",
        summary="oracle: score function with the exact E_q[f] as baseline (toy, or f with expectation())",
        unbiased=True,
        needs_input_grad=False,
        problems=("toy", "user"),
        requires=(HasExpectation,),
        families=("binary", "categorical"),
        order=60,
    )
)
class ExactBaseline(Estimator):
    """``g = (1/K) Σ_k (f_k − E_q[f]) ∇_η log q(b_k)`` ("R*").

    Williams 1992 with the best constant baseline; only possible where ``E_q[f]`` has a closed form
    (:class:`~dcvbench.objectives.HasExpectation`: the toys). It shows how far a perfect constant
    baseline gets.
    """

    def estimate(self, logits: Tensor, f: Objective, noise: Tensor) -> Estimate:
        if not isinstance(f, HasExpectation):
            raise EstimatorError(
                "exact-baseline needs an objective with a closed-form expectation (the toy problems)"
            )
        probs = self.family.probs(logits)  # [B, *event]
        b = self.family.sample(logits, noise)  # [K, B, *event]
        evaluation = evaluate(f, b, with_input_grad=False)
        baseline = f.expectation(probs).detach()  # [B]
        grad = score_function_gradient(evaluation.values.detach() - baseline, b, probs)
        return Estimate(grad=grad, values=evaluation.values, param_grads=evaluation.param_grads)
