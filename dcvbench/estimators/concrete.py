"""The Concrete relaxation's pathwise gradient of the relaxed objective (``concrete``; biased)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dcvbench.estimators.base import Estimate, EstimatorInfo, Stat
from dcvbench.estimators.registry import register
from dcvbench.estimators.relaxed import RelaxedEstimator, relaxed_objective
from dcvbench.objectives import HasBound, Objective


@register(
    EstimatorInfo(
        name="concrete",
        summary=(
            "Concrete relaxation (Binary Concrete, Gumbel-softmax): pathwise gradient of the relaxed "
            "objective (biased)"
        ),
        unbiased=False,
        needs_input_grad=True,
        families=("binary", "categorical"),
        order=100,
        stats=(Stat("temperature"),),
        relaxation="relaxed",
        bounds=("elbo", "iwae"),
        trains_chain=True,
    )
)
class Concrete(RelaxedEstimator):
    """``g = ∇_η (1/K) Σ_k f̃(y_k; η)``, ``y_k = relax(η, u_k, λ)``; values ``f̃(y_k; η)`` ``[K, B]``.

    Maddison, Mnih & Teh 2017 (Binary Concrete); Jang, Gu & Poole 2017 (Gumbel-softmax). ``f̃`` is
    the relaxed objective (:func:`~dcvbench.estimators.relaxed.relaxed_objective`), differentiated
    by autograd through both ``y`` and any direct dependence of ``f̃`` on ``η``. For an objective of
    the relaxed point alone (the toy's) that is ``(1/K) Σ_k (∂z_k/∂η)ᵀ ∇_z f(z_k)``, with
    ``∂z/∂η = z(1 − z)/λ`` for bits and ``(diag z − zzᵀ)/λ`` per categorical variable. The values
    keep their graph, so a model trains its own parameters (the VAE's decoder and learned prior) on
    the same relaxed objective. Biased for the discrete objective.

    With an objective whose :class:`~dcvbench.objectives.HasBound` ``bound`` is ``"iwae"``, the
    relaxed K-sample bound instead (the Concrete paper's "m = K"): ``g = ∇_η (−L̃_K)``,
    ``L̃_K = log (1/K) Σ_k exp(−f̃_k)``, and the model trains on the same ``−L̃_K`` (``surrogate``).
    With several stochastic layers, ``f̃`` relaxes every layer below the first too and its graph runs
    through them, so this one estimate trains the whole chain (``trains_chain``).
    """

    def estimate(self, logits: Tensor, f: Objective, noise: Tensor) -> Estimate:
        multi_sample = isinstance(f, HasBound) and f.bound == "iwae"
        with torch.enable_grad():
            eta = logits.detach().requires_grad_(True)  # [B, *event]: g is the gradient at this leaf
            y = self.family.relax(eta, noise, self.temperature)  # [K, B, *event]
            values = relaxed_objective(f, self.family, y, eta, self.temperature)  # [K, B]
            k = values.shape[0]
            # Per row: the mean of f̃, or −L̃_K. Rows are independent, so the gradient of the sum
            # over rows is each row's own.
            per_row = -(torch.logsumexp(-values, 0) - math.log(k)) if multi_sample else values.mean(0)  # [B]
            # retain_graph: the model still back-propagates into its parameters.
            (grad,) = torch.autograd.grad(per_row.sum(), eta, retain_graph=True)
        surrogate = per_row.mean() if multi_sample else None
        return Estimate(
            grad=grad, values=values, stats={"temperature": self.temperature_stat(grad)}, surrogate=surrogate
        )
