"""REBAR and RELAX: a learned control on conditional relaxations (``rebar``, ``relax``).

One module for both: REBAR is RELAX without its control network.

Tucker, Mnih, Maddison, Lawson & Sohl-Dickstein, *REBAR: Low-variance, unbiased gradient estimates
for discrete latent variable models*, NeurIPS 2017. Grathwohl, Choi, Wu, Roeder & Duvenaud,
*Backpropagation through the Void: Optimizing control variates for black-box gradient estimation*
(RELAX), ICLR 2018. DESIGN §3.4.

One sample per estimate: logistic noise ``L`` (from ``u``) gives ``z = η + L`` and ``b = H(z) ~ q``;
a second uniform ``v`` gives ``z̃ ~ p(z | b)``, a relaxed sample conditioned on the same ``b``. With
a control ``c`` differentiable in ``z``::

    g = (f(b) − c(z̃)) (b − θ) + ∇_η c(z) − ∇_η c(z̃)

is unbiased for any ``c``: ``E[c(z̃)(b − θ)] = E[∇_η c(z)] − E[∇_η c(z̃)]`` (Tucker et al., §3).
Here ``c(z) = s·f(σ(z/λ)) + r_ψ(σ(z/λ))`` with a learned temperature ``λ`` and scale ``s``; REBAR
has ``r ≡ 0``, RELAX adds a small network ``r_ψ`` (Grathwohl et al. call the combination
"relaxed-REBAR" and use it for their VAEs). K samples average K independent such estimates.

``c`` must be differentiable in ``z``. An objective that samples stochastic layers of its own below
``b`` (a VAE with several layers) would complete the chain with hard samples, and ``f(σ(z/λ))``
would jump where one of them flips; the control then completes it with relaxed samples at ``λ``
(:class:`~dcvbench.objectives.HasSmoothCompletion`), which keeps ``g`` unbiased (tested on an
enumerable two-layer VAE, where the hard completion measured |z| up to 73).

``z̃`` depends on ``η`` directly and through ``θ = σ(η)`` inside the conditional noise
``v' = b(vθ + 1 − θ) + (1 − b)v(1 − θ)``, ``z̃ = η + log v' − log(1 − v')``; ``∇_η c(z̃)`` must
follow both (a published PyTorch port dropped the second and was biased). Simplified, the two are
one expression of ``η`` (:func:`~dcvbench.latent.conditional.conditional_logistic`), which
autograd differentiates whole.

λ, s and ψ are trained to minimise the variance of ``g``: ``g`` is unbiased for every value of
them, so ``∇ E‖g‖² = ∇ Var(g)``, and ``‖g‖²`` of the current estimate is an unbiased sample of it
(Grathwohl et al., §3.3). That needs ``∇_η c`` with its own graph (second order), built only in
training mode.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from dcvbench.estimators.base import Estimate, EstimatorError, EstimatorInfo, Stat
from dcvbench.estimators.evaluation import evaluate
from dcvbench.estimators.learned_control import LearnedControlEstimator
from dcvbench.estimators.options import CONTROL_LR
from dcvbench.estimators.registry import register
from dcvbench.estimators.score_function import score_function_gradient
from dcvbench.latent import BINARY, LatentFamily
from dcvbench.latent.conditional import conditional_logistic
from dcvbench.latent.noise import logistic_from_uniform, uniform_noise
from dcvbench.objectives import HasContext, HasSmoothCompletion, Objective, ProblemShape

INITIAL_TEMPERATURE = 0.5  # λ: REBAR's relaxation starts sharp, close to the hard b
HIDDEN = 50  # ReLU units of RELAX's control network: a small net, our choice (one hidden layer)
# What each estimate reports: the control's current temperature λ and scale s.
CONTROL_STATS = (Stat("control_temperature"), Stat("control_scale"))


class ControlNetwork(nn.Module):
    """RELAX's ``r_ψ``: ``w₂ᵀ relu(W_z ζ + W_x x + c₁) + c₂`` on the relaxed sample ``ζ = σ(z/λ)``
    and, where the objective has one, its per-row input ``x`` (the VAE's image).

    A function of ``z`` through the bounded ``ζ``, as in the authors' reference code, rather than of
    the unbounded logistic ``z``. ``x`` enters the hidden layer through its own weights, computed
    once per row rather than once per sample. The hidden weights are Glorot-uniform from a fixed
    seed (no global random state); the output layer starts at zero, so a fresh ``relax`` has exactly
    ``rebar``'s control and learns only what that leaves.
    """

    def __init__(self, latent: int, context: int, hidden: int, generator: torch.Generator):
        super().__init__()
        self.latent_layer = nn.utils.skip_init(nn.Linear, latent, hidden)
        self.context_layer = nn.utils.skip_init(nn.Linear, context, hidden, bias=False) if context else None
        self.output_layer = nn.utils.skip_init(nn.Linear, hidden, 1)
        for layer in (self.latent_layer, self.context_layer):
            if layer is not None:
                nn.init.xavier_uniform_(layer.weight, generator=generator)
        for tensor in (self.latent_layer.bias, self.output_layer.weight, self.output_layer.bias):
            nn.init.zeros_(tensor)

    def forward(self, relaxed: Tensor, context: Tensor | None) -> Tensor:
        """``relaxed [..., B, D]``, ``context [B, C]`` (or ``None``) → ``[..., B]`` in ``relaxed``'s dtype."""
        dtype = self.output_layer.weight.dtype  # the network keeps its own precision
        hidden = self.latent_layer(relaxed.to(dtype))  # [..., B, H]
        if self.context_layer is not None:
            hidden = hidden + self.context_layer(context.to(dtype))  # [B, H], broadcast over samples
        return self.output_layer(torch.relu(hidden)).squeeze(-1).to(relaxed.dtype)


class ConditionalRelaxation(LearnedControlEstimator):
    """``g = (f(b) − c(z̃))(b − θ) + ∇_η c(z) − ∇_η c(z̃)``, ``c(z) = s·f(σ(z/λ)) + r_ψ``, learned.

    Args:
        family: the latents' family (bits only).
        network: RELAX's ``r_ψ``; ``None`` for REBAR's control, ``s·f(σ(z/λ))`` alone.
        control_lr: Adam learning rate of λ, s and ψ (minimising ``mean_B ‖g‖²``).
        temperature: initial ``λ`` (learned as ``log λ``, so it stays positive).
        scale: initial ``s``.
    """

    options = (CONTROL_LR,)

    def __init__(
        self,
        family: LatentFamily,
        network: ControlNetwork | None,
        control_lr: float = CONTROL_LR.default,
        temperature: float = INITIAL_TEMPERATURE,
        scale: float = 1.0,
    ):
        super().__init__(family)
        if not temperature > 0.0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))
        self.scale = nn.Parameter(torch.tensor(float(scale)))
        self.network = network
        self.make_optimizer(control_lr)

    @property
    def temperature(self) -> Tensor:
        """``λ = exp(log λ)``, 0-d, attached to the parameter."""
        return self.log_temperature.exp()

    def sample(self, logits: Tensor, k: int, generator: torch.Generator) -> Tensor:
        """``[2, K, B, D]``: uniforms ``u`` for ``z`` (first, so ``z`` is the ``concrete`` estimator's
        at the same generator state) and ``v`` for ``z̃``."""
        return uniform_noise((2, k, *logits.shape), logits, generator)

    def control(self, z: Tensor, f: Objective, context: Tensor | None) -> Tensor:
        """``c(z) = s·f(σ(z/λ)) + r_ψ(σ(z/λ), x)``: ``z [..., B, D]`` → ``[..., B]``."""
        relaxed = torch.sigmoid(z / self.temperature)  # [..., B, D]
        # With layers below b, f's hard completion jumps where a lower sample flips: the control
        # must be continuous in z for its reparameterised correction to cancel, so those layers
        # are relaxed too (at the control's temperature).
        smooth = f.smooth(relaxed, self.temperature) if isinstance(f, HasSmoothCompletion) else f(relaxed)
        value = self.scale * smooth
        return value if self.network is None else value + self.network(relaxed, context)

    def conditional(self, logits: Tensor, b: Tensor, v: Tensor) -> Tensor:
        """``z̃ ~ p(z | b)`` (:func:`~dcvbench.latent.conditional.conditional_logistic`), as a function
        of the leaf ``logits``."""
        return conditional_logistic(logits, b, v)

    def estimate(self, logits: Tensor, f: Objective, noise: Tensor) -> Estimate:
        u, v = noise.unbind(0)  # [K, B, D] each
        k = u.shape[0]
        context = self._context(f)
        probs = self.family.probs(logits)  # [B, D]
        with torch.enable_grad():  # ∇_η c is needed even when the caller has autograd off
            eta = logits.detach().clone().requires_grad_(True)  # our own leaf: [B, D]
            z = eta + logistic_from_uniform(u)  # [K, B, D]
            b = (z.detach() > 0).to(logits.dtype)  # H(z) ~ Bernoulli(θ)
            z_tilde = self.conditional(eta, b, v)  # [K, B, D]
            control_z, control_tilde = self.control(torch.stack([z, z_tilde]), f, context).unbind(0)  # [K, B]
            # Rows are independent, so one backward pass gives every row's Σ_k ∇_η (c(z_k) − c(z̃_k)).
            # In training it keeps its graph: ‖g‖² is then differentiated through it.
            (pathwise,) = torch.autograd.grad(
                (control_z - control_tilde).sum(), eta, create_graph=self.training
            )  # [B, D]
        evaluation = evaluate(f, b, with_input_grad=False)  # values [K, B]: the decoder trains on these only
        values = evaluation.values
        with torch.enable_grad():
            grad = score_function_gradient(values.detach() - control_tilde, b, probs) + pathwise / k  # [B, D]
            learning = self._variance_loss(grad) if self.training else None
        stats = {
            "control_temperature": self.temperature.detach().clone(),
            "control_scale": self.scale.detach().clone(),
        }
        return Estimate(
            grad=grad.detach(),
            values=values,
            param_grads=evaluation.param_grads,
            stats=stats,
            learning=learning,
        )

    def state_stats(self) -> dict[str, float]:
        return {
            "control_temperature": float(self.temperature.detach()),
            "control_scale": float(self.scale.detach()),
        }

    def _context(self, f: Objective) -> Tensor | None:
        """The objective's per-row input for ``r_ψ`` (``None`` without a network or context)."""
        if self.network is None:
            return None
        context = f.context if isinstance(f, HasContext) else None
        expected = 0 if self.network.context_layer is None else self.network.context_layer.in_features
        width = 0 if context is None else context.shape[-1]
        if width != expected:
            raise EstimatorError(
                f"{self.info.name} was built for a context of width {expected}; the objective has "
                + ("none" if context is None else f"width {width}")
            )
        return None if context is None else context.detach()

    def _variance_loss(self, grad: Tensor) -> Tensor:
        """``mean_B ‖g‖²`` as a loss over λ, s, ψ only, its gradient taken now.

        The loss's own graph runs through ``f`` — a VAE's decoder — whose weights a training step
        updates in place before :meth:`update` runs; autograd would then refuse it, and the
        gradient wanted is the one at the weights that gave ``g``. So the gradient is taken here
        and returned as a first-order stand-in, ``loss + Σ ⟨∇loss, p − p⟩``: the loss's value, and
        exactly its gradient with respect to the estimator's parameters ``p``, reaching nothing else.
        """
        loss = grad.pow(2).sum(-1).mean()
        params = list(self.parameters())
        gradients = torch.autograd.grad(loss, params)
        pairs = zip(gradients, params, strict=True)
        return loss.detach() + sum((gradient * (param - param.detach())).sum() for gradient, param in pairs)


