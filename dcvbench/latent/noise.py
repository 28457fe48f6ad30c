"""Random numbers for sampling latents, kept apart from estimation.

Every function takes its generator (or its uniforms) explicitly; nothing here touches global random
state. Noise is drawn as uniforms and transformed, so estimators that share uniforms share random
numbers (paired comparisons). torch's ``rsample`` methods draw from the global generator, which is
why the transforms are written here.
"""

from __future__ import annotations

import torch
from torch import Tensor


def uniform_noise(shape: tuple[int, ...], like: Tensor, generator: torch.Generator) -> Tensor:
    """Uniforms on the open interval (0, 1), with ``like``'s device and dtype.

    Clamped away from both ends so that ``log u`` and ``log(1 − u)`` stay finite.
    """
    u = torch.rand(shape, generator=generator, device=like.device, dtype=like.dtype)
    finfo = torch.finfo(like.dtype)
    return u.clamp(min=finfo.tiny, max=1.0 - finfo.eps)


def logistic_from_uniform(u: Tensor) -> Tensor:
    """Standard logistic noise ``L = log u − log(1 − u)``."""
    return torch.log(u) - torch.log1p(-u)


def gumbel_from_uniform(u: Tensor) -> Tensor:
    """Standard Gumbel noise ``G = −log(−log u)``."""
    return -torch.log(-torch.log(u))


def dirichlet_copula(u: Tensor) -> Tensor:
    """ARMS copula (Dimitriev & Zhou 2021): K uniforms per coordinate → K negatively dependent ones.

    ``e_k = −log u_k``, ``d_k = e_k / Σ_j e_j`` (a flat Dirichlet), ``c_k = (1 − d_k)^{K−1}``. Each
    ``c_k`` is marginally uniform. ``u``: ``[K, ...]``, dependence along dim 0.
    """
    k = u.shape[0]
    e = -torch.log(u)  # [K, ...]
    d = e / e.sum(0, keepdim=True)
    return (1.0 - d).pow(k - 1)


def dirichlet_copula_both_below(x: Tensor, k: int) -> Tensor:
    """``P(c_i < x, c_j < x)`` for two of the K values of :func:`dirichlet_copula`, elementwise in ``x``.

    ``c < x`` is ``d > 1 − x^{1/(K−1)}``, and two coordinates of a flat K-dimensional Dirichlet
    satisfy ``P(d_i > a, d_j > a) = max(1 − 2a, 0)^{K−1}``; hence ``max(2x^{1/(K−1)} − 1, 0)^{K−1}``,
    at most ``x²`` (the dependence is negative) and 0 for ``x ≤ 2^{−(K−1)}``.
    """
    return (2.0 * x.pow(1.0 / (k - 1)) - 1.0).clamp(min=0.0).pow(k - 1)


def one_hot_argmax(scores: Tensor) -> Tensor:
    """``one_hot(argmax_c scores)`` along the last dimension, in ``scores``' dtype.

    With ``scores = logits + G`` (Gumbel-max, G standard Gumbel) the result is a one-hot sample of
    ``Categorical(softmax(logits))``; ties have probability zero.
    """
    index = scores.argmax(-1, keepdim=True)
    return torch.zeros_like(scores).scatter_(-1, index, 1.0)
