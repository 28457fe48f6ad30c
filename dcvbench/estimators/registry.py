"""The estimator registry: the single source of estimator names, for the library and the CLI."""

from __future__ import annotations

from collections.abc import Callable

from dcvbench.estimators.base import Estimator, EstimatorError, EstimatorInfo, EstimatorSettings, ProblemShape

_REGISTRY: dict[str, type[Estimator]] = {}
# Variance ratios everywhere (studies, plots, tables) are relative to REINFORCE leave-one-out.
REFERENCE_ESTIMATOR = "rloo"


def register(info: EstimatorInfo) -> Callable[[type[Estimator]], type[Estimator]]:
    """Class decorator: attach ``info`` to an estimator class and register it under its name."""

    def decorate(cls: type[Estimator]) -> type[Estimator]:
        if info.name in _REGISTRY:
            raise RuntimeError(f"estimator {info.name!r} registered twice")
        cls.info = info
        _REGISTRY[info.name] = cls
        return cls

    return decorate


def estimator_names() -> list[str]:
    """All registered names, in registration order."""
    return list(_REGISTRY)


def estimator_class(name: str) -> type[Estimator]:
    """The class registered under ``name``, or an :class:`EstimatorError` listing valid names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        valid = ", ".join(_REGISTRY)
        raise EstimatorError(f"unknown estimator {name!r}; choose from: {valid}") from None


def estimator_info(name: str) -> EstimatorInfo:
    return estimator_class(name).info


def get_estimator(name: str, **options) -> Estimator:
    """Build the estimator registered under ``name`` with its constructor ``options``.

    >>> est = get_estimator("rloo-dcv", alpha=-0.5)
    >>> estimate = est(logits, f, k=4, generator=gen)  # estimate.grad has the shape of logits
    """
    return estimator_class(name)(**options)


def build_estimator(name: str, settings: EstimatorSettings, shape: ProblemShape) -> Estimator:
    """Build the estimator ``name`` from the shared settings record for a problem of ``shape``
    (what the jobs use)."""
    return estimator_class(name).from_settings(settings, shape)
