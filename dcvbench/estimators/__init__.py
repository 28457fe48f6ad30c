"""Gradient estimators for discrete latents (bits and one-hot categoricals), behind one registry.

>>> from dcvbench.estimators import get_estimator
>>> estimator = get_estimator("rloo-dcv")  # latent="categorical" for logits [B, N, C]
>>> estimate = estimator(logits, f, k=2, generator=generator)  # estimate.grad: [B, D]
>>> ...  # use estimate.grad, then let the estimator learn its α:
>>> estimator.update(estimate)

One module per estimator, named after it; every module of this package is imported here, and each
estimator module registers its class (:mod:`dcvbench.estimators.registry`).
"""

from dcvbench.estimators.base import Estimate, Estimator, EstimatorError, EstimatorInfo, Stat, measuring
from dcvbench.estimators.control_variate import ControlVariateEstimator
from dcvbench.estimators.registry import (
    REFERENCE_ESTIMATOR,
    build_estimator,
    check_settings,
    default_settings,
    discover,
    estimator_class,
    estimator_info,
    estimator_names,
    estimator_options,
    estimator_order,
    get_estimator,
    start_temperature,
    temperature_problem,
)

discover()

__all__ = [
    "REFERENCE_ESTIMATOR",
    "ControlVariateEstimator",
    "Estimate",
    "Estimator",
    "EstimatorError",
    "EstimatorInfo",
    "Stat",
    "build_estimator",
    "check_settings",
    "default_settings",
    "estimator_class",
    "estimator_info",
    "estimator_names",
    "estimator_options",
    "estimator_order",
    "get_estimator",
    "measuring",
    "start_temperature",
    "temperature_problem",
]
