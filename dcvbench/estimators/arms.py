"""ARMS: antithetic REINFORCE for K negatively correlated multi-samples (``arms``)."""

from __future__ import annotations

import torch
from torch import Tensor

from dcvbench.estimators.base import Estimate, Estimator, EstimatorInfo
from dcvbench.estimators.evaluation import evaluate
from dcvbench.estimators.registry import register
from dcvbench.latent.noise import dirichlet_copula, dirichlet_copula_both_below
from dcvbench.objectives import Objective


def arms_pair_joint(probs: Tensor, k: int) -> Tensor:
    """``P(b_i = 1, b_j = 1)`` for two of the K copula samples, per coordinate (``probs``' shape).

    ``max(2θ^{1/(K−1)} − 1, 0)^{K−1}`` for ``θ < ½``; for ``θ ≥ ½`` by symmetry,
    ``2θ − 1 + max(2(1−θ)^{1/(K−1)} − 1, 0)^{K−1}``.
    """
    low = dirichlet_copula_both_below(probs, k)
    high = 2.0 * probs - 1.0 + dirichlet_copula_both_below(1.0 - probs, k)
    return torch.where(probs < 0.5, low, high)


@register(
    EstimatorInfo(
        name="arms",
        summary="ARMS: K antithetic samples via a Dirichlet copula, debiased leave-one-out",
        unbiased=True,
        needs_input_grad=False,
        min_k=2,
        families=("binary",),
        order=90,
    )
)
class ARMS(Estimator):
    """``g = (1/K) Σ_k (f_k − f̄)(b_k − θ) · K/(K−1) · θ(1−θ)/(θ − P(b_i=1, b_j=1))``.

    Dimitriev & Zhou, *ARMS: Antithetic-REINFORCE-Multi-Sample Gradient for Binary Variables*,
    ICML 2021. Per coordinate, ``c_k`` from :func:`~dcvbench.latent.noise.dirichlet_copula`
    (marginally uniform, negatively dependent); ``b_k = 1[c_k < θ]`` where ``θ < ½`` and
    ``1[1 − c_k < θ]`` otherwise. The factor ``θ(1−θ)/(θ − joint)`` = ``Var b / (Var b − Cov(b_i, b_j))``
    removes the bias that the dependence between samples gives the leave-one-out baseline.
    """

    def estimate(self, logits: Tensor, f: Objective, noise: Tensor) -> Estimate:
        k = noise.shape[0]
        probs = self.family.probs(logits)  # [B, D]
        copula = dirichlet_copula(noise)  # [K, B, D]
        copula = torch.where(probs < 0.5, copula, 1.0 - copula)
        b = (copula < probs).to(logits.dtype)  # [K, B, D]
        evaluation = evaluate(f, b, with_input_grad=False)
        values = evaluation.values.detach()  # [K, B]
        centred = values - values.mean(0, keepdim=True)  # [K, B]
        variance = probs * (1.0 - probs)  # [B, D]
        tiny = torch.finfo(logits.dtype).tiny
        debias = variance / (probs - arms_pair_joint(probs, k)).clamp(min=tiny)  # [B, D]
        grad = (centred.unsqueeze(-1) * (b - probs)).sum(0) / (k - 1) * debias  # [B, D]
        return Estimate(grad=grad, values=evaluation.values, param_grads=evaluation.param_grads)
