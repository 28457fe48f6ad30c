"""The Concrete (Gumbel-softmax) relaxation of categorical latents: pathwise gradients (biased).

Maddison, Mnih & Teh, *The Concrete Distribution: A Continuous Relaxation of Discrete Random
Variables*, ICLR 2017; Jang, Gu & Poole, *Categorical Reparameterization with Gumbel-Softmax*,
ICLR 2017.

With Gumbel noise ``G = −log(−log u)`` per class and temperature ``λ``, the relaxed sample lives on
the simplex, and is worked with in log space (the ExpConcrete variable)::

    y = log_softmax((η + G)/λ)          z = exp(y) = softmax((η + G)/λ)          b = one_hot(argmax y)

``b ~ Categorical(softmax(η))`` exactly (Gumbel-max), and ``z → b`` as ``λ → 0``.

- ``concrete``: the gradient of the *relaxed* objective, by autograd through ``y`` to the logits.
  An objective may define its relaxed model itself (a VAE replaces its discrete log-probabilities
  by Concrete densities); :func:`relaxed_objective` is that protocol.
- ``st-concrete`` (straight-through Gumbel-softmax, Jang et al. 2017): the discrete ``f`` at the
  hard ``b`` forward, the relaxed ``z``'s Jacobian backward:
  ``g = (1/K) Σ_k (∂z_k/∂η)ᵀ ∇_b f(b_k)`` with ``∂z/∂η = (diag(z) − zzᵀ)/λ`` per variable.

Both subclass their binary counterparts, so whatever recognises a relaxed estimator (temperature
annealing through the ``temperature`` attribute, the run manifest's relaxation record) recognises
these too; only the samples and the estimates differ.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dcvbench.estimators.base import Estimate, EstimatorInfo, Objective, evaluate
from dcvbench.estimators.concrete import Concrete, RelaxedEstimator, StraightThroughConcrete
from dcvbench.estimators.registry import register
from dcvbench.estimators.sampling import gumbel_from_uniform, one_hot_argmax


def exp_concrete_log_prob(y: Tensor, logits: Tensor, temperature: float) -> Tensor:
    """Log-density of the ExpConcrete distribution (Maddison et al. 2017, appendix C) at ``y [..., C]``.

    For a log-simplex point ``y`` (``Σ_c exp(y_c) = 1``), logits ``a`` (broadcast against ``y``;
    unnormalised is fine, the density does not change when a constant is added to them) and
    temperature ``λ``::

        log p(y) = log (C−1)! + (C−1) log λ + Σ_c (a_c − λ y_c) − C · logsumexp_c (a_c − λ y_c)

    computed in log space throughout, so no ``exp`` can under- or overflow. Reduces the class
    dimension: → ``[...]``.

    Base measure: the Lebesgue measure of the log-ratios ``(y_1 − y_C, …, y_{C−1} − y_C)``, which is
    the measure ``Π_c dx_c / x_c`` on the simplex, ``x = exp(y)``. It depends on no parameter, so it
    cancels from every ratio of two such densities (the relaxed ELBO's ``log p − log q``). The
    Lebesgue density of ``x`` on its first C−1 coordinates is ``exp(log p(y) − Σ_c y_c)``.
    """
    classes = y.shape[-1]
    scores = logits - temperature * y  # [..., C]
    normaliser = math.lgamma(classes) + (classes - 1) * math.log(temperature)
    return normaliser + scores.sum(-1) - classes * scores.logsumexp(-1)


def relaxed_objective(f: Objective, y: Tensor, logits: Tensor, temperature: float) -> Tensor:
    """The objective of the relaxed model at log-simplex samples ``y [K, B, N, C]`` → ``[K, B]``.

    An objective may offer ``relaxed(y, logits, temperature)``: its value at the relaxed sample
    ``z = exp(y)`` with densities of the relaxed variables in place of discrete probabilities (the
    categorical VAE's relaxed ELBO). ``logits [B, N, C]`` carry the autograd graph, and the result
    must depend on them through both ``y`` and any density term. Objectives without it (the toys)
    are evaluated at the relaxed point, ``f(exp(y))``.
    """
    relaxed = getattr(f, "relaxed", None)
    return relaxed(y, logits, temperature) if relaxed is not None else f(torch.exp(y))


class _LogSimplexSamples(RelaxedEstimator):
    """Relaxed categorical samples on the log-simplex, in place of the binary logit-space ones.

    Subclassing the binary :class:`~dcvbench.estimators.concrete.RelaxedEstimator` keeps one
    temperature protocol for both latent types (the ``temperature`` attribute a training loop may
    anneal, its validation and settings).
    """

    def relaxed_logits(self, logits: Tensor, noise: Tensor) -> Tensor:
        """``y = log_softmax((η + G)/λ)`` ``[K, B, N, C]``: ``z = exp(y)``, ``b = one_hot(argmax y)``."""
        return torch.log_softmax((logits + gumbel_from_uniform(noise)) / self.temperature, -1)


@register(
    EstimatorInfo(
        name="concrete",
        summary="Concrete (Gumbel-softmax) relaxation: pathwise gradient of the relaxed objective (biased)",
        unbiased=False,
        needs_input_grad=True,
    ),
    latent="categorical",
)
class CategoricalConcrete(_LogSimplexSamples, Concrete):
    """``g = ∇_η (1/K) Σ_k f̃(y_k)``, ``y_k = log_softmax((η + G_k)/λ)``, ``f̃`` the relaxed objective
    (:func:`relaxed_objective`), by autograd from a fresh leaf of the logits.

    ``values`` are the relaxed objective's, with their graph kept: a model trains its own parameters
    on them (the relaxed ELBO's decoder gradient).
    """

    def estimate(self, logits: Tensor, f: Objective, noise: Tensor) -> Estimate:
        with torch.enable_grad():
            leaf = logits.detach().requires_grad_(True)  # [B, N, C]
            y = self.relaxed_logits(leaf, noise)  # [K, B, N, C]
            values = relaxed_objective(f, y, leaf, self.temperature)  # [K, B]
            # Rows are independent: the gradient of the sum over rows is each row's own gradient.
            (grad,) = torch.autograd.grad(values.mean(0).sum(), leaf, retain_graph=True)
        return Estimate(grad=grad, values=values)


@register(
    EstimatorInfo(
        name="st-concrete",
        summary="straight-through Gumbel-softmax: f at one-hot b forward, relaxed z backward (biased)",
        unbiased=False,
        needs_input_grad=True,
    ),
    latent="categorical",
)
class CategoricalStraightThroughConcrete(_LogSimplexSamples, StraightThroughConcrete):
    """``g = (1/K) Σ_k (z_k ⊙ v_k − z_k ⟨z_k, v_k⟩)/λ``, ``v_k = ∇_b f(b_k)``, ``b_k = one_hot(argmax z_k)``.

    The vector–Jacobian product of ``z = softmax((η + G)/λ)`` with the discrete objective's input
    gradient at the hard sample, i.e. the gradient of ``f(b + z − stop_gradient(z))``, in closed form
    (no autograd graph through the relaxation).
    """

    def estimate(self, logits: Tensor, f: Objective, noise: Tensor) -> Estimate:
        y = self.relaxed_logits(logits, noise)  # [K, B, N, C]
        z = torch.exp(y)
        b = one_hot_argmax(y)  # the argmax of η + G: exact categorical samples (Gumbel-max)
        values, input_grad = evaluate(f, b, with_input_grad=True)  # [K, B], [K, B, N, C]
        along_z = (z * input_grad).sum(-1, keepdim=True)  # ⟨z, v⟩: [K, B, N, 1]
        grad = (z * (input_grad - along_z)).mean(0) / self.temperature  # [B, N, C]
        return Estimate(grad=grad, values=values)
