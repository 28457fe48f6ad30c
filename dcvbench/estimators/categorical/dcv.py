"""REINFORCE leave-one-out with a double control variate (``rloo-dcv``) for categorical latents.

Titsias & Shi, *Double Control Variates for Gradient Estimation in Discrete Latent Variable
Models*, AISTATS 2022, carried from binary to one-hot categorical latents (DESIGN §3.6).

With the score ``s_k = b_k − π`` (per variable, ``π = softmax(η)``), ``∇f_k = ∇_b f(b_k)``,
``ḡ = (1/K) Σ_k ∇f_k`` and ``ḡ_{−k} = (1/(K−1)) Σ_{j≠k} ∇f_j``, each sample's signal gains a
first-order Taylor term that uses only the *other* samples, the inner product running over all
variables and classes::

    F_k = f_k + α ⟨ḡ_{−k}, s_k⟩
    g   = (1/K) Σ_k (F_k − (1/(K−1)) Σ_{j≠k} F_j) s_k  −  α (diag(π) − ππᵀ) ḡ     (per variable)

``(diag(π) − ππᵀ) ḡ = π ⊙ ḡ − π ⟨π, ḡ⟩`` along the classes. The correction removes the expectation
that the Taylor terms add (``b_k`` is independent of ``ḡ_{−k}``; the scores of different variables
are independent, and one variable's score has covariance ``diag(π) − ππᵀ``), so ``g`` is unbiased for
every ``α``; ``α = 0`` is exactly RLOO. ``g = g₀ + α h`` is linear in α, and α is learned exactly as
for binary latents (:class:`~dcvbench.estimators.dcv.RLOODCV`, whose options, α learning and
checkpointed optimiser state this class inherits).
"""

from __future__ import annotations

import torch
from torch import Tensor

from dcvbench.estimators.base import (
    Estimate,
    EstimatorInfo,
    Objective,
    evaluate,
    leave_one_out_centre,
)
from dcvbench.estimators.dcv import RLOODCV
from dcvbench.estimators.registry import register
from dcvbench.estimators.sampling import categorical_from_uniform


@register(
    EstimatorInfo(
        name="rloo-dcv",
        summary="RLOO + double control variate (Taylor term from the other samples), learned α",
        unbiased=True,
        needs_input_grad=True,
        min_k=2,
    ),
    latent="categorical",
)
class CategoricalRLOODCV(RLOODCV):
    """The double control variate of Titsias & Shi (2022) for one-hot categorical latents.

    Same arguments as :class:`~dcvbench.estimators.dcv.RLOODCV`; only the score, its covariance and
    the shapes (logits ``[B, N, C]``) differ.
    """

    def estimate(self, logits: Tensor, f: Objective, noise: Tensor) -> Estimate:
        k = noise.shape[0]
        probs = torch.softmax(logits, -1)  # [B, N, C]
        b = categorical_from_uniform(noise, logits)  # [K, B, N, C]
        score = b - probs  # [K, B, N, C]
        values, input_grad = evaluate(f, b, with_input_grad=True)  # [K, B], [K, B, N, C]
        grad_sum = input_grad.sum(0)  # [B, N, C]
        # ⟨ḡ_{−k}, s_k⟩ over variables and classes, ḡ_{−k} = (Σ_j ∇f_j − ∇f_k)/(K−1).
        taylor = ((grad_sum - input_grad) * score).sum((-2, -1)) / (k - 1)  # [K, B]

        # g₀ and the Taylor part of h in one pass over the scores: [K, 2, B, 1, 1] · [K, 1, B, N, C].
        signals = leave_one_out_centre(torch.stack([values.detach(), taylor], dim=1))  # [K, 2, B]
        base, taylor_part = (signals[..., None, None] * score.unsqueeze(1)).mean(0).unbind(0)  # [B, N, C]
        mean_grad = grad_sum / k  # ḡ: [B, N, C]
        # (diag(π) − ππᵀ) ḡ per variable, without forming the C × C matrix.
        correction = probs * (mean_grad - (probs * mean_grad).sum(-1, keepdim=True))  # [B, N, C]
        control = taylor_part - correction  # h: [B, N, C]
        # A copy, not a view of the parameter: update() changes α in place after this estimate is used.
        alpha = self.alpha.detach().to(logits.dtype, copy=True)
        grad = base + alpha * control  # [B, N, C]
        return Estimate(grad=grad.detach(), values=values, stats={"alpha": alpha}, control=control)
