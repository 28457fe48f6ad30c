"""A variational autoencoder with categorical latents: its model and objective.

The categorical counterpart of :mod:`dcvbench.problems.vae` (DESIGN §3.6; the Gumbel-softmax
experiments of Jang, Gu & Poole 2017 use N = 20 variables of C = 10 classes): N independent
categorical latents with a categorical prior (uniform, or learned), a Bernoulli likelihood over
binarised pixels, and the same two architectures with N·C latent units::

    linear      encoder  x → Linear(P, NC) → η [N, C]        decoder  b [N, C] → Linear(NC, P) → pixel logits
    nonlinear   encoder  x → 200 → 200 → NC → η [N, C]       decoder  b [N, C] → NC → 200 → 200 → P
                (LeakyReLU(0.3) between layers)

The estimators minimise the negative single-sample ELBO at one-hot samples ``b [..., B, N, C]``::

    f(b) = −[log p(x|b) + log p(b) − log q(b|x)],    log q(b|x) = Σ_n ⟨b_n, log softmax(η_n)⟩

with ``η`` detached inside ``f``, as for binary latents: its direct dependence on ``η`` has zero
expected gradient, and the encoder learns only through the estimator's ``g ≈ ∇_η E_q[f]``. Both
latent log-probabilities are linear in ``b``, so ``f`` is defined for real ``b`` (relaxed samples,
``∇_b f``).

The Concrete relaxation trains a relaxed model (Maddison, Mnih & Teh 2017, appendix C): each
latent is an ExpConcrete variable ``y = log_softmax((a + G)/λ)`` on the log-simplex, with the
closed-form log-density :func:`~dcvbench.estimators.categorical.exp_concrete_log_prob`.
:meth:`CategoricalNegativeELBO.relaxed` is the negative relaxed ELBO at ``y ~ q_λ(·; η)``::

    "relaxed"   −[log p(x | exp(y)) + log p_{λp}(y; a) − log q_λ(y; η)]
    "analytic"  −log p(x | exp(y)) + KL(Cat(softmax η) ‖ Cat(softmax a))

``a`` the prior logits, ``λp`` the prior's temperature, ``λ`` the posterior's. Evaluation is always
on the discrete model, with hard samples.

The model and its objective subclass :class:`~dcvbench.problems.vae.VAE` and
:class:`~dcvbench.problems.vae.VAEObjective`, which hold what does not depend on the latent type
(networks, parameter groups, likelihood, the shared backward pass), so the training step
(:func:`~dcvbench.problems.vae.train_step`), the bounds (:func:`~dcvbench.problems.vae.iwae_bound`,
:func:`~dcvbench.problems.vae.elbo`) and the variance measurement serve both latent types.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dcvbench.estimators import ProblemShape
from dcvbench.estimators.categorical import exp_concrete_log_prob
from dcvbench.estimators.sampling import categorical_from_uniform, uniform_noise
from dcvbench.problems.vae import (
    HIDDEN,
    PIXELS,
    PRIOR_TEMPERATURE,
    VAE,
    Architecture,
    VAEObjective,
    networks,
)

# The Gumbel-softmax paper's categorical VAE: 20 variables of 10 classes each.
VARIABLES = 20
CLASSES = 10


class CategoricalVAE(VAE):
    """VAE with ``variables`` categorical latents of ``classes`` classes and a Bernoulli likelihood.

    Args:
        variables: number of categorical latents ``N``.
        classes: classes per latent ``C`` (≥ 2).
        arch: ``"linear"`` or ``"nonlinear"`` (see the module docstring).
        pixels: input dimension ``P`` (784 for 28×28 images).
        hidden: width of the nonlinear architecture's hidden layers.
        learn_prior: learn the prior's logits ``[N, C]`` instead of keeping the uniform prior
            (logits 0).
        input_mean, output_bias_mean, generator: as for :class:`~dcvbench.problems.vae.VAE`.
        device, dtype: where and in what precision the parameters live.
    """

    def __init__(
        self,
        variables: int = VARIABLES,
        classes: int = CLASSES,
        arch: Architecture = "linear",
        pixels: int = PIXELS,
        hidden: int = HIDDEN,
        learn_prior: bool = False,
        input_mean: Tensor | None = None,
        output_bias_mean: Tensor | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        if variables < 1:
            raise ValueError(f"variables must be ≥ 1, got {variables}")
        if classes < 2:
            raise ValueError(f"classes must be ≥ 2, got {classes}")
        factory = {"device": device, "dtype": dtype}
        encoder, decoder = networks(arch, pixels, hidden, variables * classes, factory)
        # The encoder's last layer emits N·C logits, viewed as [N, C]; the decoder flattens a one-hot
        # [N, C] back to its N·C inputs. Both views live inside the modules, so the encoder maps x to
        # logits of the estimators' shape (what encoder-gradient VJPs differentiate).
        encoder = nn.Sequential(*encoder, nn.Unflatten(-1, (variables, classes)))
        decoder = nn.Sequential(nn.Flatten(-2), *decoder)
        prior = torch.zeros(variables, classes, **factory)  # uniform
        super().__init__(
            encoder, decoder, prior, pixels, learn_prior, input_mean, output_bias_mean, generator
        )
        self.variables, self.classes, self.arch = variables, classes, arch

    @property
    def problem_shape(self) -> ProblemShape:
        """What an estimator for this model is built for: N variables of C classes, the pixels as context."""
        return ProblemShape(self.variables, context=self.pixels, classes=self.classes)

    def log_prior(self, b: Tensor) -> Tensor:
        """``log p(b) = Σ_n ⟨b_n, log softmax(a_n)⟩``, ``a`` the prior logits: ``[..., N, C]`` → ``[...]``."""
        return categorical_log_prob(b, self.prior_logits)

    @staticmethod
    def log_posterior(b: Tensor, logits: Tensor) -> Tensor:
        """``log q(b|x) = Σ_n ⟨b_n, log softmax(η_n)⟩``: b ``[..., B, N, C]``, η ``[B, N, C]`` → ``[...]``."""
        return categorical_log_prob(b, logits)

    def objective(
        self,
        x: Tensor,
        logits: Tensor,
        generative_grads: bool = True,
        prior_temperature: float = PRIOR_TEMPERATURE,
        kl: str = "relaxed",
    ) -> CategoricalNegativeELBO:
        return CategoricalNegativeELBO(self, x, logits, generative_grads, prior_temperature, kl)

    @staticmethod
    def sample_posterior(logits: Tensor, samples: int, generator: torch.Generator) -> Tensor:
        """``samples`` one-hot draws of ``q(·|x)`` ``[S, B, N, C]`` at logits ``[B, N, C]`` (Gumbel-max)."""
        noise = uniform_noise((samples, *logits.shape), logits, generator)
        return categorical_from_uniform(noise, logits)


def categorical_log_prob(b: Tensor, logits: Tensor) -> Tensor:
    """``Σ_n ⟨b_n, log softmax(a_n)⟩`` over the last two dimensions; exact for one-hot ``b``, linear in it."""
    return (b * torch.log_softmax(logits, -1)).sum((-2, -1))


def categorical_kl(logits: Tensor, prior_logits: Tensor) -> Tensor:
    """``Σ_n KL(Cat(softmax η_n) ‖ Cat(softmax a_n))``: ``[..., N, C] → [...]``."""
    log_probs = torch.log_softmax(logits, -1)
    return (log_probs.exp() * (log_probs - torch.log_softmax(prior_logits, -1))).sum((-2, -1))


# ---------------------------------------------------------------------------------------------
# The objective the estimators see.


class CategoricalNegativeELBO(VAEObjective):
    """The objective of a :class:`CategoricalVAE`: ``[..., B, N, C] → [..., B]``.

    The categorical counterpart of :class:`~dcvbench.problems.vae.NegativeELBO`, with the same
    contract (:class:`~dcvbench.problems.vae.VAEObjective`: ``log q`` at the logits detached, one
    backward pass for ``∇_b f`` and the generative gradients); :meth:`relaxed` is the relaxed
    model's objective with ExpConcrete latents (the module docstring).
    """

    def __init__(
        self,
        model: CategoricalVAE,
        x: Tensor,
        logits: Tensor,
        generative_grads: bool = True,
        prior_temperature: float = PRIOR_TEMPERATURE,
        kl: str = "relaxed",
    ):
        super().__init__(model, x, logits, generative_grads, prior_temperature, kl)
        self._log_posterior_probs = torch.log_softmax(self.logits, -1)  # [B, N, C]

    def __call__(self, b: Tensor) -> Tensor:
        log_prior_probs = torch.log_softmax(self.model.prior_logits, -1)  # [N, C]
        # log p(b) − log q(b|x) in one product with b (the prior stays in the graph when learned).
        latent = (b * (log_prior_probs - self._log_posterior_probs)).sum((-2, -1))  # [..., B]
        return -(self.model.log_likelihood(self.x, b) + latent)

    def relaxed(self, y: Tensor, logits: Tensor, temperature: float) -> Tensor:
        """The negative relaxed ELBO at ``z = exp(y)``: ``y [..., B, N, C]`` → ``[..., B]``.

        ``y`` are relaxed latents on the log-simplex, a sample of ``q_λ(·; η)`` with ``λ =
        temperature``; ``logits`` is ``η [B, N, C]`` *with* the caller's graph: this objective is
        differentiated pathwise, so its dependence on ``η`` through the posterior's density (or the
        KL) is part of its gradient along with that through ``y``. The result is attached to the
        generative model's graph, which trains on it.
        """
        reconstruction = self.model.log_likelihood(self.x, torch.exp(y))  # [..., B]
        prior = self.model.prior_logits  # [N, C]
        if self.kl == "analytic":
            return categorical_kl(logits, prior) - reconstruction  # [B] + [..., B]
        log_prior = exp_concrete_log_prob(y, prior, self.prior_temperature).sum(-1)  # [..., B]
        log_posterior = exp_concrete_log_prob(y, logits, temperature).sum(-1)  # [..., B]
        return -(reconstruction + log_prior - log_posterior)
