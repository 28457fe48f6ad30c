"""The estimator registry: the single source of estimator names and options, for the library and the CLI.

One class per name, written once against :class:`~dcvbench.latent.LatentFamily` and registered for
the latent types in its ``info.families``. Estimator modules are found, not listed: every module of
this package is imported once (:func:`discover`), and those that define an estimator register it
with :func:`register`; helper modules register nothing. Listings follow ``info.order``.

Options are declared by the classes (``options = (ALPHA, ...)``); :func:`estimator_options`,
:func:`default_settings` and :func:`check_settings` collect them, so the CLI, the configurations and
the manifests learn a new option from the estimator that declares it.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable, Mapping
from typing import Any

from dcvbench.estimators.base import Estimator, EstimatorError, EstimatorInfo
from dcvbench.estimators.options import JOBS, Option
from dcvbench.estimators.relaxed import RelaxedEstimator
from dcvbench.latent import LATENT_TYPES, family_named
from dcvbench.objectives import ProblemShape

_REGISTRY: dict[str, type[Estimator]] = {}  # name → class
# Variance ratios everywhere (studies, plots, tables) are relative to REINFORCE leave-one-out.
REFERENCE_ESTIMATOR = "rloo"


def register(info: EstimatorInfo) -> Callable[[type[Estimator]], type[Estimator]]:
    """Class decorator: attach ``info`` to an estimator class and register it under ``info.name``."""
    for latent in info.families:
        _check_latent(latent)

    def decorate(cls: type[Estimator]) -> type[Estimator]:
        if info.name in _REGISTRY:
            raise RuntimeError(f"estimator {info.name!r} registered twice")
        cls.info = info
        _REGISTRY[info.name] = cls
        return cls

    return decorate


def discover() -> None:
    """Import every module of this package (the package's ``__init__`` calls this once): each
    estimator module registers its class."""
    package = importlib.import_module("dcvbench.estimators")
    for module in pkgutil.iter_modules(package.__path__, "dcvbench.estimators."):
        importlib.import_module(module.name)


def _classes() -> list[type[Estimator]]:
    """Every registered class, in listing order."""
    return sorted(_REGISTRY.values(), key=lambda cls: (cls.info.order, cls.info.name))


def _check_latent(latent: str) -> None:
    if latent not in LATENT_TYPES:
        raise EstimatorError(f"unknown latent type {latent!r}; choose from: {', '.join(LATENT_TYPES)}")


def estimator_names(latent: str | None = None) -> list[str]:
    """The names registered for ``latent`` latents (``None``: every name), in listing order."""
    if latent is not None:
        _check_latent(latent)
    return [cls.info.name for cls in _classes() if latent is None or latent in cls.info.families]


def start_temperature(name: str, settings: Mapping[str, Any]) -> float | None:
    """The temperature estimator ``name`` starts at under ``settings``: ``--temperature`` where given,
    else the estimator's own default; ``None`` for an estimator without a temperature."""
    cls = _REGISTRY[name]
    if not issubclass(cls, RelaxedEstimator):
        return None
    given = settings.get("temperature")
    return cls.default_temperature if given is None else given


def temperature_problem(name: str, settings: Mapping[str, Any]) -> str | None:
    """Why the ``--temperature`` of ``settings`` does not suit estimator ``name`` (ReinMax's λ < 1),
    or ``None``: one line for the configurations to refuse before a run starts."""
    temperature = start_temperature(name, settings)
    return None if temperature is None else _REGISTRY[name].check_temperature(temperature)


def estimator_order(name: str) -> tuple[int, str]:
    """Sort key of the listings, tables and figures: registry order, unknown names after, by name."""
    names = estimator_names()
    return (names.index(name), name) if name in names else (len(names), name)


def estimator_class(name: str, latent: str = "binary") -> type[Estimator]:
    """The class registered under ``name`` for ``latent`` latents, or an :class:`EstimatorError`
    listing that latent type's valid names."""
    _check_latent(latent)
    cls = _REGISTRY.get(name)
    if cls is None or latent not in cls.info.families:
        hint = did_you_mean(name, estimator_names(latent))
        raise EstimatorError(f"unknown estimator {name!r} for {latent} latents; {hint}")
    return cls


def estimator_info(name: str, latent: str | None = None) -> EstimatorInfo:
    """The metadata of ``name`` (for ``latent`` latents when given: an error if it has none)."""
    if latent is not None:
        return estimator_class(name, latent).info
    if name not in _REGISTRY:
        raise EstimatorError(f"unknown estimator {name!r}; {did_you_mean(name, estimator_names())}")
    return _REGISTRY[name].info


def check_objective(name: str, objective: object, latent: str = "binary") -> None:
    """Raise :class:`EstimatorError`, in one line, naming the hooks that estimator ``name`` requires
    (``info.requires``) and the user's ``objective`` lacks: before a study, not at its first draw."""
    missing = estimator_info(name, latent).missing_hooks(objective)
    if missing:
        hooks = " and ".join(member for protocol in missing for member in _members(protocol))
        protocols = ", ".join(f"dcvbench.objectives.{protocol.__name__}" for protocol in missing)
        raise EstimatorError(f"{name} needs the objective's {hooks} ({protocols}), which it lacks")


def _members(protocol: type) -> list[str]:
    """What a protocol of :mod:`dcvbench.objectives` asks for, by name: ``["expectation"]``."""
    return [member for member in vars(protocol) if not member.startswith("_")]


def did_you_mean(name: str, names: list[str]) -> str:
    """The end of an "unknown estimator" message: ``did you mean 'rloo-dcv'?`` for a near miss
    (as for a mistyped command), else ``choose from: reinforce, …``."""
    close = difflib.get_close_matches(name, names, n=1)
    return f"did you mean {close[0]!r}?" if close else f"choose from: {', '.join(names)}"


def get_estimator(name: str, latent: str = "binary", **options) -> Estimator:
    """Build the estimator registered under ``name`` for ``latent`` latents with its constructor
    ``options`` (the names of its declared options, defaults where not given).

    >>> est = get_estimator("rloo-dcv", alpha=-0.5)
    >>> estimate = est(logits, f, k=4, generator=gen)  # estimate.grad has the shape of logits
    >>> est = get_estimator("rloo-dcv", latent="categorical")  # logits [B, N, C]
    """
    return estimator_class(name, latent)(family=family_named(latent), **options)


def build_estimator(name: str, settings: Mapping[str, Any], shape: ProblemShape) -> Estimator:
    """Build the estimator ``name`` for a problem of ``shape`` (its latent type and sizes) with its
    options read from ``settings`` (option name → value; what the jobs use)."""
    return estimator_class(name, shape.latent_type).from_settings(settings, shape)


def estimator_options(job: str | None = None) -> dict[str, Option]:
    """Every registered option by name (only those of ``job``, when given: see ``Option.jobs``), in
    the listing order of the first estimator declaring it."""
    if job is not None and job not in JOBS:
        raise EstimatorError(f"unknown job {job!r}; choose from: {', '.join(JOBS)}")
    options: dict[str, Option] = {}
    for cls in _classes():
        for option in cls.options:
            if job is not None and job not in option.jobs:
                continue
            known = options.setdefault(option.name, option)
            if known is not option:
                raise RuntimeError(
                    f"two different options are named {option.name!r}: declare one and share it"
                )
    return options


def option_users(name: str) -> list[str]:
    """The estimators that declare the option ``name``, in listing order (for help texts)."""
    return [cls.info.name for cls in _classes() if any(option.name == name for option in cls.options)]


def default_settings(job: str) -> dict[str, Any]:
    """Every registered option's default for ``job`` (``toy``, ``vae`` or ``variance``)."""
    return {name: option.default_for(job) for name, option in estimator_options(job).items()}


def check_settings(settings: Mapping[str, Any], job: str | None = None) -> None:
    """Raise :class:`EstimatorError` with a one-line message for an unknown option (of ``job``, when
    given) or a bad value."""
    options = estimator_options(job)
    for name, value in settings.items():
        option = options.get(name)
        if option is None:
            raise EstimatorError(f"unknown estimator option {name!r}; choose from: {', '.join(options)}")
        problem = option.validate(value)
        if problem is not None:
            raise EstimatorError(problem)
