"""Estimator options, declared by the estimator that owns them.

An estimator class lists its hyperparameters as :class:`Option`\\ s (``options = (ALPHA, ...)``).
Everything else follows from that declaration: the CLI option ``--alpha-lr`` of every job the
estimator runs in, its validation (one line naming the bad value, exit 2), its default per job, its
line in ``dcvbench estimators``, and its place in a run's manifest (``estimator_settings``), from
which ``--resume`` rebuilds the estimator. Several estimators may share an option by declaring the
same object (``concrete`` and ``st-concrete`` share ``temperature``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

# Jobs an option's default may differ in.
JOBS = ("toy", "vae", "predict", "variance")


@dataclass(frozen=True)
class Option:
    """One hyperparameter of one or more estimators.

    Attributes:
        name: a Python identifier; the CLI spells it ``--name-with-dashes``.
        default: the value when not given (for every job not in ``job_defaults``).
        help: one line for ``--help`` (the estimators that use it are added by the CLI).
        kind: ``float``, ``int`` or ``str``.
        optional: ``None`` is a valid value (``alpha``: ``None`` learns it).
        choices: the valid values of a ``str`` option.
        check: ``value → message`` for a bad value, ``None`` for a good one (see :func:`positive`).
        job_defaults: defaults that differ by job (``{"toy": 5e-4}``: the published toy's α rate).
        jobs: the jobs the option means something in, and so is offered, validated and saved by:
            a variance study trains nothing, so learning rates are not among its options.
        job_help: help lines that differ by job (``--alpha`` of a variance study defaults to α*).
        shown_default: the default as ``--help`` shows it, where its value reads badly (``2/3``).
        only_with: other options of the same estimators and the values under which this one does
            anything (``{"alpha": (None,)}``: α's learning rate means nothing once ``--alpha`` fixes
            α); the CLI refuses this option given beside another value.
    """

    name: str
    default: Any
    help: str
    kind: type = float
    optional: bool = False
    choices: tuple[str, ...] | None = None
    check: Callable[[Any], str | None] | None = None
    job_defaults: Mapping[str, Any] = field(default_factory=dict)
    jobs: tuple[str, ...] = JOBS
    job_help: Mapping[str, str] = field(default_factory=dict)
    shown_default: str | None = None
    only_with: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)

    @property
    def flag(self) -> str:
        return flag_of(self.name)

    def default_for(self, job: str) -> Any:
        return self.job_defaults.get(job, self.default)

    def help_for(self, job: str) -> str:
        return self.job_help.get(job, self.help)

    def read(self, settings: Mapping[str, Any]) -> Any:
        """The option's value in ``settings``; its default where the job has no such option (a
        variance study builds rloo-dcv without α's learning rate, which it never uses)."""
        return settings.get(self.name, self.default)

    def validate(self, value: Any) -> str | None:
        """A one-line message if ``value`` is not valid for this option, else ``None``."""
        if value is None:
            return None if self.optional else f"{self.flag} needs a value"
        # A manifest edited by hand may hold anything: the wrong type is one line too, not a crash.
        accepted = {str: (str,), float: (int, float), int: (int,)}[self.kind]
        if not isinstance(value, accepted) or isinstance(value, bool):
            return f"{self.flag} must be a {self.kind.__name__}, got {value!r}"
        if self.choices is not None and value not in self.choices:
            *first, last = self.choices
            listed = f"{', '.join(first)} or {last}" if first else last
            return f"{self.flag} must be {listed}, got {value!r}"
        # The option's own check first: it names its range ("must be positive, got inf").
        if self.check is not None:
            problem = self.check(value)
            if problem is not None:
                return f"{self.flag} {problem}"
        if self.kind is float and isinstance(value, int | float) and not math.isfinite(value):
            return f"{self.flag} must be finite, got {value}"
        return None


def flag_of(name: str) -> str:
    """``--alpha-lr``: how the CLI spells the option ``alpha_lr``."""
    return "--" + name.replace("_", "-")


def positive(value: float) -> str | None:
    return None if math.isfinite(value) and value > 0 else f"must be positive, got {value}"


def decay(value: float) -> str | None:
    return None if 0.0 <= value < 1.0 else f"must be in [0, 1), got {value}"


# Options several estimators declare: one object each, so the CLI shows one flag for all of them.

# The one temperature option of every estimator that has one; not given (None), each takes its own
# default (RelaxedEstimator.default_temperature: the Concrete paper's 2/3, ReinMax's 1, …).
TEMPERATURE = Option(
    "temperature",
    None,
    "temperature λ of the relaxation",
    optional=True,
    check=positive,
    shown_default="each estimator's own: 2/3; reinmax, gst 1",
    job_help={
        "vae": "posterior temperature λ (the start, with --anneal exp)",
        "variance": "temperature λ on the toy (a checkpoint: its run's)",
    },
)
BASELINE_DECAY = Option(
    "baseline_decay",
    0.9,
    "decay of the running averages",
    check=decay,
)
CONTROL_LR = Option(
    "control_lr",
    1e-3,
    "Adam learning rate of the estimator's learned parts",
    check=positive,
    jobs=("toy", "vae", "predict"),  # a variance study measures the learned parts as they are
)
