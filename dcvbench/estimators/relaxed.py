"""Estimators with a temperature (``concrete``, ``st-concrete``, the straight-through family) and the
Concrete relaxation's relaxed objective.

Maddison, Mnih & Teh, *The Concrete Distribution: A Continuous Relaxation of Discrete Random
Variables*, ICLR 2017; Jang, Gu & Poole, *Categorical Reparameterization with Gumbel-Softmax*,
ICLR 2017.

Relaxed samples live in the family's base space (:meth:`~dcvbench.latent.LatentFamily.relax`):
``y = (η + L)/λ`` in logit space for bits (``z = σ(y)``), ``y = log_softmax((η + G)/λ)`` on the
log-simplex for classes (``z = exp(y)``); ``harden(y)`` is an exact sample of ``q_η`` at any
temperature, and ``z → b`` as ``λ → 0``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from dcvbench.estimators.base import Estimator, EstimatorError
from dcvbench.estimators.options import TEMPERATURE
from dcvbench.latent import BINARY, LatentFamily
from dcvbench.objectives import HasRelaxation, Objective

CONCRETE_TEMPERATURE = 2.0 / 3.0  # the Concrete paper's posterior temperature (Maddison et al. 2017)


def relaxed_objective(
    f: Objective, family: LatentFamily, y: Tensor, logits: Tensor, temperature: float
) -> Tensor:
    """The objective of the relaxed model at base-space samples ``y [K, B, *event]`` → ``[K, B]``.

    An objective that :class:`~dcvbench.objectives.HasRelaxation` defines it (the VAE's: Concrete
    densities of ``y`` under the prior and under ``q_λ(·; η)`` in place of the discrete
    log-probabilities); any other (the toy's) is evaluated at the relaxed point ``z``. ``logits``
    ``[B, *event]`` carry the caller's graph, so a relaxed objective that depends on ``η`` directly
    contributes that path to the pathwise gradient too.
    """
    if isinstance(f, HasRelaxation):
        return f.relaxed(y, logits, temperature)
    return f(family.relaxed_point(y))


class RelaxedEstimator(Estimator):
    """An estimator with a temperature ``λ``: the Concrete relaxation's, or a straight-through
    variant's; subclasses choose what they evaluate and differentiate.

    ``temperature`` is an attribute a training loop may change between steps (annealing); each
    estimate reports the one it used as ``stats["temperature"]``. Not given, it is the class's
    ``default_temperature``; a class whose method needs ``λ ≥ min_temperature`` (ReinMax: ``λ ≥ 1``)
    refuses a lower one (:meth:`check_temperature`, which the configurations call before a run starts).
    """

    options = (TEMPERATURE,)
    default_temperature: ClassVar[float] = CONCRETE_TEMPERATURE
    min_temperature: ClassVar[float] = 0.0  # any λ > 0

    def __init__(self, family: LatentFamily = BINARY, temperature: float | None = None):
        super().__init__(family)
        temperature = self.default_temperature if temperature is None else temperature
        problem = self.check_temperature(temperature)
        if problem is not None:
            raise EstimatorError(f"--temperature {temperature:g}: {problem}")
        self.temperature = temperature

    @classmethod
    def check_temperature(cls, temperature: float) -> str | None:
        """Why ``temperature`` does not suit this estimator, or ``None`` when it does."""
        if not temperature > 0.0:
            return f"{cls.info.name} needs a temperature > 0"
        if temperature < cls.min_temperature:
            return f"{cls.info.name} needs a temperature ≥ {cls.min_temperature:g}, as its authors require"
        return None

    def temperature_stat(self, like: Tensor) -> Tensor:
        """The current ``λ`` as a 0-d tensor on ``like``'s device: float64, so that the trace records
        the temperature itself, not its float32 rounding; filled on the device, not copied to it."""
        return torch.full((), self.temperature, dtype=torch.float64, device=like.device)

    def state_stats(self) -> dict[str, float]:
        return {"temperature": float(self.temperature)}