@register(
    EstimatorInfo(
        name="rebar",
        summary="REBAR: score function − s·f(σ(z̃/λ)) + reparameterised correction; λ, s learned",
        unbiased=True,
        needs_input_grad=True,
        evals_per_sample=3,
        families=("binary",),
        order=120,
        stats=CONTROL_STATS,
    )
)
class Rebar(ConditionalRelaxation):
    """REBAR (Tucker et al. 2017): the control ``c(z) = s·f(σ(z/λ))``, λ and s learned."""

    def __init__(
        self,
        family: LatentFamily = BINARY,
        control_lr: float = CONTROL_LR.default,
        temperature: float = INITIAL_TEMPERATURE,
        scale: float = 1.0,
    ):
        super().__init__(family, None, control_lr, temperature, scale)


@register(
    EstimatorInfo(
        name="relax",
        summary="RELAX: REBAR's control + a learned network r_ψ(z, x); λ, s, ψ learned",
        unbiased=True,
        needs_input_grad=True,
        evals_per_sample=3,
        families=("binary",),
        order=130,
        stats=CONTROL_STATS,
    )
)
class Relax(ConditionalRelaxation):
    """RELAX (Grathwohl et al. 2018): ``c(z) = s·f(σ(z/λ)) + r_ψ(σ(z/λ), x)``, λ, s and ψ learned.

    Args:
        latent: ``D``, the latents per row (the network's input width).
        context: width of the objective's per-row input ``x`` the network also reads; 0 (the toy)
            for a network on the relaxed sample alone.
        family, control_lr, temperature, scale: as :class:`ConditionalRelaxation`.
        hidden: hidden units of ``r_ψ``.
        seed: seed of ``r_ψ``'s initial hidden weights. Fixed by default: the initial network is
            part of the estimator's definition, the same in every run.
    """

    def __init__(
        self,
        latent: int,
        context: int = 0,
        family: LatentFamily = BINARY,
        control_lr: float = CONTROL_LR.default,
        temperature: float = INITIAL_TEMPERATURE,
        scale: float = 1.0,
        hidden: int = HIDDEN,
        seed: int = 0,
    ):
        if latent < 1 or context < 0 or hidden < 1:
            raise ValueError(f"need latent ≥ 1, context ≥ 0, hidden ≥ 1; got {latent}, {context}, {hidden}")
        network = ControlNetwork(latent, context, hidden, torch.Generator().manual_seed(seed))
        super().__init__(family, network, control_lr, temperature, scale)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], shape: ProblemShape) -> Relax:
        return cls(
            shape.latent, context=shape.context, family=shape.family, control_lr=CONTROL_LR.read(settings)
        )
