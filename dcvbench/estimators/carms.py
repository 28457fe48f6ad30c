"""CARMS: K mutually antithetic categorical samples, importance-weighted leave-one-out (``carms``).

Dimitriev & Zhou, *CARMS: Categorical-Antithetic-REINFORCE Multi-Sample Gradient Estimator*,
NeurIPS 2021. The categorical ARMS: K samples that are each exactly ``Categorical(π)`` but negatively
dependent (fewer duplicates than independent draws), and a leave-one-out estimator whose pairs are
reweighted by ``r_ij = π_i π_j / q_ij`` — ``q_ij`` the probability that one sample takes class ``i``
and another class ``j`` under the coupling — which makes every pair count as an independent one.

The coupling is the stick-breaking one of the authors' code (``StickBreakingCategorical``,
``grad_type=sbcarms``): a variable's classes are visited from the least probable up, stage ``t``
stopping at class ``(t)`` with the conditional probability ``β_t = π_(t) / Σ_{s≥t} π_(s)``, and the
K samples' stage-``t`` decisions share one Dirichlet copula
(:func:`~dcvbench.latent.noise.dirichlet_copula`), each stage's independently. For two classes this
is ARMS exactly (one stage: the rarer class where ``c < min(θ, 1 − θ)``). Its ratio is closed-form
and costs O(C) per variable. The code's default coupling, by inverse CDF (``InverseCategorical``),
needs a copula rectangle averaged over class orders for each ``q_ij``, and draws that order
independently per sample while its ``q_ij`` assumes one order shared by both samples (biased).
"""

from __future__ import annotations

import torch
from torch import Tensor

from dcvbench.estimators.base import Estimate, Estimator, EstimatorInfo
from dcvbench.estimators.evaluation import evaluate
from dcvbench.estimators.registry import register
from dcvbench.latent.noise import dirichlet_copula, dirichlet_copula_both_below
from dcvbench.objectives import Objective


def stick_breaking(probs: Tensor) -> tuple[Tensor, Tensor]:
    """A categorical variable as a sequence of stop-or-pass stages, least probable class first.

    ``probs [..., C]`` → ``order [..., C]`` (the class of each stage: ascending probability, ties in
    class order) and ``stop [..., C]``, ``β_t = π_(t) / Σ_{s≥t} π_(s)``, the probability of stopping
    at stage ``t`` once there (``β_C = 1``). The ascending order keeps ``β_t ≤ ½`` before the last
    stage and ``≤ ⅓`` before the last two, where the copula's pair probabilities are well conditioned.
    """
    ascending, order = torch.sort(probs, dim=-1, stable=True)  # [..., C]
    remaining = ascending.flip(-1).cumsum(-1).flip(-1)  # Σ_{s≥t} π_(s)
    return order, ascending / remaining


