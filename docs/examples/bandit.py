"""A contextual bandit: a softmax policy choosing one of C actions per context, with a known reward.

Run it as it stands (docs/examples.md):

    dcvbench variance --objective docs/examples/bandit.py:make_problem
    dcvbench train --objective docs/examples/bandit.py:make_model --estimator rloo --estimator rloo-dcv

Each of B contexts ``x_b ∈ R^W`` gets one categorical action ``a ~ π(· | x_b) = softmax(η_b)``
(logits ``[B, 1, C]``: one categorical variable of C classes per row). The expected reward
``r(x, a) = σ(x · u_a + c_a)`` is known (``u``, ``c`` drawn once from a fixed seed), so the loss of a
sample is ``f(b) = −Σ_a b_a r(x, a)`` for the one-hot action ``b``, and the exact gradient of
``E_π[f]`` with respect to the logits is, per row,

    ∇_η E_π[f] = π ⊙ (f − E_π f),     f = (−r(x, a))_a,   E_π f = Σ_a π_a f_a.

``make_problem()`` gives the objective, the logits of a fixed linear policy and that exact gradient,
for ``dcvbench variance`` / ``dcvbench.compare``; ``make_model()`` gives the linear policy itself,
which ``dcvbench train`` / ``dcvbench.train`` optimise, reporting the expected reward and regret of
the policy on fixed held-out contexts.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn

CONTEXT_DIM = 5  # W
ACTIONS = 10  # C
REWARD_SEED = 2024  # the reward function u, c: one bandit for every run and seed
PROBLEM_SEED = 7  # the contexts and the policy that make_problem measures at
HELD_OUT = 1000  # contexts of the held-out evaluation


def reward_function(actions: int = ACTIONS) -> tuple[Tensor, Tensor]:
    """``u [W, C]`` and ``c [C]`` of ``r(x, a) = σ(x · u_a + c_a)``, the same at every call."""
    generator = torch.Generator().manual_seed(REWARD_SEED)
    u = torch.randn(CONTEXT_DIM, actions, generator=generator)  # [W, C]
    c = torch.randn(actions, generator=generator)  # [C]
    return u, c


def expected_reward(x: Tensor, u: Tensor, c: Tensor) -> Tensor:
    """``r(x_b, a)`` for every context and action: ``[B, C]``."""
    return torch.sigmoid(x @ u + c)


def loss(reward: Tensor):
    """``f``: one-hot actions ``b [K, B, 1, C]`` → ``−Σ_a b_a r(x_b, a)`` ``[K, B]``; linear in ``b``,
    so the relaxed estimators may evaluate it between the corners."""

    def f(b: Tensor) -> Tensor:
        return -(b[..., 0, :] * reward).sum(-1)  # [K, B]

    return f


def exact_gradient(logits: Tensor, reward: Tensor) -> Tensor:
    """``π ⊙ (f − E_π f)`` per row, ``[B, 1, C]``, with ``f = −r``."""
    probs = logits.softmax(-1)  # [B, 1, C]
    f = -reward.unsqueeze(1)  # [B, 1, C]
    return probs * (f - (probs * f).sum(-1, keepdim=True))


def make_problem(contexts: int = 64, actions: int = ACTIONS):
    """``(f, logits [B, 1, C], exact gradient [B, 1, C])`` at a fixed linear policy."""
    generator = torch.Generator().manual_seed(PROBLEM_SEED)
    x = torch.randn(contexts, CONTEXT_DIM, generator=generator)  # [B, W]
    # A policy early in training: every action keeps a fair probability (the smallest about 0.03).
    weights = 0.2 * torch.randn(CONTEXT_DIM, actions, generator=generator)  # [W, C]
    logits = (x @ weights).unsqueeze(1)  # [B, 1, C]
    reward = expected_reward(x, *reward_function(actions))  # [B, C]
    return loss(reward), logits, exact_gradient(logits, reward)


class BanditPolicy(nn.Module):
    """A linear softmax policy ``η(x) = x W + w_0``, trained on batches of fresh contexts.

    ``evaluate()``: on fixed held-out contexts, the policy's expected reward ``E_π r`` and its regret
    ``max_a r − E_π r``, averaged.
    """

    def __init__(self, batch_size: int = 64, actions: int = ACTIONS):
        super().__init__()
        self.policy = nn.Linear(CONTEXT_DIM, actions)
        self.batch_size = batch_size
        self.u, self.c = reward_function(actions)
        held_out = torch.randn(
            HELD_OUT, CONTEXT_DIM, generator=torch.Generator().manual_seed(PROBLEM_SEED + 1)
        )
        self.register_buffer("held_out", held_out)  # [H, W]: moves with the model

    def logits(self, x: Tensor) -> Tensor:
        return self.policy(x).unsqueeze(1)  # [B, 1, C]

    def objective(self, x: Tensor):
        return loss(expected_reward(x, self.u.to(x), self.c.to(x)))

    def batches(self, generator: torch.Generator) -> Iterator[Tensor]:
        while True:
            yield torch.randn(self.batch_size, CONTEXT_DIM, generator=generator)  # [B, W]

    def evaluate(self) -> dict[str, float]:
        reward = expected_reward(self.held_out, self.u.to(self.held_out), self.c.to(self.held_out))  # [H, C]
        achieved = (self.policy(self.held_out).softmax(-1) * reward).sum(-1)  # [H]
        return {
            "expected_reward": float(achieved.mean()),
            "regret": float((reward.max(-1).values - achieved).mean()),
        }


def make_model(batch_size: int = 64, actions: int = ACTIONS) -> BanditPolicy:
    return BanditPolicy(batch_size, actions)
