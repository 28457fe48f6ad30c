"""Gapped straight-through (``gst``; biased): straight-through through logits moved so the sample leads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dcvbench.estimators.base import Estimate, EstimatorError, EstimatorInfo, Stat
from dcvbench.estimators.evaluation import evaluate
from dcvbench.estimators.options import TEMPERATURE, Option
from dcvbench.estimators.registry import register
from dcvbench.estimators.relaxed import RelaxedEstimator
from dcvbench.latent import BINARY, LatentFamily
from dcvbench.objectives import Objective

GST_GAP = Option(
    "gst_gap",
    "1",
    "GST's gap: 1, the constant (the paper's GST-1.0), or p, −log(1 − π_b)/π_b of the sample (GST-p)",
    kind=str,
    choices=("1", "p"),
)


def gapped_bits(logits: Tensor, b: Tensor, gap: str) -> Tensor:
    """The gapped logit of bits, ``s·max(s·η, γ)`` with ``s = 2b − 1``: ``[K, B, D]``.

    The two-class case with logits ``[η, 0]``: the sampled outcome's logit is raised to the larger
    of the two, the other's lowered to at most that less ``γ``; their difference is this. ``γ`` is
    1, or for GST-p ``−log(1 − π_b)/π_b = softplus(sη)/σ(sη)`` with ``π_b = σ(sη)``.
    """
    sign = 2.0 * b - 1.0  # s: [K, B, D]
    toward = sign * logits  # sη: the sample's logit less the other outcome's
    threshold = F.softplus(toward) / torch.sigmoid(toward) if gap == "p" else torch.ones_like(toward)
    return sign * torch.maximum(toward, threshold)


def gapped_classes(logits: Tensor, b: Tensor, gap: str) -> Tensor:
    """The gapped logits of categorical variables: ``[K, B, N, C]``.

    The sampled class's logit is raised to the largest, ``max_i η_i``; every other is lowered to at
    most ``max_i η_i − γ``, so that the sample leads by at least the gap ``γ`` (1, or for GST-p
    ``−log(1 − π_b)/π_b``, ``π_b`` the sampled class's probability).
    """
    top = logits.amax(-1, keepdim=True)  # max_i η_i: [B, N, 1]
    if gap == "p":
        log_total = torch.logsumexp(logits, -1, keepdim=True)  # [B, N, 1]
        chosen = (b * torch.exp(logits - log_total)).sum(-1, keepdim=True)  # π_b: [K, B, N, 1]
        # log(1 − π_b) without cancellation: log1p where π_b is small, the other classes' log-sum-exp
        # where it is close to 1 (in float32 π_b rounds to 1 while 1 − π_b is still, say, e^{−30}).
        others = torch.logsumexp(torch.where(b > 0, -torch.inf, logits), -1, keepdim=True) - log_total
        threshold = -torch.where(chosen < 0.5, torch.log1p(-chosen), others) / chosen  # [K, B, N, 1]
    else:
        threshold = torch.ones_like(top)
    return torch.where(b > 0, top, torch.minimum(logits, top - threshold))


# The gapped logits per latent family: (logits [B, *event], b [K, B, *event], gap) → [K, B, *event].
GAPPED_LOGITS = {"binary": gapped_bits, "categorical": gapped_classes}


@register(
    EstimatorInfo(
        name="gst",
        summary=(
            "gapped straight-through: f at the hard b forward, backward through softmax of logits "
            "moved so that b leads by a gap (biased)"
        ),
        unbiased=False,
        needs_input_grad=True,
        families=("binary", "categorical"),
        order=113,  # after gumbel-rao, which it replaces by one deterministic perturbation
        stats=(Stat("temperature"),),
        relaxation="straight-through",
    )
)
class GappedStraightThrough(RelaxedEstimator):
    """``g = (1/K) Σ_k [J(z_k)/τ]ᵀ ∇_b f(b_k)``, ``z_k = p(m(η, b_k)/τ)``, ``b_k ~ q_η``.

    Fan, Chi, Rudnicky & Ramadge, *Training Discrete Deep Generative Models via Gapped
    Straight-Through Estimator*, ICML 2022 (DESIGN §3.7). Gumbel-Rao averages the straight-through
    Gumbel-softmax Jacobian over noise given the sample; GST keeps what the authors found essential
    in it and needs no noise: logits ``m`` moved deterministically so that the sample is their
    argmax (the forward and backward passes agree) and leads the other classes by a gap ``γ``
    (:func:`gapped_classes`; bits, the two-class case, :func:`gapped_bits`). ``J(z) = diag(z) − zzᵀ``
    (``z(1 − z)`` for a bit, :meth:`~dcvbench.latent.LatentFamily.covariance_product`).

    As the authors' code (``chijames/GST``, ``gst_mover``) builds it: the shifts are computed from
    detached logits, so ``m = η + const`` and ``∂z/∂η = J(z)/τ`` (their centring of ``m`` changes
    no softmax and is left out; ``nd_gst``, the shifts left attached, is their ablation). The gap
    variants are their ``--mode gst-1.0`` (``γ = 1``, the default here, the one their README
    examples run) and ``gst-p`` (``γ = −log(1 − π_b)/π_b``, which grows as the sample becomes
    certain): ``--gst-gap 1|p``. Temperature 1 by default, their code's default. One evaluation
    of ``f`` and of ``∇_b f`` per sample.
    """

    options = (TEMPERATURE, GST_GAP)
    default_temperature = 1.0

    def __init__(
        self, family: LatentFamily = BINARY, temperature: float | None = None, gst_gap: str = GST_GAP.default
    ):
        super().__init__(family, temperature)
        problem = GST_GAP.validate(gst_gap)
        if problem is not None:
            raise EstimatorError(problem)
        self.gst_gap = gst_gap

    def estimate(self, logits: Tensor, f: Objective, noise: Tensor) -> Estimate:
        b = self.family.sample(logits, noise)  # [K, B, *event]
        evaluation = evaluate(f, b, with_input_grad=True)  # values [K, B], input_grad [K, B, *event]
        gapped = GAPPED_LOGITS[self.family.name](logits, b, self.gst_gap)  # m: [K, B, *event]
        relaxed = self.family.probs(gapped / self.temperature)  # z: [K, B, *event]
        grad = self.family.covariance_product(relaxed, evaluation.input_grad).mean(0) / self.temperature
        return Estimate(
            grad=grad,
            values=evaluation.values,
            param_grads=evaluation.param_grads,
            stats={"temperature": self.temperature_stat(grad)},
        )
