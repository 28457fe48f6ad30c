"""Gradient variance at a fixed point, from many independent estimates drawn at once.

The ``resample`` definition (DESIGN §4.3): at fixed parameters, draw M independent estimates and
average the per-coordinate variance over coordinates. Draws are vectorised by tiling the rows of
``logits``: a chunk of ``c`` draws is one call of the estimator on ``c·B`` rows, so the estimator's
own batch dimension carries the draws. Chunks keep memory bounded; their moments are merged exactly
(Chan et al.'s parallel variance update), in float64. Logits are ``[B, *event]`` — ``[B, D]`` for
binary latents, ``[B, N, C]`` for categorical ones — and estimates have their shape.

Where the exact gradient ``∇`` is known, the same draws also measure how good the estimates are
(DESIGN §3.9, :class:`ErrorMoments`): the bias norm, the mean squared error and the cosine to ``∇``,
each with its standard error, from sums that stream over the chunks as the moments do.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from dcvbench.estimators import ControlVariateEstimator, Estimator, measuring
from dcvbench.objectives import Objective

# Elements of the largest [K, rows, *event] sample tensor in one chunk: about 32 MB in float64.
CHUNK_ELEMENTS = 4_000_000
# The smallest bias that bias_z resolves, in units of the study dtype's machine epsilon relative to the
# largest exact coordinate: below it an error is rounding. An estimator exact on an objective
# (IndeCateR on a separable toy) errs by rounding alone, with a rounding-sized standard error
# (measured in float64: up to 1.3e-13 and 1e-16 of the gradient), whose ratio means nothing; an
# estimator with real variance never resolves a bias this small.
ROUNDING_EPS = 1e4


@runtime_checkable
class Tileable(Protocol):
    """An objective whose values depend on the row (a VAE's ``f`` depends on each row's image):
    ``tile(times)`` is the same objective over ``times`` stacked copies of its rows."""

    def tile(self, times: int) -> Objective: ...


@dataclass(frozen=True)
class Moments:
    """Count, mean and sum of squared deviations of estimates, per coordinate (float64)."""

    count: int
    mean: Tensor  # [B, *event]
    squares: Tensor  # [B, *event]  Σ (g − mean)²

    @classmethod
    def of(cls, grads: Tensor) -> Moments:
        """Moments of ``grads [M, B, *event]`` (M draws of a ``[B, *event]`` estimate)."""
        # One float64 copy, worked on in place: for [M, P] chunks of encoder gradients, allocating
        # (g − mean) and its square cost more than the arithmetic. Same values as the plain formula.
        deviations = grads.to(torch.float64, copy=True)
        mean = deviations.mean(0)
        deviations.sub_(mean).square_()
        return cls(grads.shape[0], mean, deviations.sum(0))

    def merge(self, other: Moments) -> Moments:
        count = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / count)
        squares = self.squares + other.squares + delta.pow(2) * (self.count * other.count / count)
        return Moments(count, mean, squares)

    @property
    def variance(self) -> Tensor:
        """Unbiased per-coordinate variance ``[B, *event]``."""
        return self.squares / (self.count - 1)


# Groups of draws behind the bias norm's standard error (ErrorMoments): 32·31 pairs of groups estimate
# the spread of the error well, and their sums stay small beside one chunk of estimates.
ERROR_GROUPS = 32


@dataclass(frozen=True)
class GradientQuality:
    """How close estimates ``ĝ`` come to the exact gradient ``∇``, each with its standard error.

    ``bias_norm``: ``‖E ĝ − ∇‖ / ‖∇‖``; ``mse``: ``E‖ĝ − ∇‖²`` (``= ‖E ĝ − ∇‖² + tr Var ĝ``);
    ``cosine``: ``E[⟨ĝ, ∇⟩ / (‖ĝ‖‖∇‖)]``, one estimate at a time (0 for an estimate of zero).
    Norms run over every coordinate of the point, all rows' logits together. The bias norm and the
    cosine are NaN where ``‖∇‖ = 0`` (no direction to compare with); how the standard errors are
    derived: :class:`ErrorMoments`.
    """

    bias_norm: float
    bias_norm_se: float
    mse: float
    mse_se: float
    cosine: float
    cosine_se: float


@dataclass(frozen=True)
class ErrorMoments:
    """Sums over draws of ``ĝ`` ``[B, *event]`` that give its :class:`GradientQuality` against ``∇``.

    Draw ``m`` (counting over all merged chunks) joins group ``m mod G``, ``G`` = :data:`ERROR_GROUPS`.

    - **MSE**, **cosine**: means of per-draw values, ``e_m = ‖ĝ_m − ∇‖²`` and ``c_m``; s.e. = sample
      s.d. / √M.
    - **Bias norm**: ``Û = (M‖ḡ − ∇‖² − mean_m e_m) / (M − 1)`` (``= ‖ḡ − ∇‖² − tr S / M``, ``S`` the
      sample covariance) is unbiased for ``β² = ‖E ĝ − ∇‖²``, where the plain ``‖ḡ − ∇‖²`` is too high
      by ``tr Var ĝ / M`` — the whole of it for an unbiased estimator. Also ``mse = Û + tr S`` exactly.
      Its variance (a U-statistic's, Hoeffding) is ``4 bᵀΣb / M + 2 tr(Σ²) / (M(M − 1))``, with ``b``
      the bias and ``Σ = Var ĝ``; both are estimated without any ``P × P`` matrix from the ``G`` group
      means ``d_g − ∇`` (each of covariance ``C = Σ/n``, ``n = M/G``): with ``A_gh = ⟨d_g − ∇, d_h − ∇⟩``,
      ``E A_gh² = tr C² + 2bᵀCb + β⁴``, ``E A_gh A_gl = bᵀCb + β⁴``, ``E A_gh A_kl = β⁴`` over distinct
      indices, each averaged over all such index tuples (unbiased when groups are equal in size; here
      they differ by at most one draw), and ``bᵀCb`` and ``tr C²`` clipped at 0 — which errs towards
      a larger s.e. where the bias is near 0. Then ``β = √Û₊`` and its s.e. is ``√(Û₊ + s) − √Û₊``
      (``s`` the s.e. of ``Û``): the delta method's ``s / (2β)`` once the bias is resolved
      (``Û ≫ s``), and ``√s`` — the smallest norm the draws tell from zero — when it is not. A norm is
      never negative: an unbiased estimator shows a bias norm of the order of its s.e., not 0.
    """

    exact: Tensor  # [B, *event] float64
    group_sums: Tensor  # [G, B·Π event] float64: Σ ĝ over each group's draws
    group_counts: Tensor  # [G]
    errors: Moments  # of ‖ĝ − ∇‖² per draw: [] (0-d)
    cosines: Moments  # of ⟨ĝ, ∇⟩ / (‖ĝ‖‖∇‖) per draw: []

    @classmethod
    def of(cls, grads: Tensor, exact: Tensor) -> ErrorMoments:
        """Sums of ``grads [M, B, *event]`` (M draws) against ``exact [B, *event]``."""
        draws = grads.shape[0]
        exact = exact.to(torch.float64)
        truth = exact.reshape(-1)  # [P]
        flat = grads.to(torch.float64, copy=True).reshape(draws, -1)  # [M, P], worked on in place
        norms = flat.norm(dim=1) * truth.norm()  # [M]
        cosines = torch.where(norms > 0, flat @ truth / norms, torch.zeros_like(norms))
        groups = torch.arange(draws, device=flat.device) % ERROR_GROUPS  # [M]
        sums = flat.new_zeros(ERROR_GROUPS, flat.shape[1]).index_add_(0, groups, flat)
        counts = torch.bincount(groups, minlength=ERROR_GROUPS)
        errors = flat.sub_(truth).square_().sum(1)  # [M]
        return cls(exact, sums, counts, Moments.of(errors), Moments.of(cosines))

    def merge(self, other: ErrorMoments) -> ErrorMoments:
        # other's draw j is draw self.count + j overall: its group j is group (j + self.count) mod G.
        shift = self.count % ERROR_GROUPS
        return ErrorMoments(
            self.exact,
            self.group_sums + other.group_sums.roll(shift, 0),
            self.group_counts + other.group_counts.roll(shift, 0),
            self.errors.merge(other.errors),
            self.cosines.merge(other.cosines),
        )

    @property
    def count(self) -> int:
        return self.errors.count

    @property
    def quality(self) -> GradientQuality:
        draws = self.count
        truth = self.exact.reshape(-1)  # [P]
        scale = float(truth.norm())
        mse = float(self.errors.mean)
        mean_error = self.group_sums.sum(0) / draws - truth  # ḡ − ∇: [P]
        bias_sq = max((draws * float(mean_error.square().sum()) - mse) / (draws - 1), 0.0)  # Û₊
        bias, rise = math.sqrt(bias_sq), math.sqrt(bias_sq + math.sqrt(self._bias_sq_variance()))
        cosine = float(self.cosines.mean) if scale > 0 else math.nan
        return GradientQuality(
            bias_norm=bias / scale if scale > 0 else math.nan,
            bias_norm_se=(rise - bias) / scale if scale > 0 else math.nan,
            mse=mse,
            mse_se=_standard_error(self.errors),
            cosine=cosine,
            cosine_se=_standard_error(self.cosines) if scale > 0 else math.nan,
        )

    def _bias_sq_variance(self) -> float:
        """The variance of ``Û`` (class docstring), from the group means; NaN with under 4 groups."""
        filled = self.group_counts > 0
        g, draws = int(filled.sum()), self.count  # groups, draws
        if g < 4:
            return math.nan
        errors = self.group_sums[filled] / self.group_counts[filled, None] - self.exact.reshape(-1)  # [G, P]
        inner = errors @ errors.T  # [G, G]
        inner.fill_diagonal_(0.0)  # only pairs of distinct groups
        total, squares = float(inner.sum()), float(inner.square().sum())
        rows = float(inner.sum(1).square().sum())
        pairs = squares / (g * (g - 1))  # tr C² + 2bᵀCb + β⁴
        triples = (rows - squares) / (g * (g - 1) * (g - 2))  # bᵀCb + β⁴
        quadruples = (total**2 - 4 * rows + 2 * squares) / (g * (g - 1) * (g - 2) * (g - 3))  # β⁴
        # Both are ≥ 0; unclipped, the noise of the first's estimate near b = 0 can outweigh the second.
        projected = max(triples - quadruples, 0.0)  # bᵀCb
        spread = max(pairs - 2 * triples + quadruples, 0.0)  # tr C²
        size = draws / g
        return 4 * projected / g + 2 * size**2 * spread / (draws * (draws - 1))


def _standard_error(moments: Moments) -> float:
    """Standard error of the mean of scalar draws: sample s.d. / √M."""
    return math.sqrt(float(moments.variance) / moments.count)


@dataclass(frozen=True)
class VarianceResult:
    """The estimates' per-coordinate moments and how long drawing them took; with the exact gradient,
    their errors against it."""

    moments: Moments
    seconds: float
    errors: ErrorMoments | None = None

    @property
    def draws(self) -> int:
        return self.moments.count

    @property
    def variance(self) -> float:
        """Mean over coordinates of the per-coordinate variance."""
        return float(self.moments.variance.mean())

    @property
    def seconds_per_estimate(self) -> float:
        return self.seconds / self.draws

    def bias_z(self, exact: Tensor) -> Tensor:
        """``|mean − exact| / s.e.`` per coordinate; 0 where the error is below :data:`ROUNDING_EPS`
        machine epsilons (of ``exact``'s dtype, the study's) of the largest exact coordinate: rounding,
        not bias."""
        rounding = ROUNDING_EPS * torch.finfo(exact.dtype).eps
        exact = exact.to(torch.float64)
        error = (self.moments.mean - exact).abs()
        standard_error = (self.moments.variance / self.draws).sqrt()
        z = error / standard_error
        return torch.where(error <= rounding * exact.abs().max(), torch.zeros_like(z), z)


def draw_estimates(
    estimator: Estimator,
    logits: Tensor,
    f: Objective,
    k: int,
    draws: int,
    generator: torch.Generator,
    chunk: int | None = None,
) -> Iterator[tuple[Tensor, Tensor | None]]:
    """``draws`` independent estimates at ``logits [B, *event]``, as chunks ``(grads, control)``.

    Each chunk is one estimator call on ``c`` tiled copies of the rows: ``grads`` and ``control``
    (``None`` for estimators without one) are ``[c, B, *event]``. Row ``r`` of a tiled batch belongs
    to row ``r mod B``. An objective whose values depend on the row is tiled with it
    (:class:`Tileable`); others (the toy) are used as they are. ``chunk`` draws at most per call
    (default: about :data:`CHUNK_ELEMENTS` sample elements). The estimator runs in eval mode
    (:func:`measuring`) and its learned state is never updated.
    """
    shape = logits.shape  # [B, *event]
    per_sample = estimator.noise_per_sample()  # gumbel-rao draws 1 + M per sample
    if estimator.info.neighbour_evals:  # IndeCateR holds every one-variable change of each sample
        per_sample += estimator.family.neighbour_count(tuple(shape[1:]))
    per_draw = (k + 1) * logits.numel() * per_sample
    chunk = chunk or max(1, CHUNK_ELEMENTS // max(1, per_draw))
    done = 0
    while done < draws:
        size = min(chunk, draws - done)
        tiled_f = f.tile(size) if isinstance(f, Tileable) else f
        tiled_logits = logits.detach().repeat(size, *[1] * (logits.dim() - 1))  # [c·B, *event]
        with measuring(estimator):
            estimate = estimator(tiled_logits, tiled_f, k, generator)
        control = estimate.control
        yield (
            estimate.grad.reshape(size, *shape),
            None if control is None else control.reshape(size, *shape),
        )
        done += size


def resample_variance(
    estimator: Estimator,
    logits: Tensor,
    f: Objective,
    k: int,
    draws: int,
    generator: torch.Generator,
    on_draws: Callable[[int], None] | None = None,
    exact: Tensor | None = None,
) -> VarianceResult:
    """Variance of ``estimator`` at ``logits [B, *event]`` from ``draws`` independent estimates;
    ``on_draws(n)`` is told of each chunk of ``n`` draws done (progress). Given the ``exact`` gradient
    ``[B, *event]``, the same draws' errors against it too (:attr:`VarianceResult.errors`)."""
    if draws < 2:
        raise ValueError(f"variance needs at least 2 draws, got {draws}")
    moments: Moments | None = None
    errors: ErrorMoments | None = None
    start = time.perf_counter()
    for grads, _ in draw_estimates(estimator, logits, f, k, draws, generator):
        chunk = Moments.of(grads)
        moments = chunk if moments is None else moments.merge(chunk)
        if exact is not None:
            chunk_errors = ErrorMoments.of(grads, exact)
            errors = chunk_errors if errors is None else errors.merge(chunk_errors)
        if on_draws is not None:
            on_draws(grads.shape[0])
    _synchronize(logits.device)
    return VarianceResult(moments, time.perf_counter() - start, errors)


def optimal_alpha(
    estimator: ControlVariateEstimator,
    logits: Tensor,
    f: Objective,
    k: int,
    draws: int,
    generator: torch.Generator,
) -> float:
    """The variance-minimising ``α* = −E⟨g₀, h⟩ / E‖h‖²`` at ``logits``, from ``draws`` estimates.

    For ``g = g₀ + α h`` the variance ``E‖g‖² − ‖E g‖²`` is minimised there, as ``E g`` does not
    depend on ``α``. Use draws separate from those that then measure the variance.
    """
    current = float(estimator.alpha.detach())
    cross = torch.zeros((), dtype=torch.float64, device=logits.device)  # Σ ⟨g₀, h⟩
    norm = torch.zeros((), dtype=torch.float64, device=logits.device)  # Σ ‖h‖²
    for grads, control in draw_estimates(estimator, logits, f, k, draws, generator):
        base = grads - current * control  # g₀
        cross += (base * control).sum().to(torch.float64)
        norm += control.pow(2).sum().to(torch.float64)
    best = -float(cross) / float(norm) if float(norm) > 0 else 0.0
    return best if math.isfinite(best) else 0.0


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
