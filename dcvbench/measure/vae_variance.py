"""Gradient variance of a VAE's encoder parameters: the two definitions of DESIGN §4.3.

- :class:`EMAVariance` (``ema``, the published definition): exponential moving averages of each
  encoder parameter's gradient and squared gradient over *training steps*. It mixes the
  estimator's noise with the drift of the parameters.
- :func:`resample_encoder_variance` (``resample``): at a fixed snapshot — parameters and
  minibatch — M independent estimates of the encoder gradient; the estimator's own variance.

In both, the gradient is that of the batch-*mean* objective ``(1/B) Σ_b E[f_b]`` (the reference
code took the batch sum and divided its variance by ``B²``, which is the same), and the reported
number is the variance per scalar parameter averaged over all encoder parameters.

The resample path never runs M backward passes through the encoder. The encoder gradient is a
linear map of the logit gradient ``g [B, *latent]`` (``[B, D]`` bits, ``[B, N, C]`` categorical):
``∇_φ = J_φᵀ g / B`` with ``J_φ = ∂η/∂φ`` at the snapshot, so one forward pass gives the
vector–Jacobian product function and ``torch.func.vmap`` applies it to a whole chunk of draws at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from dcvbench.estimators import Estimator
from dcvbench.measure.variance import CHUNK_ELEMENTS, ErrorMoments, Moments, draw_estimates
from dcvbench.problems.vae import PRIOR_TEMPERATURE, VAE


class EMAVariance:
    """Encoder-gradient variance from moving averages over training steps (the published ``ema``).

    After each step, with ``g_t`` all encoder-parameter gradients flattened ``[P]``::

        m_t = δ m_{t−1} + (1 − δ) g_t,     v_t = δ v_{t−1} + (1 − δ) g_t²,     m_0 = v_0 = 0
        value = (1/P) Σ_p (v_t − m_t²)_p

    ``δ = decay``. This is the reference code's ``tf.train.ExponentialMovingAverage(0.999)``: zero
    initial averages (its shadow variables start from the zero-initialised gradient variables) and
    **no bias correction**, so early values are biased low — about ``(1 − δ^t)`` times the variance
    for slowly varying gradients, i.e. for the first few thousand steps at ``δ = 0.999``. With
    ``bias_correction=True`` both averages are divided by ``1 − δ^t`` first (as Adam does), which
    removes that start-up bias. Moments are kept in float64 on the gradients' device.
    """

    def __init__(self, decay: float = 0.999, bias_correction: bool = False):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.bias_correction = bias_correction
        self.steps = 0
        self.first: Tensor | None = None  # m_t: [P]
        self.second: Tensor | None = None  # v_t: [P]

    @torch.no_grad()
    def update(self, params: Iterable[Tensor]) -> None:
        """Fold in the current ``.grad`` of ``params`` (the gradient of the batch-mean objective)."""
        grads = []
        for param in params:
            if param.grad is None:
                raise ValueError("EMAVariance.update: a parameter has no gradient; call it after backward")
            grads.append(param.grad.reshape(-1))
        grad = torch.cat(grads).to(torch.float64)  # [P]
        if self.first is None:
            self.first, self.second = torch.zeros_like(grad), torch.zeros_like(grad)
        if grad.shape != self.first.shape:
            raise ValueError(f"expected {self.first.numel()} gradient entries, got {grad.numel()}")
        self.first.lerp_(grad, 1.0 - self.decay)
        self.second.lerp_(grad.square(), 1.0 - self.decay)
        self.steps += 1

    @torch.no_grad()
    def value(self) -> Tensor:
        """0-d float64 tensor: the mean over parameters of ``E[g²] − E[g]²`` (no device sync)."""
        if self.first is None:
            raise RuntimeError("EMAVariance.value: no gradients recorded yet")
        first, second = self.first, self.second
        if self.bias_correction:
            correction = 1.0 - self.decay**self.steps
            first, second = first / correction, second / correction
        return (second - first.square()).mean()

    def state_dict(self) -> dict:
        return {
            "decay": self.decay,
            "bias_correction": self.bias_correction,
            "steps": self.steps,
            "first": self.first,
            "second": self.second,
        }

    def load_state_dict(self, state: dict) -> None:
        self.decay = float(state["decay"])
        self.bias_correction = bool(state["bias_correction"])
        self.steps = int(state["steps"])
        self.first, self.second = state["first"], state["second"]


# ---------------------------------------------------------------------------------------------
# Resampled variance at a fixed snapshot.


@dataclass(frozen=True)
class EncoderVarianceResult:
    """Moments of M estimates at one snapshot, and the seconds spent drawing and mapping them.

    ``param_moments``: per encoder parameter (``[P]``, flattened in
    :meth:`~dcvbench.problems.vae.VAE.encoder_parameters` order); ``logit_moments``: per logit
    coordinate of ``g/B`` (``[B, *latent]``); ``logit_errors``: the same draws of ``g/B`` against the
    exact ``∇/B``, where it was given (:class:`~dcvbench.measure.variance.ErrorMoments`).
    """

    param_moments: Moments
    logit_moments: Moments
    seconds: float
    logit_errors: ErrorMoments | None = None  # of g/B against the exact ∇/B, when given

    @property
    def draws(self) -> int:
        return self.param_moments.count

    @property
    def seconds_per_estimate(self) -> float:
        return self.seconds / self.draws

    @property
    def param_variance(self) -> float:
        """Mean over encoder parameters of the per-parameter variance of the encoder gradient."""
        return float(self.param_moments.variance.mean())

    @property
    def logit_variance(self) -> float:
        """Mean over ``[B, *latent]`` coordinates of the per-coordinate variance of ``g / B``."""
        return float(self.logit_moments.variance.mean())


def encoder_vjp(model: VAE, x: Tensor) -> Callable[[Tensor], Tensor]:
    """The linear map from logit gradients to encoder-parameter gradients at ``x [B, P]``.

    Returns ``vjp(g [M, B, *latent]) -> [M, P]``: row ``m`` is ``J_φᵀ g_m / B``, the gradient of the
    batch-mean objective with respect to the flattened encoder parameters when ``g_m`` is the
    per-row logit gradient. One forward pass here; each call is one batched (vmapped) VJP.
    """
    rows = x.shape[0]
    names, params = zip(*[(n, p.detach()) for n, p in model.encoder.named_parameters()], strict=True)
    inputs = model.encoder_input(x).detach()  # [B, P]

    def logits_of(*values: Tensor) -> Tensor:
        return torch.func.functional_call(model.encoder, dict(zip(names, values, strict=True)), (inputs,))

    _, pullback = torch.func.vjp(logits_of, *params)
    batched = torch.func.vmap(pullback)

    def vjp(grads: Tensor) -> Tensor:
        per_param = batched(grads / rows)  # tuple of [M, *param.shape]
        return torch.cat([g.reshape(grads.shape[0], -1) for g in per_param], dim=1)  # [M, P]

    return vjp


def resample_encoder_variance(
    model: VAE,
    estimator: Estimator,
    x: Tensor,
    k: int,
    draws: int,
    generator: torch.Generator,
    chunk: int | None = None,
    *,
    prior_temperature: float = PRIOR_TEMPERATURE,
    kl: str = "relaxed",
    bound: str = "elbo",
    on_draws: Callable[[int], None] | None = None,
    exact: Tensor | None = None,
) -> EncoderVarianceResult:
    """Variance of the encoder gradient over ``draws`` independent estimates at fixed parameters and ``x``.

    ``prior_temperature``, ``kl`` and ``bound`` configure the objective as in training
    (:func:`~dcvbench.training.train_step`). With several stochastic layers, this is the variance
    of the first layer's encoder gradient (the layers below are sampled by the objective, from
    ``generator`` too). Each draw is a fresh estimate ``g`` ``[B, *latent]`` at
    the same logits; its encoder gradient
    ``J_φᵀ g / B`` comes from :func:`encoder_vjp`, batched over the draws of a chunk. ``chunk``
    (default: about ``CHUNK_ELEMENTS`` decoder outputs and parameter gradients per chunk) bounds
    memory; per-chunk moments are merged exactly in float64. ``on_draws(n)`` is told of each chunk
    of ``n`` draws done (progress: a checkpoint's draws are slow). Given the ``exact`` logit gradient
    ``[B, *latent]`` (what ``g`` estimates), the draws' errors against it too, in the units of
    ``logit_moments`` (both divided by ``B``).
    """
    if draws < 2:
        raise ValueError(f"variance needs at least 2 draws, got {draws}")
    rows = x.shape[0]
    encoder_size = sum(p.numel() for p in model.encoder.parameters())
    evals = estimator.info.evals(k, model.problem_shape)
    per_draw = evals * rows * model.pixels + encoder_size  # the largest tensors one draw adds
    chunk = chunk or max(1, CHUNK_ELEMENTS // per_draw)

    start = time.perf_counter()
    vjp = encoder_vjp(model, x)
    with torch.no_grad():
        logits = model.encode(x)  # [B, *latent]
    f = model.objective(
        x,
        logits,
        generative_grads=False,
        prior_temperature=prior_temperature,
        kl=kl,
        generator=generator,
        bound=bound,
    )
    params: Moments | None = None
    logit_moments: Moments | None = None
    errors: ErrorMoments | None = None
    for grads, _ in draw_estimates(estimator, logits, f, k, draws, generator, chunk):  # [c, B, *latent]
        chunk_params, chunk_logits = Moments.of(vjp(grads)), Moments.of(grads / rows)
        params = chunk_params if params is None else params.merge(chunk_params)
        logit_moments = chunk_logits if logit_moments is None else logit_moments.merge(chunk_logits)
        if exact is not None:
            chunk_errors = ErrorMoments.of(grads / rows, exact / rows)
            errors = chunk_errors if errors is None else errors.merge(chunk_errors)
        if on_draws is not None:
            on_draws(grads.shape[0])
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    return EncoderVarianceResult(params, logit_moments, time.perf_counter() - start, errors)
