"""Estimators of the form ``g = g₀ + α h`` with a scalar weight ``α`` that can be set."""

from __future__ import annotations

import torch
from torch import nn

from dcvbench.estimators.base import Estimator


class ControlVariateEstimator(Estimator):
    """An estimator ``g = g₀ + α h`` that returns ``h`` as :attr:`Estimate.control`.

    Variance studies use :meth:`set_alpha` to evaluate it at the variance-optimal ``α`` of a fixed
    point (``α* = −E⟨g₀, h⟩ / E‖h‖²``).
    """

    alpha: nn.Parameter

    def set_alpha(self, value: float) -> None:
        with torch.no_grad():
            self.alpha.fill_(value)
