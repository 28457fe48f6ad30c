"""Gradient estimators for one-hot categorical latents (DESIGN §3.6).

Logits ``η [B, N, C]`` parametrise N independent categorical variables with C classes each,
``π = softmax(η)`` along the class dimension. Samples are one-hot, ``b [K, B, N, C]``, drawn by
Gumbel-max from uniforms ``u [K, B, N, C]`` (:func:`~dcvbench.estimators.sampling.categorical_from_uniform`),
so estimators that draw the same uniforms share samples. ``f: [K, B, N, C] → [K, B]``; every estimate
has the shape of the logits. The score of a one-hot sample is ``∇_η log q(b) = b − π`` per variable,
with covariance ``diag(π) − ππᵀ``.

The estimators are registered for the latent type ``"categorical"`` under the names of their binary
counterparts (``get_estimator("rloo-dcv", latent="categorical")``); binary latents keep their own
estimators and are never routed through a two-class categorical.
"""

# isort: off
# Importing a module registers its estimators; this order is the order of listings.
from dcvbench.estimators.categorical import reinforce, rloo, dcv, exact_baseline, concrete  # noqa: F401

# isort: on
from dcvbench.estimators.categorical.concrete import exp_concrete_log_prob, relaxed_objective

__all__ = ["exp_concrete_log_prob", "relaxed_objective"]
