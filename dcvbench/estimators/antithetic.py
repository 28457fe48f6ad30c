"""Antithetic pairs of bits from one uniform per pair: the sampling ``arm`` and ``disarm`` share.

Per pair, ``u ~ U(0,1)^D`` gives ``b = 1[u > 1 − θ]`` and ``b̃ = 1[u < θ]``, each marginally
Bernoulli(θ) and negatively correlated; K samples make K/2 pairs whose estimates are averaged.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dcvbench.estimators.base import Estimate, Estimator
from dcvbench.estimators.evaluation import evaluate
from dcvbench.latent.noise import uniform_noise
from dcvbench.objectives import Objective


def antithetic_pair(u: Tensor, probs: Tensor) -> tuple[Tensor, Tensor]:
    """``b = 1[u > 1 − θ]``, ``b̃ = 1[u < θ]``: u ``[P, B, D]`` → two ``[P, B, D]`` samples."""
    return (u > 1.0 - probs).to(u.dtype), (u < probs).to(u.dtype)


class PairEstimator(Estimator):
    """Shared sampling and evaluation of antithetic pairs; subclasses weigh the difference."""

    def sample(self, logits: Tensor, k: int, generator: torch.Generator) -> Tensor:
        return uniform_noise((k // 2, *logits.shape), logits, generator)  # [K/2, B, D]

    def estimate(self, logits: Tensor, f: Objective, noise: Tensor) -> Estimate:
        probs = self.family.probs(logits)  # [B, D]
        b, b_tilde = antithetic_pair(noise, probs)  # [P, B, D] each
        evaluation = evaluate(f, torch.cat([b, b_tilde]), with_input_grad=False)  # values [2P, B]
        f_b, f_b_tilde = evaluation.values.detach().chunk(2)  # [P, B] each
        grad = self.pair_gradient(logits, noise, b, b_tilde, f_b - f_b_tilde).mean(0)  # [B, D]
        return Estimate(grad=grad, values=evaluation.values, param_grads=evaluation.param_grads)

    def pair_gradient(
        self, logits: Tensor, u: Tensor, b: Tensor, b_tilde: Tensor, difference: Tensor
    ) -> Tensor:
        """One estimate per pair, ``[P, B, D]``, from ``difference = f(b) − f(b̃)`` ``[P, B]``."""
        raise NotImplementedError
