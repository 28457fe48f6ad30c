"""Settings of each job as frozen dataclasses: one field per CLI option, saved verbatim in manifests.

Validation happens here, at construction, so that bad input is refused before anything is written;
each error names the bad value and, where there is a choice, the valid ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from dcvbench.estimators import EstimatorError, EstimatorSettings, estimator_info, estimator_names
from dcvbench.problems.toy import OBJECTIVES
from dcvbench.runtime import DEVICES, DTYPES, ConfigError

# The default estimators of `dcvbench toy`: the paper's comparison plus the oracle baseline.
TOY_DEFAULT_ESTIMATORS = ("rloo", "rloo-dcv", "disarm", "exact-baseline")
# The published toy tuned α with RMSprop at lr 5e-4 (DESIGN §4.1).
TOY_ALPHA = EstimatorSettings(alpha_optimizer="rmsprop", alpha_lr=5e-4)


@dataclass(frozen=True)
class ToyProblem:
    """The toy objective (DESIGN §4.1) and the latent dimension."""

    dim: int = 200
    target: float = 0.499
    objective: str = "separable"
    w_scale: float = 1.0  # quadratic-form: scale of the Gaussian W
    w_seed: int = 0  # quadratic-form: W is the same for every run with this seed

    def __post_init__(self):
        _positive("--dim", self.dim)
        _finite("--target", self.target)
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"unknown objective {self.objective!r}; choose from: {', '.join(OBJECTIVES)}")
        _finite("--w-scale", self.w_scale)


@dataclass(frozen=True)
class ToyConfig:
    """``dcvbench toy``: train the toy logits with each estimator, measuring variance as it goes."""

    problem: ToyProblem = field(default_factory=ToyProblem)
    estimators: tuple[str, ...] = TOY_DEFAULT_ESTIMATORS
    k: int = 2
    steps: int = 2000
    lr: float = 0.01  # RMSprop(decay 0.9, ε 1e-7 outside the root), the published toy's optimiser
    maximize: bool = True  # the published toy maximises E f
    log_every: int = 10
    var_every: int = 20
    var_samples: int = 2000
    seeds: tuple[int, ...] = (0,)
    device: str = "auto"
    dtype: str = "float64"  # the toy's gradients are ~1e-5: float64 keeps the variance exact
    estimator_settings: EstimatorSettings = TOY_ALPHA
    out: str = "results"

    def __post_init__(self):
        _check_estimators(self.estimators, self.k, exact_mean_available=True)
        _positive("--steps", self.steps)
        _positive("--lr", self.lr)
        _positive("--log-every", self.log_every)
        _positive("--var-every", self.var_every)
        _at_least("--var-samples", self.var_samples, 2)
        if not self.seeds:
            raise ConfigError("give at least one --seed")
        _check_runtime(self.device, self.dtype)
        _check_estimator_settings(self.estimator_settings)


@dataclass(frozen=True)
class VarianceConfig:
    """``dcvbench variance``: every estimator's variance and bias at one fixed point, side by side."""

    problem: ToyProblem = field(default_factory=ToyProblem)
    theta: str = "0.5"  # one probability for every coordinate, or "random" (seeded)
    estimators: tuple[str, ...] = ("rloo", "rloo-dcv", "disarm")
    ks: tuple[int, ...] = (2,)
    samples: int = 20000
    seed: int = 0
    device: str = "auto"
    dtype: str = "float64"
    estimator_settings: EstimatorSettings = TOY_ALPHA
    out: str = "results"

    def __post_init__(self):
        if not self.ks:
            raise ConfigError("give at least one --k")
        for k in self.ks:
            _check_estimators(self.estimators, k, exact_mean_available=True)
        _at_least("--samples", self.samples, 2)
        theta_probability(self.theta)
        _check_runtime(self.device, self.dtype)
        _check_estimator_settings(self.estimator_settings)


def theta_probability(theta: str) -> float | None:
    """``--theta`` as a probability in (0, 1), or ``None`` for ``random``."""
    if theta == "random":
        return None
    try:
        value = float(theta)
    except ValueError:
        raise ConfigError(f"--theta must be a probability in (0, 1) or 'random', got {theta!r}") from None
    if not 0.0 < value < 1.0:
        raise ConfigError(f"--theta must be in (0, 1) (open interval), got {value}")
    return value


def _check_estimators(names: tuple[str, ...], k: int, exact_mean_available: bool) -> None:
    if not names:
        raise ConfigError("give at least one --estimator")
    valid = estimator_names()
    for name in names:
        if name not in valid:
            raise ConfigError(f"unknown estimator {name!r}; choose from: {', '.join(valid)}")
        info = estimator_info(name)
        try:
            info.check_k(k)
        except EstimatorError as error:
            raise ConfigError(f"--k {k}: {error}") from None
        if info.needs_exact_mean and not exact_mean_available:
            raise ConfigError(f"{name} needs a closed-form E_q[f]; it runs on the toy problem only")


def _check_runtime(device: str, dtype: str) -> None:
    if device not in DEVICES:
        raise ConfigError(f"unknown device {device!r}; choose from: {', '.join(DEVICES)}")
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; choose from: {', '.join(DTYPES)}")


def _check_estimator_settings(settings: EstimatorSettings) -> None:
    if settings.alpha is not None:
        _finite("--alpha", settings.alpha)
    if settings.alpha_learning not in ("sgd", "optimal"):
        raise ConfigError(f"--alpha-learning must be sgd or optimal, got {settings.alpha_learning!r}")
    if settings.alpha_optimizer not in ("adam", "rmsprop", "sgd"):
        raise ConfigError(f"--alpha-optimizer must be adam, rmsprop or sgd, got {settings.alpha_optimizer!r}")
    _positive("--alpha-lr", settings.alpha_lr)
    _positive("--temperature", settings.temperature)
    if not 0.0 <= settings.baseline_decay < 1.0:
        raise ConfigError(f"--baseline-decay must be in [0, 1), got {settings.baseline_decay}")


def _finite(option: str, value: float) -> None:
    if not math.isfinite(value):
        raise ConfigError(f"{option} must be finite, got {value}")


def _positive(option: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{option} must be positive, got {value}")


def _at_least(option: str, value: int, minimum: int) -> None:
    if value < minimum:
        raise ConfigError(f"{option} must be at least {minimum}, got {value}")
