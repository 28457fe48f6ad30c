"""Toy objectives over binary vectors with closed-form expectations, hence exact gradients.

Each objective maps samples ``b [K, B, D]`` to values ``[K, B]`` (one per sample and row) and
offers ``expectation(probs [B, D]) -> [B]``, ``E_q[f]`` under factorised Bernoulli(θ). The exact
gradient ``∇_η E_q[f]`` follows by autograd through that closed form (:func:`exact_gradient`, for
the toys of every latent family, :class:`ToyObjective`). Each also computes ``∇_b f`` in closed
form (``value_and_input_grad``), which spares the estimators that need it an autograd pass on this
cheap problem.

- ``separable`` (the published toy, Titsias & Shi 2022): ``f(b) = (1/D) Σ_d (b_d − t)²``. On
  binary points ``(b − t)² = b(1 − 2t) + t²``: exactly linear in ``b``, which flatters
  Taylor-based control variates.
- ``sum-square``: ``f(b) = (mean_d b_d − t)²``, non-linear;
  ``E f = Σ_d θ_d(1−θ_d)/D² + (mean_d θ_d − t)²``.
- ``quadratic-form``: ``f(b) = bᵀWb / D`` for a seeded Gaussian ``W``;
  ``E f = (θᵀWθ + Σ_d W_dd θ_d(1−θ_d)) / D``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
from torch import Tensor

from dcvbench.latent import BINARY, LatentFamily
from dcvbench.objectives import Evaluation

OBJECTIVES = ("separable", "sum-square", "quadratic-form")


class ToyObjective(Protocol):
    """A toy: ``f`` over one latent family's samples, its input gradient and its closed-form ``E_q[f]``."""

    family: ClassVar[LatentFamily]  # the latents f is defined on

    def __call__(self, b: Tensor) -> Tensor: ...

    def value_and_input_grad(self, b: Tensor) -> Evaluation: ...

    def expectation(self, probs: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class Separable:
    """``f(b) = (1/D) Σ_d (b_d − t)²``; ``E f = (1/D) Σ_d [θ_d (1−t)² + (1−θ_d) t²]``."""

    target: float
    family: ClassVar[LatentFamily] = BINARY

    def __call__(self, b: Tensor) -> Tensor:
        return (b - self.target).pow(2).mean(-1)  # [K, B]

    def value_and_input_grad(self, b: Tensor) -> Evaluation:
        return Evaluation(self(b), 2.0 * (b - self.target) / b.shape[-1])  # [K, B], [K, B, D]

    def expectation(self, probs: Tensor) -> Tensor:
        t = self.target
        return (probs * (1.0 - t) ** 2 + (1.0 - probs) * t**2).mean(-1)  # [B]


@dataclass(frozen=True)
class SumSquare:
    """``f(b) = (mean_d b_d − t)²``; ``E f = Σ_d θ_d(1−θ_d)/D² + (mean_d θ_d − t)²``."""

    target: float
    family: ClassVar[LatentFamily] = BINARY

    def __call__(self, b: Tensor) -> Tensor:
        return (b.mean(-1) - self.target).pow(2)  # [K, B]

    def value_and_input_grad(self, b: Tensor) -> Evaluation:
        error = b.mean(-1, keepdim=True) - self.target  # [K, B, 1]
        return Evaluation(error.squeeze(-1).pow(2), (2.0 / b.shape[-1]) * error.expand_as(b))

    def expectation(self, probs: Tensor) -> Tensor:
        dim = probs.shape[-1]
        variance = (probs * (1.0 - probs)).sum(-1) / dim**2
        return variance + (probs.mean(-1) - self.target).pow(2)  # [B]


@dataclass(frozen=True, eq=False)
class QuadraticForm:
    """``f(b) = bᵀWb / D``; ``E f = (θᵀWθ + Σ_d W_dd θ_d(1−θ_d)) / D``. ``W``: ``[D, D]``."""

    weights: Tensor
    family: ClassVar[LatentFamily] = BINARY

    def __call__(self, b: Tensor) -> Tensor:
        dim = b.shape[-1]
        return torch.einsum("...i,ij,...j->...", b, self.weights.to(b.dtype), b) / dim  # [K, B]

    def value_and_input_grad(self, b: Tensor) -> Evaluation:
        w = self.weights.to(b.dtype)
        dim = b.shape[-1]
        wb = b @ w.T  # [K, B, D]: (W b)
        values = (b * wb).sum(-1) / dim  # [K, B]
        return Evaluation(values, (wb + b @ w) / dim)  # ∇ bᵀWb = (W + Wᵀ) b

    def expectation(self, probs: Tensor) -> Tensor:
        w = self.weights.to(probs.dtype)
        dim = probs.shape[-1]
        quadratic = torch.einsum("bi,ij,bj->b", probs, w, probs)
        return (quadratic + (torch.diagonal(w) * probs * (1.0 - probs)).sum(-1)) / dim  # [B]


def make_objective(
    name: str,
    dim: int,
    target: float = 0.499,
    w_scale: float = 1.0,
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float64,
):
    """Build the toy objective ``name`` (one of :data:`OBJECTIVES`).

    ``W`` for ``quadratic-form`` is ``w_scale`` times a standard Gaussian matrix drawn from a
    generator seeded with ``seed`` on the CPU (so it is the same on every device).
    """
    if name == "separable":
        return Separable(target)
    if name == "sum-square":
        return SumSquare(target)
    if name == "quadratic-form":
        generator = torch.Generator().manual_seed(seed)
        weights = w_scale * torch.randn(dim, dim, generator=generator, dtype=torch.float64)
        return QuadraticForm(weights.to(device=device, dtype=dtype))
    raise ValueError(f"unknown toy objective {name!r}; choose from: {', '.join(OBJECTIVES)}")


def exact_gradient(objective: ToyObjective, logits: Tensor) -> Tensor:
    """``∇_η E_q[f]`` ``[B, *event]`` by autograd through the closed-form expectation, for a toy of
    any latent family (the probabilities are its family's: ``σ(η)`` or ``softmax(η)``)."""
    with torch.enable_grad():
        eta = logits.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(objective.expectation(objective.family.probs(eta)).sum(), eta)
    return grad
