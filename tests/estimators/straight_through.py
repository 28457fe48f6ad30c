"""What the tests of the straight-through family (reinmax, gumbel-rao, gst) share: small enumerable
cases, the Jacobian ``diag(p) − ppᵀ`` written out, uniforms that force a sample, and expectations
over every code."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.testing import assert_close

from dcvbench.latent import family_named
from dcvbench.problems.categorical_toy import (
    CATEGORICAL_OBJECTIVES,
    make_categorical_objective,
    random_categorical_logits,
)
from dcvbench.problems.toy import OBJECTIVES, make_objective

DIM = 3  # bits: 8 codes
VARIABLES, CLASSES = 2, 3  # categorical: 9 codes
ROWS = 2
DRAWS = 20_000
CASES = [("binary", name) for name in OBJECTIVES] + [("categorical", name) for name in CATEGORICAL_OBJECTIVES]
COORDINATES = {"binary": ROWS * DIM, "categorical": ROWS * VARIABLES * CLASSES}


def case(latent: str, objective: str):
    """Logits ``[ROWS, *event]`` away from ½ / uniform, and a toy objective of that latent type."""
    if latent == "binary":
        generator = torch.Generator().manual_seed(17)
        logits = 1.2 * torch.randn(ROWS, DIM, generator=generator, dtype=torch.float64)
        return logits, make_objective(objective, DIM)
    logits = random_categorical_logits(VARIABLES, CLASSES, scale=1.5, seed=17, rows=ROWS)
    return logits, make_categorical_objective(objective, VARIABLES, CLASSES)


def jacobian_product(latent: str, p: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``J(p)ᵀ v`` with the matrix ``diag(p) − ppᵀ`` written out per variable (``p(1 − p)`` per bit)."""
    if latent == "binary":
        return p * (1.0 - p) * v
    jacobian = torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)  # [..., C, C]
    return torch.einsum("...ij,...j->...i", jacobian, v)


def forcing_uniforms(latent: str, logits: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Uniforms from which the family draws exactly ``b`` (``1[u < θ]``; Gumbel-max)."""
    if latent == "binary":
        theta = torch.sigmoid(logits)
        return torch.where(b > 0, 0.5 * theta, 0.5 * (1.0 + theta))
    return torch.where(b > 0, 1.0 - 1e-12, 1e-3).to(logits.dtype)  # the sampled class's Gumbel ≈ 28


def input_grad(f, b: torch.Tensor) -> torch.Tensor:
    """``∇_b f`` at the samples ``b``."""
    b = b.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(b).sum(), b)
    return grad


def enumerated_expectation(
    latent: str, logits: torch.Tensor, f, expression: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """``Σ_D q(D)·expression(D, ∇f(D))`` over every code ``D``: ``[B, *event]``."""
    family = family_named(latent)
    codes = family.enumerate(logits.shape[1:], logits.dtype)  # [M, *event]
    b = codes.unsqueeze(1).expand(-1, *logits.shape)  # [M, B, *event]
    weights = family.log_prob(b, logits).exp()  # q(D): [M, B]
    assert_close(weights.sum(0), torch.ones(len(logits), dtype=logits.dtype))
    values = expression(b, input_grad(f, b))  # [M, B, *event]
    return torch.einsum("mb,mb...->b...", weights, values)
