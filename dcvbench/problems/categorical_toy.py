"""Toy objectives over one-hot categorical latents with closed-form expectations, hence exact gradients.

Each objective maps one-hot samples ``b [K, B, N, C]`` (N variables with C classes) to values
``[K, B]`` and offers ``expectation(probs [B, N, C]) -> [B]``, ``E_q[f]`` under independent
``Categorical(π_n)``. The exact gradient ``∇_η E_q[f]`` follows by autograd through that closed form
(:func:`~dcvbench.problems.toy.exact_gradient`, as for the binary toys). Each is defined for real
``b`` too and computes ``∇_b f`` in closed form (``value_and_input_grad``), for the estimators that
need it (``rloo-dcv``, relaxations).

- ``separable``: ``f(b) = (1/N) Σ_n ‖b_n − t_n‖²`` with seeded targets ``t_n`` drawn uniformly on the
  simplex (flat Dirichlet). On one-hot points ``‖b_n‖² = 1``, so
  ``E f = (1/N) Σ_n (1 − 2⟨π_n, t_n⟩ + ‖t_n‖²)`` — like the binary toy, linear in ``b`` on the
  one-hot points, which flatters Taylor-based control variates.
- ``quadratic-form``: ``f(b) = vec(b)ᵀ W vec(b) / N`` for a seeded Gaussian ``W`` ``[NC, NC]``:
  variables interact. With ``Cov(b_n) = diag(π_n) − π_nπ_nᵀ`` and independent variables,
  ``E f = (vec(π)ᵀ W vec(π) + Σ_n ⟨W_nn, diag(π_n) − π_nπ_nᵀ⟩) / N``, ``W_nn`` the n-th C×C
  diagonal block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from dcvbench.latent import CATEGORICAL, LatentFamily
from dcvbench.objectives import Evaluation

CATEGORICAL_OBJECTIVES = ("separable", "quadratic-form")


@dataclass(frozen=True, eq=False)
class CategoricalSeparable:
    """``f(b) = (1/N) Σ_n ‖b_n − t_n‖²``; ``E f = (1/N) Σ_n (1 − 2⟨π_n, t_n⟩ + ‖t_n‖²)``; ``t [N, C]``."""

    targets: Tensor
    family: ClassVar[LatentFamily] = CATEGORICAL

    def __call__(self, b: Tensor) -> Tensor:
        return (b - self.targets.to(b.dtype)).pow(2).sum(-1).mean(-1)  # [K, B]

    def value_and_input_grad(self, b: Tensor) -> Evaluation:
        grad = 2.0 * (b - self.targets.to(b.dtype)) / b.shape[-2]  # [K, B, N, C]
        return Evaluation(self(b), grad)  # [K, B], [K, B, N, C]

    def expectation(self, probs: Tensor) -> Tensor:
        t = self.targets.to(probs.dtype)  # [N, C]
        return (1.0 - 2.0 * (probs * t).sum(-1) + t.pow(2).sum(-1)).mean(-1)  # [B]


@dataclass(frozen=True, eq=False)
class CategoricalQuadraticForm:
    """``f(b) = vec(b)ᵀ W vec(b) / N``; ``E f = (vec(π)ᵀ W vec(π) + Σ_n ⟨W_nn, Cov(b_n)⟩) / N``.

    ``W``: ``[N·C, N·C]``, ``vec`` flattens each row's ``[N, C]`` variable-major.
    """

    weights: Tensor
    family: ClassVar[LatentFamily] = CATEGORICAL

    def __call__(self, b: Tensor) -> Tensor:
        flat = b.flatten(-2)  # [K, B, NC]
        w = self.weights.to(b.dtype)
        return torch.einsum("...i,ij,...j->...", flat, w, flat) / b.shape[-2]  # [K, B]

    def value_and_input_grad(self, b: Tensor) -> Evaluation:
        flat = b.flatten(-2)  # [K, B, NC]
        w = self.weights.to(b.dtype)
        variables = b.shape[-2]
        wb = flat @ w.T  # [K, B, NC]: (W b)
        values = (flat * wb).sum(-1) / variables  # [K, B]
        return Evaluation(values, ((wb + flat @ w) / variables).reshape(b.shape))  # ∇ bᵀWb = (W + Wᵀ) b

    def expectation(self, probs: Tensor) -> Tensor:
        rows, variables, classes = probs.shape
        w = self.weights.to(probs.dtype)
        flat = probs.reshape(rows, variables * classes)  # [B, NC]
        quadratic = torch.einsum("bi,ij,bj->b", flat, w, flat)  # [B]
        # The diagonal blocks W_nn: [N, C, N, C] → [C, C, N] → [N, C, C].
        blocks = torch.diagonal(w.reshape(variables, classes, variables, classes), dim1=0, dim2=2)
        blocks = blocks.permute(2, 0, 1)
        # ⟨W_nn, diag(π_n) − π_nπ_nᵀ⟩ = Σ_c W_n,cc π_nc − π_nᵀ W_nn π_n.
        diagonal = (torch.diagonal(blocks, dim1=-2, dim2=-1) * probs).sum((-2, -1))  # [B]
        within = torch.einsum("bnc,ncd,bnd->b", probs, blocks, probs)  # [B]
        return (quadratic + diagonal - within) / variables  # [B]


def make_categorical_objective(
    name: str,
    variables: int,
    classes: int,
    w_scale: float = 1.0,
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float64,
):
    """Build the categorical toy objective ``name`` (one of :data:`CATEGORICAL_OBJECTIVES`).

    Its random parameters — the targets ``t_n`` (flat Dirichlet, i.e. uniform on the simplex) of
    ``separable``, ``w_scale`` times a standard Gaussian ``W`` of ``quadratic-form`` — come from a
    generator seeded with ``seed`` on the CPU, so they are the same on every device.
    """
    if variables < 1 or classes < 2:
        raise ValueError(f"need variables ≥ 1 and classes ≥ 2, got {variables} and {classes}")
    generator = torch.Generator().manual_seed(seed)
    if name == "separable":
        # Normalised standard exponentials are uniform on the simplex.
        exponentials = torch.empty(variables, classes, dtype=torch.float64).exponential_(generator=generator)
        targets = exponentials / exponentials.sum(-1, keepdim=True)  # [N, C]
        return CategoricalSeparable(targets.to(device=device, dtype=dtype))
    if name == "quadratic-form":
        size = variables * classes
        weights = w_scale * torch.randn(size, size, generator=generator, dtype=torch.float64)
        return CategoricalQuadraticForm(weights.to(device=device, dtype=dtype))
    raise ValueError(
        f"unknown categorical toy objective {name!r}; choose from: {', '.join(CATEGORICAL_OBJECTIVES)}"
    )


def random_categorical_logits(
    variables: int,
    classes: int,
    scale: float = 3.0,
    seed: int = 0,
    rows: int = 1,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Seeded random logits ``[rows, N, C]``, uniform on ``[−scale, scale]``: a random point away from
    the uniform distribution.

    The categorical counterpart of the binary studies' random ``θ ∈ (0.05, 0.95)`` (logits within
    ±2.94): bounded logits keep every class probability above ``e^{−2·scale}/C`` (6·10⁻⁴ at the
    default 3 and C = 4), so every class is drawn in a study of a few thousand draws, and its
    standard error can be estimated. At the default and C = 4 the most likely class of a variable
    has probability about 0.65 on average, and up to 0.99. Drawn on the CPU, the same on every device.
    """
    generator = torch.Generator().manual_seed(seed)
    uniform = torch.rand(rows, variables, classes, generator=generator, dtype=torch.float64)
    return (scale * (2.0 * uniform - 1.0)).to(device=device, dtype=dtype)
