"""Gradient estimators for factorised Bernoulli latents, behind one registry.

>>> from dcvbench.estimators import get_estimator
>>> estimator = get_estimator("rloo-dcv")
>>> estimate = estimator(logits, f, k=2, generator=generator)  # estimate.grad: [B, D]
>>> ...  # use estimate.grad, then let the estimator learn its α:
>>> estimator.update(estimate)

Importing this package registers every estimator module below.
"""

# isort: off
# Importing a module registers its estimators; this order is the order of listings.
from dcvbench.estimators import reinforce, rloo, dcv, muprop, exact_baseline  # noqa: F401
from dcvbench.estimators import arm, arms, concrete, relax  # noqa: F401
from dcvbench.estimators import vimco, nvil  # noqa: F401
from dcvbench.estimators import categorical  # noqa: F401  (categorical latents: their own registry)

# isort: on
from dcvbench.estimators.base import (
    Estimate,
    Estimator,
    EstimatorError,
    EstimatorInfo,
    EstimatorSettings,
    Objective,
    ProblemShape,
    context_of,
    measuring,
)
from dcvbench.estimators.dcv import ControlVariateEstimator
from dcvbench.estimators.registry import (
    REFERENCE_ESTIMATOR,
    build_estimator,
    estimator_class,
    estimator_info,
    estimator_names,
    get_estimator,
)

__all__ = [
    "REFERENCE_ESTIMATOR",
    "ControlVariateEstimator",
    "Estimate",
    "Estimator",
    "EstimatorError",
    "EstimatorInfo",
    "EstimatorSettings",
    "Objective",
    "ProblemShape",
    "build_estimator",
    "context_of",
    "estimator_class",
    "estimator_info",
    "estimator_names",
    "get_estimator",
    "measuring",
]
