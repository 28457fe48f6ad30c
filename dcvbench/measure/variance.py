"""Gradient variance at a fixed point, from many independent estimates drawn at once.

The ``resample`` definition (DESIGN §4.3): at fixed parameters, draw M independent estimates and
average the per-coordinate variance over coordinates. Draws are vectorised by tiling the rows of
``logits``: a chunk of ``c`` draws is one call of the estimator on ``c·B`` rows, so the estimator's
own batch dimension carries the draws. Chunks keep memory bounded; their moments are merged exactly
(Chan et al.'s parallel variance update), in float64. Logits are ``[B, *event]`` — ``[B, D]`` for
binary latents, ``[B, N, C]`` for categorical ones — and estimates have their shape.
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


@dataclass(frozen=True)
class VarianceResult:
    """The estimates' per-coordinate moments and how long drawing them took."""

    moments: Moments
    seconds: float

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
        """``|mean − exact| / s.e.`` per coordinate; 0 where both the error and the s.e. vanish."""
        error = (self.moments.mean - exact.to(torch.float64)).abs()
        standard_error = (self.moments.variance / self.draws).sqrt()
        z = error / standard_error
        return torch.where(error == 0, torch.zeros_like(z), z)


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
    chunk = chunk or max(1, CHUNK_ELEMENTS // max(1, (k + 1) * logits.numel()))
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
) -> VarianceResult:
    """Variance of ``estimator`` at ``logits [B, *event]`` from ``draws`` independent estimates;
    ``on_draws(n)`` is told of each chunk of ``n`` draws done (progress)."""
    if draws < 2:
        raise ValueError(f"variance needs at least 2 draws, got {draws}")
    moments: Moments | None = None
    start = time.perf_counter()
    for grads, _ in draw_estimates(estimator, logits, f, k, draws, generator):
        chunk = Moments.of(grads)
        moments = chunk if moments is None else moments.merge(chunk)
        if on_draws is not None:
            on_draws(grads.shape[0])
    _synchronize(logits.device)
    return VarianceResult(moments, time.perf_counter() - start)


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
