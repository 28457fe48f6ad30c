"""REINFORCE leave-one-out with a double control variate (``rloo-dcv``), and its α options."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from dcvbench.estimators.base import Estimate, EstimatorInfo, Stat
from dcvbench.estimators.control_variate import ControlVariateEstimator
from dcvbench.estimators.evaluation import evaluate
from dcvbench.estimators.options import Option, positive
from dcvbench.estimators.registry import register
from dcvbench.estimators.score_function import leave_one_out_centre
from dcvbench.latent import BINARY, LatentFamily
from dcvbench.objectives import Objective

ALPHA = Option(
    "alpha",
    None,
    "fix the control-variate weight α",
    optional=True,
    shown_default="learned",
    job_help={"variance": "fix α (default: the variance-optimal α at θ, from separate draws)"},
)
# How α is learned: options of the jobs that train (a variance study sets α to its optimum).
LEARNING_JOBS = ("toy", "vae", "predict")
ALPHA_LEARNING = Option(
    "alpha_learning",
    "sgd",  # the paper's method
    "learn α by sgd on ‖g‖² (the paper) or by the running optimum",
    kind=str,
    choices=("sgd", "optimal"),
    jobs=LEARNING_JOBS,
    only_with={"alpha": (None,)},  # a fixed --alpha is not learned
)
# The published toy tuned α with RMSprop at lr 5e-4, the VAE with Adam at 1e-3. Neither optimiser
# steps when α is fixed or learned as the running optimum.
ALPHA_OPTIMIZER = Option(
    "alpha_optimizer",
    "adam",
    "optimiser of α for --alpha-learning sgd",
    kind=str,
    choices=("adam", "rmsprop", "sgd"),
    job_defaults={"toy": "rmsprop"},
    jobs=LEARNING_JOBS,
    only_with={"alpha": (None,), "alpha_learning": ("sgd",)},
)
ALPHA_LR = Option(
    "alpha_lr",
    1e-3,
    "learning rate of α",
    check=positive,
    job_defaults={"toy": 5e-4},
    jobs=LEARNING_JOBS,
    only_with={"alpha": (None,), "alpha_learning": ("sgd",)},
)


def _make_optimizer(name: str, params: list[Tensor], lr: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "rmsprop":
        # The published toy's settings: decay 0.9, ε outside the square root (as torch does).
        return torch.optim.RMSprop(params, lr=lr, alpha=0.9, eps=1e-7)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    raise ValueError(f"unknown alpha optimizer {name!r}; choose from: adam, rmsprop, sgd")


@register(
    EstimatorInfo(
        name="rloo-dcv",
        summary="RLOO + double control variate (Taylor term from the other samples), learned α",
        unbiased=True,
        needs_input_grad=True,
        min_k=2,
        families=("binary", "categorical"),
        order=40,
        stats=(Stat("alpha"),),
    )
)
class RLOODCV(ControlVariateEstimator):
    """REINFORCE leave-one-out with the double control variate of Titsias & Shi.

    Titsias & Shi, *Double Control Variates for Gradient Estimation in Discrete Latent Variable
    Models*, AISTATS 2022; carried to one-hot categorical latents (DESIGN §3.6).

    With the score ``s_k = b_k − p``, ``∇f_k = ∇_b f(b_k)``, ``ḡ = (1/K) Σ_k ∇f_k`` and the
    leave-one-out mean gradient ``ḡ_{−k} = (1/(K−1)) Σ_{j≠k} ∇f_j``, each sample's signal gains a
    first-order Taylor term that uses only the *other* samples (the inner product over the event)::

        F_k = f_k + α ⟨ḡ_{−k}, s_k⟩
        g   = (1/K) Σ_k (F_k − (1/(K−1)) Σ_{j≠k} F_j) s_k  −  α Cov(s) ḡ

    ``Cov(s) ḡ`` is ``ḡ ⊙ θ(1−θ)`` for bits and ``π ⊙ ḡ − π⟨π, ḡ⟩`` per categorical variable
    (:meth:`~dcvbench.latent.LatentFamily.covariance_product`). It removes the expectation the
    Taylor terms add (``b_k`` is independent of ``ḡ_{−k}``), so ``g`` is unbiased for every ``α``;
    ``α = 0`` is exactly RLOO. ``g = g₀ + α h`` is linear in α, and α is chosen to minimise
    ``E‖g‖²`` — an unbiased estimator's mean does not depend on α, so this minimises its variance.

    Args:
        alpha: a fixed weight ``α``; ``None`` (default) learns it online, starting at 0.
        alpha_learning: ``"sgd"``: a step of ``alpha_optimizer`` on ``mean_B ‖g‖²`` after each
            estimate (the paper's method). ``"optimal"``: ``α = −E⟨g₀, h⟩ / E‖h‖²`` with both
            expectations running averages over *previous* estimates, so the current estimate stays
            unbiased.
        alpha_optimizer: ``"adam"`` (the VAE reference, lr 1e-3), ``"rmsprop"`` (the toy
            reference, lr 5e-4) or ``"sgd"``.
        alpha_lr: learning rate of that optimiser.
        average_decay: decay of the running averages for ``alpha_learning="optimal"``.
    """

    options = (ALPHA, ALPHA_LEARNING, ALPHA_OPTIMIZER, ALPHA_LR)

    def __init__(
        self,
        family: LatentFamily = BINARY,
        alpha: float | None = ALPHA.default,
        alpha_learning: str = ALPHA_LEARNING.default,
        alpha_optimizer: str = ALPHA_OPTIMIZER.default,
        alpha_lr: float = ALPHA_LR.default,
        average_decay: float = 0.99,
    ):
        super().__init__(family)
        if alpha_learning not in ("sgd", "optimal"):
            raise ValueError(f"unknown alpha learning {alpha_learning!r}; choose from: sgd, optimal")
        if not 0.0 <= average_decay < 1.0:
            raise ValueError(f"average_decay must be in [0, 1), got {average_decay}")
        self.learned = alpha is None
        self.learning = alpha_learning
        # A float64 scalar: a user's --alpha is stored exactly, and tiny steps are not rounded away.
        initial = 0.0 if alpha is None else float(alpha)
        self.alpha = nn.Parameter(torch.tensor(initial, dtype=torch.float64))
        stepped = self.learned and alpha_learning == "sgd"
        self.alpha.requires_grad_(stepped)
        self.average_decay = average_decay
        # Running averages of ⟨g₀, h⟩ and ‖h‖² for alpha_learning="optimal".
        self.register_buffer("cross_average", torch.zeros((), dtype=torch.float64))
        self.register_buffer("control_average", torch.zeros((), dtype=torch.float64))
        self.optimizer = _make_optimizer(alpha_optimizer, [self.alpha], alpha_lr) if stepped else None

    def estimate(self, logits: Tensor, f: Objective, noise: Tensor) -> Estimate:
        k = noise.shape[0]
        family = self.family
        probs = family.probs(logits)  # [B, *event]
        b = family.sample(logits, noise)  # [K, B, *event]
        score = family.score(b, probs)  # [K, B, *event]
        evaluation = evaluate(f, b, with_input_grad=True)
        values, input_grad = evaluation.values, evaluation.input_grad  # [K, B], [K, B, *event]
        grad_sum = input_grad.sum(0)  # [B, *event]
        # ⟨ḡ_{−k}, s_k⟩ with ḡ_{−k} = (Σ_j ∇f_j − ∇f_k)/(K−1). (Elementwise products and sums beat
        # einsum here: it lowers these small contractions to many tiny batched matmuls.)
        taylor = family.reduce((grad_sum - input_grad) * score) / (k - 1)  # [K, B]

        # g₀ and the Taylor part of h in one pass over the scores: [K, 2, B, 1..] · [K, 1, B, *event].
        signals = leave_one_out_centre(torch.stack([values.detach(), taylor], dim=1))  # [K, 2, B]
        event = (1,) * family.event_dims
        signals = signals.reshape(*signals.shape, *event)  # [K, 2, B, 1..]
        base, taylor_part = (signals * score.unsqueeze(1)).mean(0).unbind(0)  # [B, *event] each
        correction = family.covariance_product(probs, grad_sum / k)  # Cov(s) ḡ: [B, *event]
        control = taylor_part - correction  # h: [B, *event]
        # A copy, not a view of the parameter: update() changes α in place after this estimate is used.
        alpha = self.alpha.detach().to(logits.dtype, copy=True)
        grad = base + alpha * control  # [B, *event]
        return Estimate(
            grad=grad.detach(),
            values=values,
            param_grads=evaluation.param_grads,
            stats={"alpha": alpha},
            control=control,
        )

    def update(self, estimate: Estimate) -> None:
        if not self.learned:
            return
        g, h = estimate.grad.detach(), estimate.control.detach()  # [B, *event]
        rows = g.shape[0]
        if self.learning == "sgd":
            # d/dα of mean_B ‖g₀ + α h‖² is (2/B) Σ g·h.
            self.alpha.grad = (2.0 * (g * h).sum() / rows).to(self.alpha.dtype).reshape(())
            self.optimizer.step()
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

    def state_stats(self) -> dict[str, float]:
        return {"alpha": float(self.alpha.detach())}

    def get_extra_state(self) -> dict:
        # A copy: optimizer.state_dict() shares the live moment tensors, so an estimator loaded
        # from it in the same process would otherwise step the same Adam moments as this one.
        return {"optimizer": copy.deepcopy(self.optimizer.state_dict()) if self.optimizer else None}

    def set_extra_state(self, state: dict) -> None:
        if self.optimizer is not None and state.get("optimizer") is not None:
            self.optimizer.load_state_dict(state["optimizer"])
