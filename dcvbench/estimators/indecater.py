"""IndeCateR: every value of each variable enumerated with the others held at a sample (``indecater``)."""

from __future__ import annotations

import torch
from torch import Tensor

from dcvbench.estimators.base import Estimate, Estimator, EstimatorInfo
from dcvbench.estimators.evaluation import evaluate
from dcvbench.estimators.registry import register
from dcvbench.objectives import Objective


@register(
    EstimatorInfo(
        name="indecater",
        summary="IndeCateR / local expectations: f at every value of each variable, the others sampled",
        unbiased=True,
        needs_input_grad=False,
        neighbour_evals=True,
        families=("binary", "categorical"),
        order=97,  # with the other successors of the double control variate (DESIGN §3.8), after carms
    )
)
class IndeCateR(Estimator):
    """``∇_η E_q f = Σ_n E_{x~q} [ Σ_c ∇_η q_n(c) · f(x with x_n := c) ]``, for independent variables.

    De Smet, Sansone & Zuidberg Dos Martires, *Differentiable Sampling of Categorical Distributions
    Using the CatLog-Derivative Trick*, NeurIPS 2023 (IndeCateR); for bits it is the local-expectation
    gradient of Titsias & Lázaro-Gredilla, *Local Expectation Gradients for Black Box Variational
    Inference*, NeurIPS 2015. The exact expectation over variable ``n`` given the others replaces the
    score function's single draw of it (a Rao-Blackwellisation), so it is unbiased for any ``K ≥ 1``
    outer samples ``x_k`` (the paper's ``S``), and exact with one sample on an ``f`` that is a sum of
    functions of one variable each.

    As computed: ``Σ_c ∇_η q_n(c) = 0``, so subtracting ``f(x)`` changes no estimate, and the term of
    the sampled value ``c = x_n`` vanishes. What remains runs over the ``M`` one-variable changes
    ``y_m`` of each sample (:meth:`~dcvbench.latent.LatentFamily.neighbours`: ``D`` bit flips, or
    ``N(C−1)`` changes to another class), with ``∇_η q_n(c) = q_n(c) (y_m − p) ⊙ 1_n`` (``1_n`` the
    changed variable's entries)::

        g = (1/K) Σ_k Σ_m q_m · (f(y_{k,m}) − f(x_k)) · (y_{k,m} − p) ⊙ 1_{n(m)}

    For a bit this is ``θ_d(1−θ_d) (f(x_{d:=1}) − f(x_{d:=0}))`` whichever value was sampled.
    Cost: ``K(1 + M)`` evaluations of ``f`` (the paper's ``S·N·C`` counts ``f(x)`` once per
    variable); the ``K·M`` changes are one batched call. Only the samples' values train the
    generative model: the changes are evaluated without a graph.
    """

    def estimate(self, logits: Tensor, f: Objective, noise: Tensor) -> Estimate:
        family = self.family
        probs = family.probs(logits)  # [B, *event]
        x = family.sample(logits, noise)  # [K, B, *event]
        evaluation = evaluate(f, x, with_input_grad=False)  # values [K, B]
        neighbours = family.neighbours(x, probs)  # probs q_n(c): [M, K, B]
        points = neighbours.points  # [M, K, B, *event]
        with torch.no_grad():  # the changes train nothing (not the decoder either): no graph
            changed_values = f(points.flatten(0, 1)).reshape(points.shape[:3])  # [M, K, B]
        weights = neighbours.probs * (changed_values - evaluation.values.detach())  # [M, K, B]
        # The score of each change's new value, on the changed variable's entries only.
        changed = neighbours.changed[:, None, None]  # [M, 1, 1, *event]
        score = family.score(points, probs) * changed  # [M, K, B, *event]
        grad = torch.einsum("mkb,mkb...->b...", weights, score) / x.shape[0]  # [B, *event]
        return Estimate(grad=grad, values=evaluation.values, param_grads=evaluation.param_grads)
