"""Gradient variance at a fixed point, from many independent estimates drawn at once.

The ``resample`` definition (DESIGN §4.3): at fixed parameters, draw M independent estimates and
average the per-coordinate variance over coordinates. Draws are vectorised by tiling the rows of
``logits``: a chunk of ``c`` draws is one call of the estimator on ``c·B`` rows, so the estimator's
own batch dimension carries the draws. Chunks keep memory bounded; their moments are merged exactly
(Chan et al.'s parallel variance update), in float64.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from dcvbench.estimators import ControlVariateEstimator, Estimator, Objective

# Elements of the largest [K, rows, D] sample tensor in one chunk: about 32 MB in float64.
CHUNK_ELEMENTS = 4_000_000


@dataclass(frozen=True)
class Moments:
    """Count, mean and sum of squared deviations of estimates, per coordinate (float64)."""

    count: int
    mean: Tensor  # [B, D]
    squares: Tensor  # [B, D]  Σ (g − mean)²

    @classmethod
    def of(cls, grads: Tensor) -> Moments:
        """Moments of ``grads [M, B, D]`` (M draws of a ``[B, D]`` estimate)."""
        grads = grads.to(torch.float64)
        mean = grads.mean(0)
        return cls(grads.shape[0], mean, (grads - mean).pow(2).sum(0))

    def merge(self, other: Moments) -> Moments:
        count = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / count)
        squares = self.squares + other.squares + delta.pow(2) * (self.count * other.count / count)
        return Moments(count, mean, squares)

    @property
    def variance(self) -> Tensor:
        """Unbiased per-coordinate variance ``[B, D]``."""
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
    on_chunk: Callable[[Tensor, Tensor | None], None],
) -> float:
    """Draw ``draws`` independent estimates at ``logits [B, D]`` chunk by chunk; return seconds.

    ``on_chunk(grads [c, B, D], control [c, B, D] | None)`` receives each chunk. ``f`` is called on
    ``[K, c·B, D]`` samples whose row ``r`` belongs to row ``r mod B`` of ``logits``.
    """
    rows, dim = logits.shape
    chunk = max(1, min(draws, CHUNK_ELEMENTS // max(1, (k + 1) * rows * dim)))
    seconds = 0.0
    done = 0
    while done < draws:
        size = min(chunk, draws - done)
        tiled = logits.detach().repeat(size, 1)  # [c·B, D]
        start = time.perf_counter()
        estimate = estimator(tiled, f, k, generator)
        _synchronize(logits.device)
        seconds += time.perf_counter() - start
        control = estimate.control
        on_chunk(
            estimate.grad.reshape(size, rows, dim),
            None if control is None else control.reshape(size, rows, dim),
        )
        done += size
    return seconds


def resample_variance(
    estimator: Estimator,
    logits: Tensor,
    f: Objective,
    k: int,
    draws: int,
    generator: torch.Generator,
) -> VarianceResult:
    """Variance of ``estimator`` at ``logits [B, D]`` from ``draws`` independent estimates."""
    if draws < 2:
        raise ValueError(f"variance needs at least 2 draws, got {draws}")
    merged: list[Moments] = []

    def accumulate(grads: Tensor, control: Tensor | None) -> None:
        moments = Moments.of(grads)
        merged[:] = [merged[0].merge(moments) if merged else moments]

    seconds = draw_estimates(estimator, logits, f, k, draws, generator, accumulate)
    return VarianceResult(merged[0], seconds)


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
    totals = torch.zeros(2, dtype=torch.float64, device=logits.device)

    def accumulate(grads: Tensor, control: Tensor | None) -> None:
        base = grads - current * control  # g₀
        totals[0] += (base * control).sum().to(torch.float64)
        totals[1] += control.pow(2).sum().to(torch.float64)

    draw_estimates(estimator, logits, f, k, draws, generator, accumulate)
    cross, norm = totals.tolist()
    return -cross / norm if norm > 0 and math.isfinite(cross / norm) else 0.0


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
