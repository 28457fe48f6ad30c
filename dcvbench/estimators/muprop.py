"""MuProp: a first-order Taylor baseline around the mean, with its analytic correction (``muprop``)."""

from __future__ import annotations

from torch import Tensor

from dcvbench.estimators.base import Estimate, Estimator, EstimatorInfo
from dcvbench.estimators.evaluation import evaluate
from dcvbench.estimators.registry import register
from dcvbench.estimators.score_function import score_function_gradient
from dcvbench.objectives import Objective


@register(
    EstimatorInfo(
        name="muprop",
        summary="score function with a Taylor baseline at the mean θ, plus its analytic term",
        unbiased=True,
        needs_input_grad=True,
        extra_evals=1,
        families=("binary", "categorical"),
        order=50,
    )
)
class MuProp(Estimator):
    """``g = (1/K) Σ_k (f_k − f(p) − ⟨∇f(p), s_k⟩) s_k + Cov(s) ∇f(p)``, ``s_k = b_k − p``.

    Gu, Levine, Sutskever & Mnih, *MuProp: Unbiased Backpropagation for Stochastic Neural
    Networks*, ICLR 2016. ``p`` is the mean of ``q`` (``θ``, or ``π`` per categorical variable);
    ``Cov(s) v`` is ``θ(1−θ) ⊙ v`` or ``π ⊙ v − π⟨π, v⟩``
    (:meth:`~dcvbench.latent.LatentFamily.covariance_product`), the expectation the Taylor term adds.
    ``f`` and ``∇_b f`` are evaluated once more, at ``p`` (K + 1 evaluations); that evaluation's
    parameter gradients are not the model's and are dropped.
    """

    def estimate(self, logits: Tensor, f: Objective, noise: Tensor) -> Estimate:
        family = self.family
        probs = family.probs(logits)  # [B, *event]
        b = family.sample(logits, noise)  # [K, B, *event]
        score = family.score(b, probs)  # [K, B, *event]
        evaluation = evaluate(f, b, with_input_grad=False)  # values [K, B]
        at_mean = evaluate(f, probs.unsqueeze(0), with_input_grad=True)  # [1, B], [1, B, *event]
        mean_value, mean_grad = at_mean.values.detach(), at_mean.input_grad.detach()
        baseline = mean_value + family.reduce(mean_grad * score)  # [K, B]
        grad = score_function_gradient(evaluation.values.detach() - baseline, b, probs)
        grad = grad + family.covariance_product(probs, mean_grad[0])
        return Estimate(grad=grad, values=evaluation.values, param_grads=evaluation.param_grads)
