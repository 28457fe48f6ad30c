"""VIMCO: the K-sample importance-weighted bound with leave-one-out learning signals (``vimco``).

Mnih & Rezende, *Variational Inference for Monte Carlo Objectives*, ICML 2016.

VIMCO trains the multi-sample bound of Burda et al. (the IWAE bound) instead of the ELBO::

    L_K = log (1/K) Σ_k w_k,      w_k = p(x, b_k) / q(b_k|x),      b_1..b_K ~ q independent

Its gradient with respect to the posterior logits ``η`` has a score-function part and a pathwise
part (``w_k`` depends on ``η`` through ``q`` too)::

    ∇_η E[L_K] = E[ Σ_k L_K ∇_η log q(b_k) ]  +  E[ Σ_k w̃_k ∇_η log w_k ],     w̃_k = w_k / Σ_j w_j

VIMCO gives each sample its own baseline ``L_{−k}``, the bound with ``w_k`` replaced by the geometric
mean of the other weights, ``ŵ_{−k} = exp((1/(K−1)) Σ_{j≠k} log w_j``). ``L_{−k}`` does not depend
on ``b_k``, so subtracting it keeps the estimate unbiased::

    L_{−k} = log (1/K) (Σ_{j≠k} w_j + ŵ_{−k})

For factorised Bernoulli ``q``, ``∇_η log q(b) = b − θ`` and the direct ``∇_η log w_k = −(b_k − θ)``.
Everything in dcvbench is minimised, so the estimate is of ``∇_η E[−L_K]``::

    g = Σ_k (w̃_k − (L_K − L_{−k})) (b_k − θ)

Contract on ``f``: ``f(b) = −log w(b) = −[log p(x, b) − log q(b|x)]``, the negative log importance
weight, with ``q``'s logits *detached* inside ``f`` (the VAE's
:class:`~dcvbench.problems.vae.NegativeELBO`); the term for ``η``'s direct dependence is added here.
Structured prediction samples the model's own prior, ``w = p(y|b)`` has no ``q`` term and no direct
term is added (:class:`~dcvbench.objectives.HasImportanceWeight`)::

    g = −Σ_k (L_K − L_{−k}) (b_k − θ)

Any other ``f`` gives a number, not the gradient of a bound — hence ``problems=("vae", "predict")``.

**Several stochastic layers** (``trains_chain``): the K samples are K whole chains, the layers below
the first sampled by the objective; a lower layer's logits ``η_l(b_{l−1,k})`` differ per sample, and
``∇_{φ_l} L_K = Σ_k (L_K − L_{−k} − w̃_k) ∇_{φ_l} log q(b_{l,k} | b_{l−1,k})``. The objective keeps
``f_k``'s graph to those logits, where ``∇_{φ_l} f_k = ∇_{φ_l} log q(b_{l,k} | …)`` (its only
dependence on them), so the estimate's ``chain_surrogate`` ``Σ_k (w̃_k − (L_K − L_{−k})) f_k`` (the
coefficients detached, summed over samples, averaged over rows) trains them by their gradient of
``−L_K``. Without the proposal in ``w`` (structured prediction) the coefficient is
``−(L_K − L_{−k})``, and the objective keeps the lower layers' score graph in ``f_k`` as a term of
value zero, ``log q − [log q]_detached``. As an
estimate of ``∇_η E_q[f]`` (the ELBO's gradient, what ``EstimatorInfo.unbiased`` is about) it is
biased: it is unbiased for the K-sample bound, a different objective; compare its runs on the
held-out bound.

The generative model follows ``∇_θ L_K = Σ_k w̃_k ∇_θ log w_k``: the estimate's ``surrogate`` is
``mean_rows Σ_k w̃_k f_k`` with ``w̃`` detached, whose gradient is ``−∇_θ L_K`` per row.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dcvbench.estimators.base import Estimate, Estimator, EstimatorInfo, Stat
from dcvbench.estimators.evaluation import evaluate
from dcvbench.estimators.registry import register
from dcvbench.objectives import HasImportanceWeight, Objective


def leave_one_out_bounds(log_w: Tensor) -> Tensor:
    """``L_{−k} = log (1/K)(Σ_{j≠k} w_j + ŵ_{−k})`` for each k, from ``log w [K, B]`` → ``[K, B]``.

    In log space throughout: row ``k`` of a ``[K, K, B]`` table is ``log w`` with entry ``k``
    replaced by ``log ŵ_{−k}``, and one log-sum-exp reduces it. Nothing is subtracted:
    ``Σ_j w_j − w_k`` (or ``Σ_j log w_j − log w_k``) cancels catastrophically when one weight
    dominates, which is the usual case.
    """
    k = log_w.shape[0]
    own = torch.eye(k, dtype=torch.bool, device=log_w.device).unsqueeze(-1)  # [K, K, 1]
    others = log_w.unsqueeze(0).masked_fill(own, 0.0)  # row k: log w without entry k: [K, K, B]
    others_mean = others.sum(1) / (k - 1)  # log ŵ_{−k}: [K, B]
    table = torch.where(own, others_mean.unsqueeze(1), others)  # [K, K, B]
    return torch.logsumexp(table, dim=1) - math.log(k)  # [K, B]


@register(
    EstimatorInfo(
        name="vimco",
        summary="VIMCO: trains the K-sample bound, leave-one-out geometric-mean baselines (unbiased for it)",
        unbiased=False,
        needs_input_grad=False,
        min_k=2,
        problems=("vae", "predict", "user"),
        requires=(HasImportanceWeight,),  # on "user": f = −log w, declared
        families=("binary",),
        bounds=("iwae",),
        trains_chain=True,
        order=140,
        stats=(Stat("train_bound", "mean"),),
    )
)
class VIMCO(Estimator):
    """``g = Σ_k (w̃_k − (L_K − L_{−k})) (b_k − θ) ≈ ∇_η E[−L_K]`` (Mnih & Rezende 2016).

    ``f`` must be the negative log importance weight with ``q``'s logits detached (module docstring).
    Reports the K-sample bound it trains as ``stats["train_bound"]`` (mean over rows of ``L_K``).
    """

    def estimate(self, logits: Tensor, f: Objective, noise: Tensor) -> Estimate:
        k = noise.shape[0]
        probs = self.family.probs(logits)  # [B, D]
        b = self.family.sample(logits, noise)  # [K, B, D]
        evaluation = evaluate(f, b, with_input_grad=False)
        values = evaluation.values  # [K, B]
        log_w = -values.detach()  # [K, B]
        bound = torch.logsumexp(log_w, 0) - math.log(k)  # L_K: [B]
        signal = bound - leave_one_out_bounds(log_w)  # L_K − L_{−k}: [K, B]
        weights = torch.softmax(log_w, 0)  # w̃_k: [K, B]
        # Score part −(L_K − L_{−k})(b_k − θ) and pathwise part −w̃_k ∇_η log w_k = w̃_k (b_k − θ),
        # when log w has the proposal's −log q(b; η).
        proposal = f.proposal_in_weight if isinstance(f, HasImportanceWeight) else True
        coefficient = weights - signal if proposal else -signal  # [K, B]
        grad = (coefficient.unsqueeze(-1) * (b - probs)).sum(0)  # [B, D]
        surrogate = (weights * values).sum(0).mean()  # ∇_θ: −mean_rows ∇_θ L_K
        chain_surrogate = (coefficient * values).sum(0).mean()  # lower layers' −∇ L_K
        return Estimate(
            grad=grad,
            values=values,
            stats={"train_bound": bound.mean()},
            surrogate=surrogate,
            chain_surrogate=chain_surrogate,
        )
