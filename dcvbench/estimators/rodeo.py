"""RODEO: REINFORCE leave-one-out with control variates from a discrete Stein operator (``rodeo``).

Shi, Zhou, Hwang, Titsias & Mackey, *Gradient Estimation with Discrete Stein Operators*, NeurIPS 2022
(arXiv 2202.09497); the estimator of the authors' code (``thjashin/rodeo``: ``discrete_stein_avg``
for K = 2, ``discrete_stein_output_avg`` for K > 2, the same estimator at K = 2). DESIGN §3.8.

**Stein operator.** The Gibbs kernel that picks one of the ``N`` variables uniformly and resamples
it from ``q`` leaves ``q`` invariant, so for *any* function ``h`` the expected change of ``h`` in one
move has mean zero under ``q``. The kernel moves only to the ``M`` one-variable changes ``y_m`` of
``x`` (bit flips, ``M = D``; a variable set to another class, ``M = N(C−1)``), so with ``w_m`` the
probability of ``y_m``'s new value under ``q``::

    (A h)(x) = (1/N) Σ_m w_m (h(y_m) − h(x)),        E_{x~q} (A h)(x) = 0

**Control functions.** Sample ``k``'s are built from the *other* samples only: with the first-order
Taylor increment of ``f`` around ``b_j``, ``t_j(y) = ⟨∇f_j, y − b_j⟩``, and a small network
``ψ: (t, f) → ℝ²`` (:class:`SteinControl`)::

    h_k(y) = (1/(K−1)) Σ_{j≠k} ψ(t_j(y), f_j) = (h_k⁰(y), h_k¹(y))

**Estimator.** With the score ``s_k = b_k − p``, a scalar control ``c_k = (A h_k⁰)(b_k)`` and a
vector one ``v_k = (A H_k)(b_k)`` with ``H_k(y) = h_k¹(y)·(y − p)`` (``h_k¹`` times the score at ``y``)::

    F_k = f_k + α c_k
    g   = (1/K) Σ_k [ (f_k − (1/(K−1)) Σ_{j≠k} F_j) s_k + β v_k ]

Unbiased for every ``α``, ``β`` and ``ψ``: ``f_k s_k`` less the others' ``f_j s_k`` is RLOO; ``c_j``
(``j ≠ k``) is ``A`` at ``b_j`` of a function fixed by ``b_{−j}`` (``b_k`` among them), so its mean
over ``b_j`` given the rest is 0 and ``E[c_j s_k] = 0``; ``v_k`` is ``A`` at ``b_k`` of a function
fixed by ``b_{−k}``. Sample ``k``'s own signal is ``f_k``, not ``F_k``: ``c_k s_k`` has a non-zero
mean. With ``α = β = 0`` it is RLOO.

**Learned parts**, trained as the authors do: ``α`` and ``β`` start at 0, ``ψ`` at Glorot-uniform
weights and zero biases (Keras's ``Dense``) from a fixed seed; after each estimate has been used,
one Adam step (lr ``control_lr``: the code's ``hyper_lr`` and ``control_lr``, both 1e-3) on the
mean of ``g²`` over rows and latents (the code's variance loss). ``g`` is unbiased for every value
of them, so this lowers its variance.

**Categorical latents** are our extension, not the paper's: the same Gibbs kernel over ``N``
categorical variables, whose one-variable changes set a variable to each of its other classes.

**Cost**: ``K`` evaluations of ``f`` and ``∇_b f`` (one backward pass, as ``rloo-dcv``), then ``ψ``
at ``K(K−1)·B·(M+1)`` points. ``t_j(y_m) = t_j(b_k) + ⟨∇f_j, y_m − b_k⟩`` and ``y_m − b_k`` is
non-zero on one variable, so the increments cost ``O(K²·B·D)``; ``ψ`` at the ``M + 1`` points of
one pair is piecewise linear in ``t`` and is evaluated from its kinks (:class:`SteinControl`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dcvbench.estimators.base import Estimate, EstimatorInfo, Stat
from dcvbench.estimators.evaluation import evaluate
from dcvbench.estimators.learned_control import LearnedControlEstimator
from dcvbench.estimators.options import CONTROL_LR
from dcvbench.estimators.registry import register
from dcvbench.estimators.score_function import leave_one_out_centre
from dcvbench.latent import BINARY, LatentFamily
from dcvbench.objectives import Objective

HIDDEN = 100  # hidden units of ψ (the authors' SteinControlNNSingleLayer)
NEGATIVE_SLOPE = 0.3  # of its LeakyReLU, as in the authors' code
# Numbers in ψ's interval tables and look-ups at once (4(H + 1) per sample and row, 4(M + 1) per pair):
# a variance study's chunk of draws has ~10⁵ rows, whose tables would not all fit in memory together.
BLOCK_ELEMENTS = 2**22


class SteinControl(nn.Module):
    """``ψ(t, v) = W₂ leaky_relu(w_t t + w_v v + c₁) + c₂`` ∈ ℝ²: the Taylor increment ``t`` and the
    other sample's value ``v``, each through its own ``Dense(1 → H)``, summed (the authors' network).

    Glorot-uniform weights from ``generator`` (no global random state) and zero biases, as Keras's
    ``Dense`` starts; ``W₂`` is not zero, but ``α = β = 0`` leaves ``ψ`` without effect at first.

    ``ψ`` is wanted at the ``P = M + 1`` points of a sample (itself and its neighbours) for one value
    ``v``, and there it is a piecewise-linear function of ``t``: with ``s = w_t`` and
    ``c = w_v v + c₁``, ``leaky_relu(z) = 0.3 z + 0.7 relu(z)``; the first part sums to a line in
    ``t``, and unit ``h`` of the second adds ``W₂_h (s_h t + c_h)`` on one side of its kink
    ``τ_h = −c_h / s_h`` only. Between consecutive kinks the units that are on do not change, so
    the coefficients of every interval are prefix sums over the sorted kinks, and each point looks
    its interval up: the network's values and gradients exactly, in ``O((H + P) log H)`` per value
    rather than ``O(H·P)``. (Measured, nonlinear VAE, K = 2, one thread: with the ``[P, H]``
    activations a step took 6–10× RLOO's, with the kinks 1.6×: benchmarks/run.py.)
    """

    def __init__(self, hidden: int, generator: torch.Generator):
        super().__init__()
        self.increment_layer = nn.utils.skip_init(nn.Linear, 1, hidden)
        self.value_layer = nn.utils.skip_init(nn.Linear, 1, hidden)
        self.output_layer = nn.utils.skip_init(nn.Linear, hidden, 2)
        for layer in (self.increment_layer, self.value_layer, self.output_layer):
            nn.init.xavier_uniform_(layer.weight, generator=generator)
            nn.init.zeros_(layer.bias)

    def forward(self, increments: Tensor, values: Tensor) -> Tensor:
        """``increments [..., P]`` that share ``values [...]`` → ``ψ`` ``[..., P, 2]``, in the
        network's dtype (it keeps its own precision)."""
        dtype = self.output_layer.weight.dtype
        t = increments.to(dtype).contiguous()  # [..., P]
        slope = self.increment_layer.weight.squeeze(-1)  # s: [H]
        offset = self.value_layer(values.to(dtype).unsqueeze(-1)) + self.increment_layer.bias  # c: [..., H]
        weight = self.output_layer.weight  # W₂: [2, H]
        batch = offset.shape[:-1]
        # leaky_relu(z) = 0.3 z + 0.7 relu(z). The first part, with c₂, is a line in t for each value:
        # 0.3 Σ_h W₂_h (s_h t + c_h) + c₂, as (t's coefficient, constant) for each output: [..., 4].
        line = torch.cat(
            [
                NEGATIVE_SLOPE * (weight @ slope).expand(*batch, 2),
                NEGATIVE_SLOPE * offset @ weight.T + self.output_layer.bias,
            ],
            -1,
        )
        # The second: unit h adds 0.7 W₂_h (s_h t + c_h) where it is on. A unit with s_h > 0 is on
        # above its kink −c_h/s_h, one with s_h < 0 below it; a flat one counts as rising, its kink
        # −∞ (on) or +∞ (off) as c_h > 0 or not (c_h = 0, NaN: off). With i kinks below t, the units
        # on are the falling ones less those before i, plus the rising ones before i: a prefix sum
        # of the units' terms, signed ±1 as s_h rises or falls.
        relu_weight = (1.0 - NEGATIVE_SLOPE) * weight
        terms = torch.cat(
            [(relu_weight * slope).expand(*batch, 2, -1), offset.unsqueeze(-2) * relu_weight], -2
        )
        sign = torch.where(slope >= 0, 1.0, -1.0).to(dtype)  # [H]
        all_falling = (terms * (1.0 - sign) / 2.0).sum(-1)  # [..., 4]
        kinks, order = (-offset / slope).detach().nan_to_num(nan=math.inf).sort(-1)  # [..., H]; no gradient
        signed = (terms * sign).gather(-1, order.unsqueeze(-2).expand_as(terms))  # [..., 4, H], sorted
        # Each interval's line, t's coefficient and constant for each output: [..., 4, H+1].
        table = F.pad(signed.cumsum(-1), (1, 0)) + (all_falling + line).unsqueeze(-1)
        interval = torch.searchsorted(kinks, t).unsqueeze(-2)  # [..., 1, P] in 0..H
        on = table.gather(-1, interval.expand(*batch, 4, t.shape[-1]))  # [..., 4, P]
        coefficient, constant = on.unflatten(-2, (2, 2)).unbind(-3)  # [..., 2, P] each
        return torch.addcmul(constant, coefficient, t.unsqueeze(-2)).transpose(-1, -2)  # [..., P, 2]


def gibbs_moves(family: LatentFamily, b: Tensor, probs: Tensor) -> tuple[Tensor, Tensor]:
    """The one-variable changes of samples ``b [K, B, *event]``, compactly: ``moves [R, K, B, *event]``
    and ``weights [R, K, B, N]``, ``R`` changes per variable (1 for a bit, ``C − 1`` for a class).
    Change ``(r, n)`` of ``b_k`` is ``b_k`` plus ``moves[r, k]`` on variable ``n``'s entries (zero
    elsewhere); ``weights[r, k, :, n]`` is the probability of its new value.

    Each variable is handed to :meth:`~dcvbench.latent.LatentFamily.neighbours` as an event of its
    own, so that its changes come out in one sample-shaped tensor rather than as ``M`` whole samples.
    """
    k, rows, *event = b.shape
    variables = family.variable_count(tuple(event))
    single = (1, *event[1:])  # one variable's event: (1,) or (1, C)
    changes = family.neighbours(b.reshape(k, rows * variables, *single), probs.reshape(-1, *single))
    moves = (changes.points - b.reshape(k, -1, *single)).reshape(-1, k, rows, *event)
    return moves, changes.probs.reshape(-1, k, rows, variables)


def gibbs_stein(at_neighbours: Tensor, at_sample: Tensor, weights: Tensor, variables: int) -> Tensor:
    """``(A h)(x) = (1/N) Σ_m w_m (h(y_m) − h(x))``, the Stein operator of the Gibbs kernel on
    ``N = variables`` variables: ``h`` at the changes ``at_neighbours [..., M]`` and at the sample
    ``at_sample [...]``, the probabilities of the changes' new values ``weights [..., M]``."""
    return (weights * (at_neighbours - at_sample.unsqueeze(-1))).sum(-1) / variables


def trailing(x: Tensor, dims: int) -> Tensor:
    """``x`` with ``dims`` more dimensions of size 1, to broadcast against an event."""
    return x.reshape(*x.shape, *(1,) * dims)


def other_samples(k: int, device: torch.device) -> Tensor:
    """``[K, K−1]``: row ``k`` lists every ``j ≠ k``, in order."""
    j = torch.arange(k - 1, device=device)
    return j + (j >= torch.arange(k, device=device).unsqueeze(1))


@register(
    EstimatorInfo(
        name="rodeo",
        summary="RLOO + discrete Stein control variates of learned Taylor surrogates; α, β, ψ learned",
        unbiased=True,
        needs_input_grad=True,
        min_k=2,
        families=("binary", "categorical"),
        order=92,  # with the successors of the double CV, after the first wave (whose figure colours stay)
        stats=(Stat("alpha"), Stat("beta")),
    )
)
class Rodeo(LearnedControlEstimator):
    """RODEO (Shi et al. 2022): ``g = (1/K) Σ_k [(f_k − mean_{j≠k}(f_j + α c_j)) s_k + β v_k]``.

    Args:
        family: the latents' family (bits: the paper; categorical: our extension).
        control_lr: Adam learning rate of ``α``, ``β`` and ``ψ``.
        hidden: hidden units of ``ψ``.
        seed: seed of ``ψ``'s initial weights. Fixed by default: the initial network is part of the
            estimator's definition, the same in every run.
    """

    options = (CONTROL_LR,)

    def __init__(
        self,
        family: LatentFamily = BINARY,
        control_lr: float = CONTROL_LR.default,
        hidden: int = HIDDEN,
        seed: int = 0,
    ):
        super().__init__(family)
        if hidden < 1:
            raise ValueError(f"hidden must be ≥ 1, got {hidden}")
        self.alpha = nn.Parameter(torch.zeros(()))
        self.beta = nn.Parameter(torch.zeros(()))
        self.network = SteinControl(hidden, torch.Generator().manual_seed(seed))
        # One Adam for all (LearnedControlEstimator): the authors' two, hyper_lr for α and β and
        # control_lr for ψ, have the same rate.
        self.make_optimizer(control_lr)

    def estimate(self, logits: Tensor, f: Objective, noise: Tensor) -> Estimate:
        family = self.family
        probs = family.probs(logits)  # [B, *event]
        b = family.sample(logits, noise)  # [K, B, *event]
        evaluation = evaluate(f, b, with_input_grad=True)
        values = evaluation.values.detach()  # [K, B]
        input_grad = evaluation.input_grad.detach()  # [K, B, *event]
        # In training, g keeps its graph to α, β and ψ: mean(g²) trains them (update).
        with torch.set_grad_enabled(self.training):
            scalar, vector = self.controls(b, probs, values, input_grad)  # c [K, B], v [K, B, *event]
            alpha, beta = self.alpha.to(logits.dtype), self.beta.to(logits.dtype)
            # f_k − mean_{j≠k} F_j = (f_k − mean_{j≠k} f_j) − α mean_{j≠k} c_j
            others_scalar = (scalar.sum(0) - scalar) / (scalar.shape[0] - 1)  # [K, B]
            signal = leave_one_out_centre(values) - alpha * others_scalar  # [K, B]
            grad = (trailing(signal, family.event_dims) * family.score(b, probs) + beta * vector).mean(0)
            learning = grad.pow(2).mean() if self.training else None
        return Estimate(
            grad=grad.detach(),
            values=evaluation.values,
            param_grads=evaluation.param_grads,
            stats={"alpha": self.alpha.detach().clone(), "beta": self.beta.detach().clone()},
            learning=learning,
        )

    def controls(self, b: Tensor, probs: Tensor, values: Tensor, input_grad: Tensor) -> tuple[Tensor, Tensor]:
        """``c_k = (A h_k⁰)(b_k)`` ``[K, B]`` and ``v_k = (A H_k)(b_k)`` ``[K, B, *event]``, in blocks of
        rows (rows are independent) so that ``ψ``'s tables stay within :data:`BLOCK_ELEMENTS`."""
        k, event = b.shape[0], b.shape[2:]
        hidden, points = self.network.output_layer.in_features, self.family.neighbour_count(event) + 1
        size = max(1, BLOCK_ELEMENTS // (4 * k * (hidden + (k - 1) * points)))
        splits = (b.split(size, 1), probs.split(size), values.split(size, 1), input_grad.split(size, 1))
        blocks = zip(*splits, strict=True)
        scalar, vector = zip(*(self._block_controls(*block) for block in blocks), strict=True)
        return torch.cat(scalar, 1), torch.cat(vector, 1)

    def _block_controls(
        self, b: Tensor, probs: Tensor, values: Tensor, input_grad: Tensor
    ) -> tuple[Tensor, Tensor]:
        family, dims = self.family, self.family.event_dims
        k, rows, *event = b.shape
        variables = family.variable_count(tuple(event))
        moves, weights = gibbs_moves(family, b, probs)  # [R, K, B, *event], [R, K, B, N]

        # t_j for every pair j ≠ k at the P points of b_k (b_k itself, then its changes), arranged by j:
        # ψ's kinks depend on f_j alone, so each j's are sorted once for all its partners k.
        partners = other_samples(k, b.device)  # [K, K−1]: partners[j, i] = k ≠ j
        grads = input_grad.unsqueeze(1)  # ∇f_j: [K, 1, B, *event]
        at_sample = family.reduce(grads * (b[partners] - b.unsqueeze(1))).unsqueeze(-1)  # [K, K−1, B, 1]
        # t_j(b_k + move) − t_j(b_k) = ⟨∇f_j, move⟩, on the moved variable only.
        along = (grads * moves[:, partners]).reshape(len(moves), k, k - 1, rows, variables, -1).sum(-1)
        along = along.permute(1, 2, 3, 0, 4).flatten(3)  # [K, K−1, B, R·N]
        increments = torch.cat([at_sample, at_sample + along], -1)  # [K, K−1, B, P]
        psi = self.network(increments.transpose(1, 2).flatten(2), values)  # [K, B, (K−1)·P, 2]
        psi = psi.to(b.dtype).unflatten(2, (k - 1, -1)).transpose(1, 2).flatten(0, 1)  # [K(K−1), B, P, 2]
        # h_k = mean_{j≠k} ψ(t_j(·), f_j): pair (j, i) adds to k = partners[j, i].
        control = psi.new_zeros(k, *psi.shape[1:]).index_add(0, partners.flatten(), psi) / (k - 1)

        flat_weights = weights.permute(1, 2, 0, 3).flatten(2)  # [K, B, R·N], in the order of the points
        scalar_h, scale_h = control.unbind(-1)  # h_k⁰, h_k¹: [K, B, P] each
        scalar = gibbs_stein(scalar_h[..., 1:], scalar_h[..., 0], flat_weights, variables)  # c: [K, B]
        # H(y) = h¹(y)(y − p) and y_m − p = s_k + move_m: A H = (A h¹) s_k + (1/N) Σ_m w_m h¹(y_m) move_m.
        stein_scale = gibbs_stein(scale_h[..., 1:], scale_h[..., 0], flat_weights, variables)  # [K, B]
        moved = weights * scale_h[..., 1:].unflatten(-1, (-1, variables)).permute(2, 0, 1, 3)  # [R, K, B, N]
        moved = (trailing(moved, dims - 1) * moves).sum(0) / variables  # [K, B, *event]
        vector = trailing(stein_scale, dims) * family.score(b, probs) + moved  # v: [K, B, *event]
        return scalar, vector

    def state_stats(self) -> dict[str, float]:
        return {"alpha": float(self.alpha.detach()), "beta": float(self.beta.detach())}
