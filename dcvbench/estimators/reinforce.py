"""REINFORCE (score function) estimators: plain, and with a moving-average baseline.

Williams, *Simple statistical gradient-following algorithms for connectionist reinforcement
learning*, Machine Learning 1992. For factorised Bernoulli ``q``, ``∇_η log q(b) = b − θ``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dcvbench.estimators.base import (
    Estimate,
    Estimator,
    EstimatorInfo,
    EstimatorSettings,
    Objective,
    ProblemShape,
    evaluate,
)
from dcvbench.estimators.registry import register
from dcvbench.estimators.sampling import bernoulli_from_uniform


def score_function_gradient(signal: Tensor, b: Tensor, probs: Tensor) -> Tensor:
    """``(1/K) Σ_k signal_k (b_k − θ)``: signal ``[K, B]``, b ``[K, B, *event]``, probs ``[B, *event]``.

    ``b − θ`` is the score of a factorised Bernoulli (event ``[D]``) and of one-hot categoricals
    (event ``[N, C]``, ``θ`` the class probabilities) alike.
    """
    event = (1,) * (probs.dim() - 1)
    return (signal.reshape(*signal.shape, *event) * (b - probs)).mean(0)  # [B, *event]


@register(
    EstimatorInfo(
        name="reinforce",
        summary="score function, no baseline: (1/K) Σ f_k (b_k − θ)",
        unbiased=True,
        needs_input_grad=False,
    )
)
class Reinforce(Estimator):
    """``g = (1/K) Σ_k f(b_k) (b_k − θ)``, ``b_k ~ q`` independent (Williams 1992)."""

    def estimate(self, logits: Tensor, f: Objective, noise: Tensor) -> Estimate:
        probs = torch.sigmoid(logits)  # [B, D]
        b = bernoulli_from_uniform(noise, probs)  # [K, B, D]
        values, _ = evaluate(f, b, with_input_grad=False)  # [K, B]
        grad = score_function_gradient(values.detach(), b, probs)
        return Estimate(grad=grad, values=values)


@register(
    EstimatorInfo(
        name="reinforce-ema",
        summary="score function with an exponential moving average baseline of past f",
        unbiased=True,
        needs_input_grad=False,
    )
)
class ReinforceEMA(Estimator):
    """``g = (1/K) Σ_k (f(b_k) − c)(b_k − θ)``, ``c`` a moving average of past mean ``f``.

    The baseline depends only on earlier steps, so the estimate stays unbiased. It starts at 0 and
    is first set to the mean ``f`` of the first estimate used.

    Args:
        decay: weight of the old baseline in each update, ``c ← decay·c + (1 − decay)·mean f``.
    """

    def __init__(self, decay: float = 0.9):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.register_buffer("baseline", torch.zeros(()))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    @classmethod
    def from_settings(cls, settings: EstimatorSettings, shape: ProblemShape) -> ReinforceEMA:
        return cls(decay=settings.baseline_decay)

    def estimate(self, logits: Tensor, f: Objective, noise: Tensor) -> Estimate:
        probs = torch.sigmoid(logits)  # [B, D]
        b = bernoulli_from_uniform(noise, probs)  # [K, B, D]
        values, _ = evaluate(f, b, with_input_grad=False)  # [K, B]
        baseline = self.baseline.to(values.dtype)
        grad = score_function_gradient(values.detach() - baseline, b, probs)
        return Estimate(grad=grad, values=values, stats={"baseline": baseline.detach().clone()})

    @torch.no_grad()
    def update(self, estimate: Estimate) -> None:
        mean = estimate.values.detach().mean().to(self.baseline.dtype)
        blended = self.decay * self.baseline + (1.0 - self.decay) * mean
        self.baseline.copy_(torch.where(self.initialised, blended, mean))
        self.initialised.fill_(True)
