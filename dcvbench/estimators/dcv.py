"""REINFORCE leave-one-out with a double control variate (``rloo-dcv``).

Titsias & Shi, *Double Control Variates for Gradient Estimation in Discrete Latent Variable
Models*, AISTATS 2022.

With ``s_k = b_k − θ``, ``∇f_k = ∇_b f(b_k)``, ``ḡ = (1/K) Σ_k ∇f_k`` and the leave-one-out mean
gradient ``ḡ_{−k} = (1/(K−1)) Σ_{j≠k} ∇f_j``, each sample's signal gains a first-order Taylor term
that uses only the *other* samples::

    F_k = f_k + α ⟨ḡ_{−k}, s_k⟩
    g   = (1/K) Σ_k (F_k − (1/(K−1)) Σ_{j≠k} F_j) s_k  −  α ḡ ⊙ θ(1−θ)

The last term removes the expectation the Taylor terms add (``b_k`` is independent of ``ḡ_{−k}``
and ``E[s sᵀ] = diag(θ(1−θ))``), so ``g`` is unbiased for every ``α``; ``α = 0`` is exactly RLOO.
``g`` is linear in α, ``g = g₀ + α h``, and α is chosen to minimise ``E‖g‖²`` — an unbiased
estimator's mean does not depend on α, so this minimises its variance.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
from torch import Tensor, nn

from dcvbench.estimators.base import (
    Estimate,
    Estimator,
    EstimatorInfo,
    EstimatorSettings,
    Objective,
    ProblemShape,
    evaluate,
    leave_one_out_centre,
)
from dcvbench.estimators.registry import register
from dcvbench.estimators.sampling import bernoulli_from_uniform

AlphaLearning = Literal["sgd", "optimal"]
AlphaOptimizer = Literal["adam", "rmsprop", "sgd"]


class ControlVariateEstimator(Estimator):
    """An estimator of the form ``g = g₀ + α h`` with a scalar weight ``α`` that can be set.

    Subclasses return ``h`` as :attr:`Estimate.control`. Variance studies use :meth:`set_alpha` to
    evaluate the estimator at the variance-optimal ``α`` of a fixed point.
    """

    alpha: nn.Parameter

    def set_alpha(self, value: float) -> None:
        with torch.no_grad():
            self.alpha.fill_(value)


def _make_optimizer(name: AlphaOptimizer, params: list[Tensor], lr: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "rmsprop":
        # The published toy's settings: decay 0.9, ε outside the square root (as torch does).
        return torch.optim.RMSprop(params, lr=lr, alpha=0.9, eps=1e-7)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    raise ValueError(f"unknown alpha optimizer {name!r}; choose from: adam, rmsprop, sgd")


def _scalar_step(optimizer: torch.optim.Optimizer, param: Tensor, grad: Tensor) -> None:
    """One step of ``optimizer`` (as :func:`_make_optimizer` builds it) on the 0-d ``param``.

    The arithmetic of torch's own SGD, RMSprop and Adam, in their order, on the state the optimizer
    keeps, so ``param`` and ``optimizer.state_dict()`` (hence checkpoints) are what
    ``optimizer.step()`` gives (the tests compare the two, step by step). It skips ``step()``'s
    per-call machinery (hooks, profiler records, parameter groups), which for one scalar costs more
    than the arithmetic: inside a VAE training step (nonlinear, K = 2, one thread) the α update
    took about 0.7 ms through ``step()``, 5 % of the step, and 0.4 ms here.
    """
    group = optimizer.param_groups[0]
    lr = group["lr"]
    if isinstance(optimizer, torch.optim.SGD):  # no momentum, hence no state
        param.add_(grad, alpha=-lr)
        return
    state = optimizer.state[param]
    if not state:  # torch creates the state, in its own format, at the first step
        param.grad = grad
        optimizer.step()
        return
    state["step"] += 1
    if isinstance(optimizer, torch.optim.RMSprop):
        square_avg = state["square_avg"]
        square_avg.mul_(group["alpha"]).addcmul_(grad, grad, value=1 - group["alpha"])
        param.addcdiv_(grad, square_avg.sqrt().add_(group["eps"]), value=-lr)
        return
    beta1, beta2 = group["betas"]  # Adam
    step = float(state["step"])  # a CPU tensor: no wait on the device
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    step_size = lr / (1 - beta1**step)
    denom = (exp_avg_sq.sqrt() / (1 - beta2**step) ** 0.5).add_(group["eps"])
    param.addcdiv_(exp_avg, denom, value=-step_size)


@register(
    EstimatorInfo(
        name="rloo-dcv",
        summary="RLOO + double control variate (Taylor term from the other samples), learned α",
        unbiased=True,
        needs_input_grad=True,
        min_k=2,
    )
)
class RLOODCV(ControlVariateEstimator):
    """REINFORCE leave-one-out with the double control variate of Titsias & Shi (2022).

    Args:
        alpha: a fixed weight ``α``; ``None`` (default) learns it online, starting at 0.
        learning: how α is learned. ``"sgd"``: a gradient step of ``optimizer`` on ``mean_B ‖g‖²``
            after each estimate (the paper's method). ``"optimal"``: ``α = −E⟨g₀, h⟩ / E‖h‖²``
            with both expectations running averages over *previous* estimates, so the current
            estimate stays unbiased.
        optimizer: ``"adam"`` (the VAE reference, lr 1e-3), ``"rmsprop"`` (the toy reference, lr
            5e-4) or ``"sgd"``.
        lr: learning rate of that optimizer.
        average_decay: decay of the running averages for ``learning="optimal"``.
    """

    def __init__(
        self,
        alpha: float | None = None,
        learning: AlphaLearning = "sgd",
        optimizer: AlphaOptimizer = "adam",
        lr: float = 1e-3,
        average_decay: float = 0.99,
    ):
        super().__init__()
        if learning not in ("sgd", "optimal"):
            raise ValueError(f"unknown alpha learning {learning!r}; choose from: sgd, optimal")
        if not 0.0 <= average_decay < 1.0:
            raise ValueError(f"average_decay must be in [0, 1), got {average_decay}")
        self.learned = alpha is None
        self.learning = learning
        # A float64 scalar: a user's --alpha is stored exactly, and tiny steps are not rounded away.
        initial = 0.0 if alpha is None else float(alpha)
        self.alpha = nn.Parameter(torch.tensor(initial, dtype=torch.float64))
        self.alpha.requires_grad_(self.learned and learning == "sgd")
        self.average_decay = average_decay
        # Running averages of ⟨g₀, h⟩ and ‖h‖² for learning="optimal".
        self.register_buffer("cross_average", torch.zeros((), dtype=torch.float64))
        self.register_buffer("control_average", torch.zeros((), dtype=torch.float64))
        self.optimizer = (
            _make_optimizer(optimizer, [self.alpha], lr) if self.learned and learning == "sgd" else None
        )

    @classmethod
    def from_settings(cls, settings: EstimatorSettings, shape: ProblemShape) -> RLOODCV:
        return cls(
            alpha=settings.alpha,
            learning=settings.alpha_learning,
            optimizer=settings.alpha_optimizer,
            lr=settings.alpha_lr,
        )

    def estimate(self, logits: Tensor, f: Objective, noise: Tensor) -> Estimate:
        k = noise.shape[0]
        probs = torch.sigmoid(logits)  # [B, D]
        b = bernoulli_from_uniform(noise, probs)  # [K, B, D]
        score = b - probs  # [K, B, D]
        values, input_grad = evaluate(f, b, with_input_grad=True)  # [K, B], [K, B, D]
        grad_sum = input_grad.sum(0)  # [B, D]
        # ⟨ḡ_{−k}, s_k⟩ with ḡ_{−k} = (Σ_j ∇f_j − ∇f_k)/(K−1). (Elementwise products and sums beat
        # einsum here: it lowers these small contractions to many tiny batched matmuls.)
        taylor = ((grad_sum - input_grad) * score).sum(-1) / (k - 1)  # [K, B]

        # g₀ and the Taylor part of h in one pass over the scores: [K, 2, B, 1] · [K, 1, B, D].
        signals = leave_one_out_centre(torch.stack([values.detach(), taylor], dim=1))  # [K, 2, B]
        base, taylor_part = (signals.unsqueeze(-1) * score.unsqueeze(1)).mean(0).unbind(0)  # [B, D] each
        correction = (grad_sum / k) * probs * (1.0 - probs)  # ḡ ⊙ θ(1−θ): [B, D]
        control = taylor_part - correction  # h: [B, D]
        # A copy, not a view of the parameter: update() changes α in place after this estimate is used.
        alpha = self.alpha.detach().to(logits.dtype, copy=True)
        grad = base + alpha * control  # [B, D]
        return Estimate(grad=grad.detach(), values=values, stats={"alpha": alpha}, control=control)

    def update(self, estimate: Estimate) -> None:
        if not self.learned:
            return
        g, h = estimate.grad.detach(), estimate.control.detach()  # [B, D]
        rows = g.shape[0]
        if self.learning == "sgd":
            # d/dα of mean_B ‖g₀ + α h‖² is (2/B) Σ g·h.
            grad = (2.0 * (g * h).sum() / rows).to(self.alpha.dtype).reshape(())
            with torch.no_grad():
                _scalar_step(self.optimizer, self.alpha, grad)
            return
        with torch.no_grad():
            base = g - self.alpha.to(g.dtype) * h  # g₀
            decay = self.average_decay
            cross = ((base * h).sum() / rows).to(self.cross_average.dtype)
            control = ((h * h).sum() / rows).to(self.control_average.dtype)
            self.cross_average.mul_(decay).add_((1.0 - decay) * cross)
            self.control_average.mul_(decay).add_((1.0 - decay) * control)
            # torch.where, not `if`: reading the average on the host would make every training
            # step wait for the device. (Where the average is 0 the quotient is NaN, and unused.)
            optimal = -self.cross_average / self.control_average
            self.alpha.copy_(torch.where(self.control_average > 0, optimal, self.alpha))

    def get_extra_state(self) -> dict:
        # A copy: optimizer.state_dict() shares the live moment tensors, so an estimator loaded
        # from it in the same process would otherwise step the same Adam moments as this one.
        return {"optimizer": copy.deepcopy(self.optimizer.state_dict()) if self.optimizer else None}

    def set_extra_state(self, state: dict) -> None:
        if self.optimizer is not None and state.get("optimizer") is not None:
            self.optimizer.load_state_dict(state["optimizer"])
