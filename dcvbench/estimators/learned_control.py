"""Estimators whose learned parts are all their parameters, trained by one Adam after each estimate.

RELAX/REBAR (λ, s, ψ) and RODEO (α, β, ψ) learn every parameter they have by minimising their
estimate's ``mean(g²)`` (:attr:`~dcvbench.estimators.base.Estimate.learning`), which lowers the
variance of an estimator unbiased for every value of them. This module registers no estimator.
"""

from __future__ import annotations

import copy

import torch

from dcvbench.estimators.base import Estimate, Estimator


class LearnedControlEstimator(Estimator):
    """Base class: after its parameters exist, a subclass calls :meth:`make_optimizer`; :meth:`update`
    then steps it on each estimate's ``learning`` loss, and checkpoints carry Adam's state."""

    optimizer: torch.optim.Optimizer

    def make_optimizer(self, lr: float) -> None:
        """One Adam over every parameter: Adam steps each parameter on its own, so one optimiser at
        one rate is the same as one per part at that rate."""
        if not lr > 0.0:
            raise ValueError(f"control_lr must be > 0, got {lr}")
        self.optimizer = torch.optim.Adam(self.parameters(), lr=lr)

    def update(self, estimate: Estimate) -> None:
        if estimate.learning is None:  # in eval mode (measuring) nothing is learned
            return
        self.optimizer.zero_grad(set_to_none=True)
        estimate.learning.backward(inputs=list(self.parameters()))
        self.optimizer.step()

    def get_extra_state(self) -> dict:
        # A copy, as in rloo-dcv: state_dict() shares the live Adam moments.
        return {"optimizer": copy.deepcopy(self.optimizer.state_dict())}

    def set_extra_state(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
