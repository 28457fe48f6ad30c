"""One training step of a VAE with a gradient estimator: where a model and an estimator meet.

The model (:mod:`dcvbench.problems.vae`) knows nothing of estimators and the estimators know nothing
of models; this step joins them. It splits the gradient two ways: the generative model (decoder and
a learned prior) follows the pathwise gradient of the mean of ``f`` over the estimator's samples;
the encoder receives the estimator's ``g ≈ ∇_η E_q[f]`` through one vector–Jacobian product of
``logits = encode(x)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dcvbench.estimators import Estimate, Estimator
from dcvbench.problems.vae import PRIOR_TEMPERATURE, VAE


@dataclass
class StepOutput:
    """What one training step reports (tensors on the model's device; nothing synchronised).

    Attributes:
        train_elbo: 0-d, the mean over batch and samples of ``−f``: the training ELBO (the relaxed
            ELBO for an estimator that trains on the objective's ``relaxed`` model).
        estimate: the estimator's :class:`~dcvbench.estimators.Estimate` (``grad`` is ``g``,
            ``[B, *latent]``, the per-row logit gradient of ``E[f]``).
    """

    train_elbo: Tensor
    estimate: Estimate


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
) -> StepOutput:
    """One step on the minibatch ``x [B, P]``, minimising ``(1/B) Σ_b E_q[f_b]`` (= −mean ELBO).

    1. ``η = encode(x)``; the estimator draws its ``k`` samples of ``f = model.objective(x, η)`` and
       returns ``g ≈ ∇_η E[f]`` ``[B, *latent]``. ``prior_temperature`` and ``kl`` configure the
       relaxed objective (:meth:`~dcvbench.problems.vae.NegativeELBO.relaxed`), for estimators that
       train on it (``concrete``: then ``f`` is the negative relaxed ELBO throughout, values and
       ``g`` alike).
    2. Generative model: the gradient of ``mean(f)`` over the estimator's sample values — the
       estimate's ``param_grads`` when its values came from the objective's shared backward pass
       (:meth:`~dcvbench.problems.vae.NegativeELBO.value_and_input_grad`), else by autograd — or of
       the estimate's own ``surrogate`` where it gives one (VIMCO's K-sample bound).
    3. Encoder: one vector–Jacobian product, ``η.backward(g / B)`` (``g`` is per row; the
       objective averages the rows).
    4. The optimisers step; then ``estimator.update`` learns its own state (``α``), after ``g`` was
       used, so ``g`` stays unbiased.

    The prior's gradient is written when the prior is learned: step it with ``prior_optimizer``
    (the DisARM protocol's SGD), or put it in ``decoder_optimizer``'s parameters. Gradients stay
    in ``.grad`` after the step (for :class:`~dcvbench.measure.vae_variance.EMAVariance`); nothing
    here waits on the device.
    """
    model.zero_grad(set_to_none=True)
    logits = model.encode(x)  # [B, *latent]
    f = model.objective(x, logits, prior_temperature=prior_temperature, kl=kl)
    estimate = estimator(logits, f, k, generator)
    values = estimate.values  # [E, B]

    params = f.generative_parameters()
    if estimate.param_grads is not None:
        if estimate.surrogate is not None:  # two answers to one question: refuse, do not pick one
            raise RuntimeError(f"{type(estimator).__name__} returned both param_grads and a surrogate")
        for param, grad in zip(params, estimate.param_grads, strict=True):
            param.grad = grad
    else:
        surrogate = values.mean() if estimate.surrogate is None else estimate.surrogate
        if surrogate.requires_grad:
            # inputs=params: the surrogate may also reach an estimator's own leaves (a relaxed
            # sample's logits), which are not the generative model's to train.
            surrogate.backward(inputs=params)
        elif params:
            raise RuntimeError(
                f"{type(estimator).__name__} returned objective values without a graph and without "
                "the gradients of the objective's value_and_input_grad: the decoder cannot be trained"
            )
    logits.backward(estimate.grad / x.shape[0])

    encoder_optimizer.step()
    decoder_optimizer.step()
    if prior_optimizer is not None:
        prior_optimizer.step()
    estimator.update(estimate)
    return StepOutput(train_elbo=-values.detach().mean(), estimate=estimate)
