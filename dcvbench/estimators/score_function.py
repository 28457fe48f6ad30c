"""The score-function (REINFORCE) gradient and the leave-one-out baseline, for every latent family."""

from __future__ import annotations

from torch import Tensor


def score_function_gradient(signal: Tensor, b: Tensor, probs: Tensor) -> Tensor:
    """``(1/K) Σ_k signal_k (b_k − p)``: signal ``[K, B]``, b ``[K, B, *event]``, probs ``[B, *event]``.

    ``b − p`` is the score ``∇_η log q(b)`` of every :class:`~dcvbench.latent.LatentFamily`: bits
    (event ``[D]``, ``p = θ``) and one-hot categoricals (event ``[N, C]``, ``p = π``) alike.
    """
    event = (1,) * (probs.dim() - 1)
    return (signal.reshape(*signal.shape, *event) * (b - probs)).mean(0)  # [B, *event]


def leave_one_out_centre(x: Tensor) -> Tensor:
    """``x_k − mean_{j≠k} x_j`` along dim 0 (K ≥ 2), vectorised: ``K/(K−1) · (x_k − mean x)``."""
    k = x.shape[0]
    return (x - x.mean(0, keepdim=True)) * (k / (k - 1))
