"""One training step of a VAE with a gradient estimator: where a model and an estimator meet.

The model (:mod:`dcvbench.problems.vae`) knows nothing of estimators and the estimators know nothing
of models; this step joins them. It splits the gradient two ways: the generative model (decoder and
a learned prior) follows the pathwise gradient of the mean of ``f`` over the estimator's samples;
the encoder receives the estimator's ``g ≈ ∇_η E_q[f]`` through one vector–Jacobian product of
``logits = encode(x)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from dcvbench.estimators import Estimate, Estimator
from dcvbench.latent.noise import uniform_noise
from dcvbench.problems.vae import PRIOR_TEMPERATURE, VAE


@dataclass
class StepOutput:
    """What one training step reports (tensors on the model's device; nothing synchronised).

    Attributes:
        train_elbo: 0-d, the mean over batch and samples of ``−f``: the training ELBO (the relaxed
            ELBO for an estimator that trains on the objective's ``relaxed`` model).
        estimate: the first layer's :class:`~dcvbench.estimators.Estimate` (``grad`` is ``g``,
            ``[B, *latent]``, the per-row logit gradient of ``E[f]``).
        upper_estimates: the estimates of the layers above the first, in order, when a model with
            several stochastic layers is trained layer by layer; ``()`` otherwise.
    """

    train_elbo: Tensor
    estimate: Estimate
    upper_estimates: tuple[Estimate, ...] = ()


def train_step(
    model: VAE,
    estimator: Estimator,
    x: Tensor,
    k: int,
    generator: torch.Generator,
    encoder_optimizer: torch.optim.Optimizer,
    decoder_optimizer: torch.optim.Optimizer,
    prior_optimizer: torch.optim.Optimizer | None = None,
    *,
    prior_temperature: float = PRIOR_TEMPERATURE,
    kl: str = "relaxed",
    bound: str = "elbo",
    upper_estimators: Sequence[Estimator] = (),
) -> StepOutput:
    """One step on the minibatch ``x [B, P]``, minimising ``(1/B) Σ_b E_q[f_b]`` (= −mean ELBO).

    1. ``η = encode(x)``; the estimator draws its ``k`` samples of ``f = model.objective(x, η)`` and
       returns ``g ≈ ∇_η E[f]`` ``[B, *latent]``. ``prior_temperature`` and ``kl`` configure the
       relaxed objective (:meth:`~dcvbench.problems.vae.NegativeELBO.relaxed`), for estimators that
       train on it (``concrete``: then ``f`` is the negative relaxed ELBO throughout, values and
       ``g`` alike); ``bound`` is what a multi-sample-capable estimator trains (``"iwae"``: the
       K-sample bound).
    2. Generative model: the gradient of ``mean(f)`` over the estimator's sample values — the
       estimate's ``param_grads`` when its values came from the objective's shared backward pass
       (:meth:`~dcvbench.problems.vae.NegativeELBO.value_and_input_grad`), else by autograd — or of
       the estimate's own ``surrogate`` where it gives one (VIMCO's K-sample bound).
    3. Encoder: one vector–Jacobian product, ``η.backward(g / B)`` (``g`` is per row; the
       objective averages the rows).
    4. The optimisers step; then ``estimator.update`` learns its own state (``α``), after ``g`` was
       used, so ``g`` stays unbiased.

    **Several stochastic layers** (``model.depth = L > 1``). An estimator that trains the whole
    chain (``EstimatorInfo.trains_chain``: ``concrete``, ``vimco``) estimates the first layer only;
    its ``chain_surrogate`` (or the generative model's surrogate) also trains the encoders of the
    layers below, through the graph the objective keeps. Any other is applied layer by layer, as in
    the DisARM / RODEO multi-layer code: ``upper_estimators`` (one per layer above the first, built
    for :meth:`~dcvbench.problems.vae.VAE.layer_shape`) estimate ``∇_{η_l}`` at
    ``η_l = η_l(b_{l−1})``, with the layers above fixed at one sample ``b_1, …, b_{l−1} ~ q`` per
    row (drawn here, hard) and the layers below sampled by the objective given each ``b_l``. Each
    layer's ``g_l`` reaches its encoder by its own vector–Jacobian product; the generative model
    trains on the first layer's estimate only, whose samples are whole chains from ``q``.

    The prior's gradient is written when the prior is learned: step it with ``prior_optimizer``
    (the DisARM protocol's SGD), or put it in ``decoder_optimizer``'s parameters. Gradients stay
    in ``.grad`` after the step (for :class:`~dcvbench.measure.vae_variance.EMAVariance`); nothing
    here waits on the device.
    """
    chain = estimator.info.trains_chain
    expected = 0 if chain else model.depth - 1
    if len(upper_estimators) != expected:
        raise ValueError(
            f"a model with {model.depth} stochastic layers and {estimator.info.name} needs {expected} "
            f"upper estimators, got {len(upper_estimators)}"
        )
    model.zero_grad(set_to_none=True)
    logits = model.encode(x)  # [B, *latent]
    f = model.objective(
        x, logits, prior_temperature=prior_temperature, kl=kl, generator=generator, bound=bound
    )
    estimate = estimator(logits, f, k, generator)
    values = estimate.values  # [E, B]

    params = f.generative_parameters()
    lower_encoders = f.downstream_parameters() if chain else []
    if estimate.param_grads is None and not _surrogate(estimate).requires_grad and params:
        raise RuntimeError(
            f"{type(estimator).__name__} returned objective values without a graph and without "
            "the gradients of the objective's value_and_input_grad: the decoder cannot be trained"
        )
    backward_estimate(estimate, logits, params, lower_encoders)
    upper_estimates = _train_upper_layers(
        model, upper_estimators, x, logits, k, generator, prior_temperature, kl
    )

    encoder_optimizer.step()
    decoder_optimizer.step()
    if prior_optimizer is not None:
        prior_optimizer.step()
    estimator.update(estimate)
    for upper, upper_estimate in zip(upper_estimators, upper_estimates, strict=True):
        upper.update(upper_estimate)
    return StepOutput(train_elbo=-values.detach().mean(), estimate=estimate, upper_estimates=upper_estimates)


def backward_estimate(
    estimate: Estimate, logits: Tensor, params: Sequence[Tensor], lower_encoders: Sequence[Tensor] = ()
) -> None:
    """Write one estimate's gradients into ``.grad``: the split of every training step.

    - ``params``, the parameters ``f`` depends on (a decoder, a classifier): the gradient of
      ``mean(f)`` over the estimate's samples — its ``param_grads`` when the objective computed
      them in its own backward pass, else by autograd through the values, or through the
      estimate's ``surrogate`` where it gives one (VIMCO's K-sample bound); nothing when the values
      carry no graph (an objective with no parameters of its own);
    - ``lower_encoders``, the encoders of the layers below a chain-trained first layer: the
      estimate's ``chain_surrogate`` (or the same surrogate);
    - the parameters behind ``logits [B, *latent]``: ``g`` by one vector–Jacobian product,
      ``η.backward(g / B)`` (``g`` is per row; the objective averages the rows).
    """
    params, lower_encoders = list(params), list(lower_encoders)
    if estimate.param_grads is not None:
        if estimate.surrogate is not None:  # two answers to one question: refuse, do not pick one
            raise RuntimeError("an estimate returned both param_grads and a surrogate")
        for param, grad in zip(params, estimate.param_grads, strict=True):
            param.grad = grad
    else:
        surrogate = _surrogate(estimate)
        chain_surrogate = surrogate if estimate.chain_surrogate is None else estimate.chain_surrogate
        if surrogate.requires_grad:
            # inputs=...: the surrogate may also reach an estimator's own leaves (a relaxed sample's
            # logits), which are not the generative model's to train. retain_graph: f and the logits
            # may share a trunk (a user's model), whose graph the logits' backward below still needs.
            if chain_surrogate is surrogate:
                surrogate.backward(inputs=params + lower_encoders, retain_graph=True)
            else:
                surrogate.backward(inputs=params, retain_graph=True)
                if lower_encoders:
                    chain_surrogate.backward(inputs=lower_encoders, retain_graph=True)
    logits.backward(estimate.grad / logits.shape[0])


def _surrogate(estimate: Estimate) -> Tensor:
    """What the parameters of ``f`` follow the gradient of: the estimate's surrogate, or mean f."""
    return estimate.values.mean() if estimate.surrogate is None else estimate.surrogate


def _train_upper_layers(
    model: VAE,
    estimators: Sequence[Estimator],
    x: Tensor,
    logits: Tensor,
    k: int,
    generator: torch.Generator,
    prior_temperature: float,
    kl: str,
) -> tuple[Estimate, ...]:
    """Layers 2 … L, one estimator each, with the layers above fixed at one sample per row."""
    estimates = []
    upstream: list[Tensor] = []
    eta = logits.detach()  # η_1: [B, D_1]
    for layer, estimator in enumerate(estimators, start=2):
        upstream.append(model.family.sample(eta, uniform_noise(eta.shape, eta, generator)))  # b_{l−1}
        eta_graph = model.layer_logits(layer, upstream[-1])  # η_l: [B, D_l], graph to its encoder
        f = model.objective(
            x,
            eta_graph,
            generative_grads=False,  # the generative model trains on the first layer's estimate
            prior_temperature=prior_temperature,
            kl=kl,
            generator=generator,
            upstream=tuple(upstream),
        )
        estimate = estimator(eta_graph, f, k, generator)
        eta_graph.backward(estimate.grad / x.shape[0])
        estimates.append(estimate)
        eta = eta_graph.detach()
    return tuple(estimates)
