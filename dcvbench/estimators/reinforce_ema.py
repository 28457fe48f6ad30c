"""REINFORCE with a moving-average baseline (``reinforce-ema``)."""

from __future__ import annotations

import torch
from torch import Tensor

from dcvbench.estimators.base import Estimate, Estimator, EstimatorInfo, Stat
from dcvbench.estimators.evaluation import evaluate
from dcvbench.estimators.options import BASELINE_DECAY
from dcvbench.estimators.registry import register
from dcvbench.estimators.score_function import score_function_gradient
from dcvbench.latent import BINARY, LatentFamily
from dcvbench.objectives import Objective


@register(
    EstimatorInfo(
        name="reinforce-ema",
        summary="score function with an exponential moving average baseline of past f",
        unbiased=True,
        needs_input_grad=False,
        families=("binary", "categorical"),
        order=20,
        stats=(Stat("baseline"),),
    )
)
class ReinforceEMA(Estimator):
    """``g = (1/K) Σ_k (f(b_k) − c) ∇_η log q(b_k)``, ``c`` a moving average of past mean ``f``.

    Williams 1992 (the reinforcement baseline). The baseline depends only on earlier steps, so the
    estimate stays unbiased. It starts at 0 and is first set to the mean ``f`` of the first estimate
    used.

    Args:
        baseline_decay: weight of the old baseline in each update,
            ``c ← decay·c + (1 − decay)·mean f``.
    """

    options = (BASELINE_DECAY,)

    def __init__(self, family: LatentFamily = BINARY, baseline_decay: float = BASELINE_DECAY.default):
        super().__init__(family)
        if not 0.0 <= baseline_decay < 1.0:
            raise ValueError(f"baseline_decay must be in [0, 1), got {baseline_decay}")
        self.decay = baseline_decay
        self.register_buffer("baseline", torch.zeros(()))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    def estimate(self, logits: Tensor, f: Objective, noise: Tensor) -> Estimate:
        probs = self.family.probs(logits)  # [B, *event]
        b = self.family.sample(logits, noise)  # [K, B, *event]
        evaluation = evaluate(f, b, with_input_grad=False)
        values = evaluation.values  # [K, B]
        baseline = self.baseline.to(values.dtype)
        grad = score_function_gradient(values.detach() - baseline, b, probs)
        stats = {"baseline": baseline.detach().clone()}
        return Estimate(grad=grad, values=values, param_grads=evaluation.param_grads, stats=stats)

    @torch.no_grad()
    def update(self, estimate: Estimate) -> None:
        mean = estimate.values.detach().mean().to(self.baseline.dtype)
        blended = self.decay * self.baseline + (1.0 - self.decay) * mean
        self.baseline.copy_(torch.where(self.initialised, blended, mean))
        self.initialised.fill_(True)

    def state_stats(self) -> dict[str, float]:
        return {"baseline": float(self.baseline)}
