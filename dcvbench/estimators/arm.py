"""Antithetic estimators from one uniform per pair: ARM and DisARM.

Yin & Zhou, *ARM: Augment-REINFORCE-Merge Gradient for Stochastic Binary Networks*, ICLR 2019.
Dong, Mnih & Tucker, *DisARM: An Antithetic Gradient Estimator for Binary Latent Variables*,
NeurIPS 2020.

Both draw ``u ~ U(0,1)^D`` per pair and evaluate ``f`` at the antithetic pair
``b = 1[u > 1 − θ]``, ``b̃ = 1[u < θ]`` (each marginally Bernoulli(θ)); K samples make K/2 pairs
whose estimates are averaged.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dcvbench.estimators.base import Estimate, Estimator, EstimatorInfo, Objective, evaluate
from dcvbench.estimators.registry import register
from dcvbench.estimators.sampling import uniform_noise


def antithetic_pair(u: Tensor, probs: Tensor) -> tuple[Tensor, Tensor]:
    """``b = 1[u > 1 − θ]``, ``b̃ = 1[u < θ]``: u ``[P, B, D]`` → two ``[P, B, D]`` samples."""
    return (u > 1.0 - probs).to(u.dtype), (u < probs).to(u.dtype)


class _PairEstimator(Estimator):
    """Shared sampling and evaluation of antithetic pairs; subclasses weigh the difference."""

    def sample(self, logits: Tensor, k: int, generator: torch.Generator) -> Tensor:
        return uniform_noise((k // 2, *logits.shape), logits, generator)  # [K/2, B, D]

    def estimate(self, logits: Tensor, f: Objective, noise: Tensor) -> Estimate:
        probs = torch.sigmoid(logits)  # [B, D]
        b, b_tilde = antithetic_pair(noise, probs)  # [P, B, D] each
        values, _ = evaluate(f, torch.cat([b, b_tilde]), with_input_grad=False)  # [2P, B]
        f_b, f_b_tilde = values.detach().chunk(2)  # [P, B] each
        grad = self.pair_gradient(logits, noise, b, b_tilde, f_b - f_b_tilde).mean(0)  # [B, D]
        return Estimate(grad=grad, values=values)

    def pair_gradient(
        self, logits: Tensor, u: Tensor, b: Tensor, b_tilde: Tensor, difference: Tensor
    ) -> Tensor:
        """One estimate per pair, ``[P, B, D]``, from ``difference = f(b) − f(b̃)`` ``[P, B]``."""
        raise NotImplementedError


@register(
    EstimatorInfo(
        name="arm",
        summary="Augment-REINFORCE-Merge: antithetic pair, (f(b) − f(b̃))(u − ½)",
        unbiased=True,
        needs_input_grad=False,
        min_k=2,
        even_k=True,
    )
)
class ARM(_PairEstimator):
    """``g = (f(1[u > σ(−η)]) − f(1[u < σ(η)]))(u − ½)``, averaged over K/2 pairs (Yin & Zhou 2019)."""

    def pair_gradient(self, logits, u, b, b_tilde, difference):
        return difference.unsqueeze(-1) * (u - 0.5)


@register(
    EstimatorInfo(
        name="disarm",
        summary="DisARM: ARM with the augmentation integrated out analytically",
        unbiased=True,
        needs_input_grad=False,
        min_k=2,
        even_k=True,
    )
)
class DisARM(_PairEstimator):
    """``g = ½ (f(b) − f(b̃)) (−1)^{b̃} 1[b ≠ b̃] σ(|η|)``, averaged over K/2 pairs (Dong et al. 2020)."""

    def pair_gradient(self, logits, u, b, b_tilde, difference):
        sign = 1.0 - 2.0 * b_tilde  # (−1)^{b̃}
        disagree = (b != b_tilde).to(u.dtype)
        return 0.5 * difference.unsqueeze(-1) * sign * disagree * torch.sigmoid(logits.abs())
