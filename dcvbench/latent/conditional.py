"""Noise conditioned on the sample it gives: Gumbel noise given the class it selects, drawn top-down,
and logistic noise given the bit (what Gumbel-Rao averages over; REBAR's and RELAX's ``z̃``).

For the logits ``η`` of one categorical variable and ``G`` iid standard Gumbel, ``x = η + G`` has
(Maddison, Tarlow & Minka, *A\\* Sampling*, NeurIPS 2014; Paulus, Maddison & Krause 2021, §3):

- its maximum ``T = max_i x_i`` Gumbel with location ``logsumexp(η)``, independent of the class
  ``c = argmax_i x_i``, which is ``Categorical(softmax(η))`` (the Gumbel-max trick);
- given ``c`` and ``T``, every other ``x_i`` independent, ``Gumbel(η_i)`` truncated to ``x_i < T``.

So, given the one-hot ``b`` of ``c``: ``x_c = T = logsumexp(η) − log E_c`` and, inverting the
truncated CDF ``exp(−e^{η_i − x}) / exp(−e^{η_i − T})``, ``x_i = −log(e^{−T} + E_i e^{−η_i})`` for
``i ≠ c``, with ``E ~ Exp(1)`` iid. Drawing ``b`` by Gumbel-max and then ``x`` given ``b`` gives
``x = η + G`` with ``G`` unconditionally iid Gumbel (``tests/latent/test_conditional_gumbel.py``).
Bits have their counterpart in logit space, logistic noise given the bit (:func:`conditional_logistic`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def conditional_gumbel(logits: Tensor, b: Tensor, u: Tensor) -> Tensor:
    """``x = η + G`` given ``one_hot(argmax x) = b``, from uniforms ``u`` (one per class).

    ``logits [B, N, C]``; ``b`` one-hot and ``u`` in (0, 1), broadcast together to
    ``[..., B, N, C]`` (``u`` may carry more leading draws than ``b``). The chosen class's uniform
    gives the maximum (``−log E_c`` is standard Gumbel), the others' the truncated draws. Returns
    ``[..., B, N, C]``: every draw's maximum is at ``b`` (a neighbour can round up to a tie).
    """
    exponential = -torch.log(u)  # E ~ Exp(1): [..., B, N, C]
    chosen = (b * exponential).sum(-1, keepdim=True)  # E_c: [..., B, N, 1]
    top = torch.logsumexp(logits, -1, keepdim=True) - torch.log(chosen)  # T: [..., B, N, 1]
    # −log(e^{−T} + E_i e^{−η_i}) as a log-sum-exp: finite for every finite η and u ∈ (0, 1).
    below = -torch.logaddexp(-top, torch.log(exponential) - logits)  # [..., B, N, C]
    return torch.where(b > 0, top, below)


def conditional_logistic(logits: Tensor, b: Tensor, v: Tensor) -> Tensor:
    """``z̃ ~ p(z | H(z) = b)`` for ``z = η + L``, from uniforms ``v``: ``[K, B, D]``.

    With ``v' = b(vθ + 1 − θ) + (1 − b)v(1 − θ)`` and ``z̃ = η + log v' − log(1 − v')`` (DESIGN §3.4)::

        b = 1:  z̃ = softplus(η + log v) − log(1 − v)          > 0
        b = 0:  z̃ = log v − softplus(log(1 − v) − η)          < 0

    (for ``b = 1``, ``(1 − v')/θ = 1 − v`` and ``v'/θ = e^{−η} + v``; ``b = 0`` is its mirror). Both
    ways ``η`` enters ``z̃`` — directly and through ``θ`` — are in this one expression, and both
    branches stay finite for every ``η`` and ``v ∈ (0, 1)`` (where ``θ`` rounds to 1, ``1 − v'``
    computed from ``v'`` would be 0). ``logits`` ``[B, D]``, ``b`` and ``v`` ``[K, B, D]``.
    """
    log_v, log_rest = torch.log(v), torch.log1p(-v)  # [K, B, D]
    above = F.softplus(logits + log_v) - log_rest
    below = log_v - F.softplus(log_rest - logits)
    return torch.where(b > 0, above, below)
