"""The estimator registry: the single source of estimator names, for the library and the CLI.

Names are registered per latent type (:data:`~dcvbench.estimators.base.LATENT_TYPES`): ``rloo-dcv``
for binary latents and ``rloo-dcv`` for categorical ones are two classes under the same name, one
per latent type, with the same metadata. Every lookup takes the latent type, binary by default.
"""

from __future__ import annotations

from collections.abc import Callable

from dcvbench.estimators.base import (
    LATENT_TYPES,
    Estimator,
    EstimatorError,
    EstimatorInfo,
    EstimatorSettings,
    ProblemShape,
)

# One table per latent type, name → class, in registration order.
_REGISTRY: dict[str, dict[str, type[Estimator]]] = {latent: {} for latent in LATENT_TYPES}
# Variance ratios everywhere (studies, plots, tables) are relative to REINFORCE leave-one-out.
REFERENCE_ESTIMATOR = "rloo"


def _table(latent: str) -> dict[str, type[Estimator]]:
    try:
        return _REGISTRY[latent]
    except KeyError:
        raise EstimatorError(
            f"unknown latent type {latent!r}; choose from: {', '.join(LATENT_TYPES)}"
        ) from None


def register(info: EstimatorInfo, latent: str = "binary") -> Callable[[type[Estimator]], type[Estimator]]:
    """Class decorator: attach ``info`` to an estimator class and register it under its name for
    latents of type ``latent``."""
    table = _table(latent)

    def decorate(cls: type[Estimator]) -> type[Estimator]:
        if info.name in table:
            raise RuntimeError(f"estimator {info.name!r} registered twice for {latent} latents")
        cls.info = info
        table[info.name] = cls
        return cls

    return decorate


def estimator_names(latent: str = "binary") -> list[str]:
    """All names registered for ``latent`` latents, in registration order."""
    return list(_table(latent))


def estimator_class(name: str, latent: str = "binary") -> type[Estimator]:
    """The class registered under ``name`` for ``latent`` latents, or an :class:`EstimatorError`
    listing that latent type's valid names."""
    table = _table(latent)
    try:
        return table[name]
    except KeyError:
        valid = ", ".join(table)
        raise EstimatorError(
            f"unknown estimator {name!r} for {latent} latents; choose from: {valid}"
        ) from None


def estimator_info(name: str, latent: str = "binary") -> EstimatorInfo:
    return estimator_class(name, latent).info


def get_estimator(name: str, latent: str = "binary", **options) -> Estimator:
    """Build the estimator registered under ``name`` for ``latent`` latents with its constructor
    ``options``.

    >>> est = get_estimator("rloo-dcv", alpha=-0.5)
    >>> estimate = est(logits, f, k=4, generator=gen)  # estimate.grad has the shape of logits
    >>> est = get_estimator("rloo-dcv", latent="categorical")  # logits [B, N, C]
    """
    return estimator_class(name, latent)(**options)


def build_estimator(name: str, settings: EstimatorSettings, shape: ProblemShape) -> Estimator:
    """Build the estimator ``name`` from the shared settings record for a problem of ``shape``, for
    its latent type (what the jobs use)."""
    return estimator_class(name, shape.latent_type).from_settings(settings, shape)