def antithetic_categorical(order: Tensor, stop: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """K mutually antithetic one-hot samples, each exactly ``Categorical(π)``, from the stages of
    :func:`stick_breaking` (``order``, ``stop`` ``[B, N, C]``) and uniforms ``u [K, B, N, C]``.

    Stage ``t`` of every sample reads the ``t``-th uniform, coupled over the K samples by the
    Dirichlet copula ``c``; sample ``k`` takes the class of the first stage with ``c_{k,t} < β_t``.
    A sample reaching stage ``t`` has passed the earlier stages, whose values are independent of
    stage ``t``'s, so it stops there with probability ``β_t``: its class is ``(t)`` with probability
    ``Π_{s<t}(1 − β_s) β_t = π_(t)``. Returns the samples ``[K, B, N, C]`` and the stage each stopped
    at, ``[K, B, N]`` (what the pair weights read).
    """
    stops = dirichlet_copula(u) < stop  # [K, B, N, C]
    stops[..., -1] = True  # β_C = 1: every sample stops by the last stage, even a copula value rounded to 1
    stage = stops.to(torch.uint8).argmax(-1)  # the first stop: [K, B, N]
    classes = order.expand_as(u).gather(-1, stage.unsqueeze(-1))  # [K, B, N, 1]
    return torch.zeros_like(u).scatter_(-1, classes, 1.0), stage


def parting_ratio(stop: Tensor, k: int) -> Tensor:
    """``r_ij = π_i π_j / q_ij`` for two of K samples of :func:`antithetic_categorical` that take
    different classes ``i ≠ j``, by the earlier of the two classes' stages ``s``: ``stop [B, N, C]`` →
    ``[B, N, C−1]`` (two different classes part before the last stage).

    With ``J(x) = P(c_a < x, c_b < x)`` (:func:`~dcvbench.latent.noise.dirichlet_copula_both_below`),
    two samples both pass stage ``v`` with probability ``1 − 2β_v + J(β_v)`` and part at stage ``s``
    (one stops, the other passes) with ``β_s − J(β_s)``; after that the one still going is independent
    of the other. For classes at stages ``s < t``, ``q = Π_{v<s}(1 − 2β_v + J(β_v)) · (β_s − J(β_s)) ·
    Π_{s<v<t}(1 − β_v) · β_t``, so the ratio depends on the earlier stage only::

        r = Π_{v<s} (1 − β_v)² / (1 − 2β_v + J(β_v)) · β_s(1 − β_s) / (β_s − J(β_s)).

    Every such ``q_ij`` is positive, which unbiasedness needs.
    """
    parting = stop[..., :-1]  # [B, N, C−1]
    both_below = dirichlet_copula_both_below(parting, k)  # J(β_s)
    tiny = torch.finfo(stop.dtype).tiny  # a class of probability 0 (never sampled) gets weight 0
    split = parting * (1.0 - parting) / (parting - both_below).clamp(min=tiny)  # [B, N, C−1]
    passing, passing_below = parting[..., :-1], both_below[..., :-1]  # stages before the last two
    both_pass = (1.0 - passing).pow(2) / (1.0 - 2.0 * passing + passing_below)  # [B, N, C−2]
    reach = torch.cat([torch.ones_like(split[..., :1]), both_pass.cumprod(-1)], -1)  # [B, N, C−1]
    return reach * split


def pair_ratio(stage: Tensor, by_stage: Tensor) -> Tensor:
    """``r(b_k, b_j)`` for every two samples: their stages ``[K, B, N]`` and :func:`parting_ratio`
    ``[B, N, C−1]`` → ``[K, K, B, N]``; 0 for two samples of one class (their scores are equal, so
    their terms cancel whatever the weight) and between a sample and itself."""
    k = stage.shape[0]
    earlier = torch.minimum(stage.unsqueeze(1), stage.unsqueeze(0))  # [K, K, B, N]
    # Equal stages can be the last one, beyond by_stage: clamp the index, the weight is 0 there anyway.
    earlier = earlier.clamp(max=by_stage.shape[-1] - 1).unsqueeze(-1)  # [K, K, B, N, 1]
    ratio = by_stage.expand(k, k, *by_stage.shape).gather(-1, earlier).squeeze(-1)  # [K, K, B, N]
    return torch.where(stage.unsqueeze(1) == stage.unsqueeze(0), torch.zeros_like(ratio), ratio)


def carms_gradient(values: Tensor, b: Tensor, probs: Tensor, ratio: Tensor) -> Tensor:
    """``g_n = 1/(K(K−1)) Σ_k (b_kn − π_n) Σ_{j≠k} r_n(b_kn, b_jn) (f_k − f_j)``: values ``[K, B]``,
    samples ``b [K, B, N, C]``, probs ``[B, N, C]``, pair weights ``ratio [K, K, B, N]`` → ``[B, N, C]``.

    With ``r ≡ 1`` this is ``rloo``'s formula. Each variable's weight is that variable's own: the
    other variables of a sample are independent of it, so they do not change the pair's expectation.
    """
    k = values.shape[0]
    differences = values.unsqueeze(1) - values.unsqueeze(0)  # f_k − f_j: [K, K, B]
    signal = (ratio * differences.unsqueeze(-1)).sum(1)  # [K, B, N]
    return (signal.unsqueeze(-1) * (b - probs)).sum(0) / (k * (k - 1))  # [B, N, C]


@register(
    EstimatorInfo(
        name="carms",
        summary="CARMS: K antithetic categorical samples (Dirichlet copulas), pair-weighted leave-one-out",
        unbiased=True,
        needs_input_grad=False,
        min_k=2,
        families=("categorical",),
        problems=("toy", "vae", "user"),  # structured prediction's latents are bits
        order=95,  # after arms, its two-class case
    )
)
class CARMS(Estimator):
    """``g = 1/(K(K−1)) Σ_k ∇_η log q(b_k) Σ_{j≠k} r(b_k, b_j) (f_k − f_j)``, per variable,
    ``r_ij = π_i π_j / q_ij``, ``b_1..b_K`` from :func:`antithetic_categorical`.

    Dimitriev & Zhou, NeurIPS 2021. Unbiased: in the symmetric form ``Σ_{k<j} (f_k − f_j)(b_k − b_j)
    r(b_k, b_j)`` each pair's term vanishes on equal classes, and weighting by ``r`` turns the
    expectation under the coupling's ``q_ij`` into one under independent ``π_i π_j`` for every
    ``i ≠ j`` — that of ``rloo``. Two classes: ``arms``; independent samples (``r = 1``): ``rloo``.
    """

    def estimate(self, logits: Tensor, f: Objective, noise: Tensor) -> Estimate:
        k = noise.shape[0]
        probs = self.family.probs(logits)  # [B, N, C]
        order, stop = stick_breaking(probs)  # [B, N, C] each
        b, stage = antithetic_categorical(order, stop, noise)  # [K, B, N, C], [K, B, N]
        evaluation = evaluate(f, b, with_input_grad=False)
        ratio = pair_ratio(stage, parting_ratio(stop, k))  # [K, K, B, N]
        grad = carms_gradient(evaluation.values.detach(), b, probs, ratio)
        return Estimate(grad=grad, values=evaluation.values, param_grads=evaluation.param_grads)
