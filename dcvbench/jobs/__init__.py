"""Jobs wire a problem, estimators, measurement and results together; the CLI only calls them.

A job reports progress through a :class:`Progress` object it is given, so it knows nothing of
terminals; the CLI passes a rich progress bar, library users nothing (:class:`NoProgress`).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pandas as pd
import torch

from dcvbench.checkpoints import CHECKPOINT
from dcvbench.estimators import Estimate, Estimator
from dcvbench.results import IDENTITY_SCHEMA, read_manifest, read_trace, writer_alive
from dcvbench.runtime import ConfigError


class Progress(Protocol):
    def plan(self, runs: int, total: int) -> None:
        """The whole job, told once before it begins: ``runs`` units (runs) of ``total`` steps in all."""

    def start(self, description: str, total: int, done: int = 0) -> None:
        """A new unit of work (one run) with ``total`` steps begins, ``done`` of them already (resumed)."""

    def advance(self, steps: int = 1) -> None: ...


class NoProgress:
    """Progress that reports nothing."""

    def plan(self, runs: int, total: int) -> None:
        pass

    def start(self, description: str, total: int, done: int = 0) -> None:
        pass

    def advance(self, steps: int = 1) -> None:
        pass


@dataclass(frozen=True)
class RunSummary:
    """How a run ended and the last recorded value of each of its metrics, except its time per step:
    the median of its rows (:data:`MEDIAN_METRICS`), as ``plot`` and ``summary.md`` report it."""

    run_id: str
    path: Path
    estimator: str
    k: int
    seed: int
    status: str
    last_step: int | None
    metrics: dict[str, float | None]


# Metrics a run summarises by the median of its rows, not the last: a step's time varies with the
# machine's load from row to row, and one slow row (a variance measurement, another process) must not
# decide a run's rank.
MEDIAN_METRICS = ("sec_per_step",)


def last_values(trace: pd.DataFrame, columns: tuple[str, ...]) -> dict[str, float | None]:
    """The last non-null value of each column of a trace (``None`` if never measured)."""
    values: dict[str, float | None] = {}
    for column in columns:
        measured = trace[column].dropna() if column in trace else pd.Series(dtype=float)
        values[column] = float(measured.iloc[-1]) if len(measured) else None
    return values


def run_summary(path: Path, manifest: dict, metrics: tuple[str, ...]) -> RunSummary:
    """The summary of the run in ``path``: how its manifest says it ended, and its metrics."""
    trace = read_trace(path)
    values = last_values(trace, metrics)
    for column in set(MEDIAN_METRICS) & set(metrics):
        measured = trace[column].dropna() if column in trace else pd.Series(dtype=float)
        values[column] = float(measured.median()) if len(measured) else None
    return RunSummary(
        run_id=manifest["run_id"],
        path=path,
        estimator=manifest["estimator"],
        k=manifest["k"],
        seed=manifest["seed"],
        status=manifest["status"],
        last_step=manifest.get("last_step"),
        metrics=values,
    )


def run_to_resume(run_dir: Path | str, job: str) -> tuple[Path, dict, Path]:
    """The directory, manifest and checkpoint of a ``job`` run that ``--resume`` can continue.

    A directory that is no run is a :class:`~dcvbench.results.ResultsError`; a run of another job,
    one without a checkpoint, one still running (its manifest says ``running`` and its process on
    this host is alive; a :data:`~dcvbench.results.STALE` run, whose process is gone, resumes) or
    one in a directory that cannot be written is a :class:`ConfigError`. Nothing is written here.
    """
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    if manifest.get("job") != job:
        raise ConfigError(f"{run_dir} is not a {job} run (its job is {manifest.get('job')!r})")
    if manifest.get("status") == "running" and writer_alive(manifest):
        process = manifest["process"]
        raise ConfigError(
            f"{run_dir} is still running (process {process.get('pid')}); stop it before resuming it, "
            "or two processes would write one run"
        )
    checkpoint = run_dir / CHECKPOINT
    if not checkpoint.is_file():
        raise ConfigError(f"{run_dir} has no {CHECKPOINT} to resume from; start the run again instead")
    try:
        with tempfile.TemporaryFile(dir=run_dir):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ConfigError(f"cannot resume {run_dir}: it cannot be written ({reason})") from None
    return run_dir, manifest, checkpoint


def stat_columns(estimator: Estimator) -> tuple[str, ...]:
    """The trace columns an estimator adds to its run's: the names of what its estimates report."""
    return tuple(stat.name for stat in estimator.info.stats)


def resumed_columns(run_dir: Path, columns: tuple[str, ...]) -> tuple[str, ...]:
    """``columns``, plus the metric columns the run's trace already has beyond them.

    A run written by an older version may carry a column its estimator no longer reports (every run
    had an ``alpha`` column); keeping it keeps every part of the trace on one schema.
    """
    trace = read_trace(run_dir)
    old = [c for c in trace.columns if c not in IDENTITY_SCHEMA.names and trace[c].dtype.kind == "f"]
    return columns + tuple(c for c in old if c not in columns)


class StatTrace:
    """An estimator's stats as a trace's row between rows: what :attr:`EstimatorInfo.stats` declares.

    A ``"last"`` stat is the row step's estimate's value; a ``"mean"`` stat the mean over the steps
    since the previous row, summed on the device (a 0-d tensor: no sync per step) and divided by
    the step count at the row.
    """

    def __init__(self, estimator: Estimator):
        self.stats = estimator.info.stats
        self.sums: dict[str, torch.Tensor] = {}

    def add(self, estimate: Estimate) -> None:
        """Fold in one step's estimate."""
        for stat in self.stats:
            if stat.reduce == "mean" and stat.name in estimate.stats:
                value = estimate.stats[stat.name].detach()
                total = self.sums.get(stat.name)
                self.sums[stat.name] = value.clone() if total is None else total + value

    def row(self, estimate: Estimate, steps: int) -> dict[str, torch.Tensor | None]:
        """The stats of the row closing ``steps`` steps whose last estimate is ``estimate`` (0-d
        tensors, ``None`` for a stat it did not report); the sums start again."""
        values = {}
        for stat in self.stats:
            if stat.reduce == "mean":
                total = self.sums.pop(stat.name, None)
                values[stat.name] = None if total is None else total / steps
            else:
                values[stat.name] = estimate.stats.get(stat.name)
        return values


def as_floats(values: dict[str, torch.Tensor | None]) -> dict[str, float | None]:
    """0-d tensors as floats for a trace row (``None`` stays ``None``)."""
    return {name: None if value is None else float(value) for name, value in values.items()}


def non_finite(**tensors: torch.Tensor | None) -> str | None:
    """The name of the first quantity holding a NaN or an infinity, if any (for divergence)."""
    for name, tensor in tensors.items():
        if tensor is not None and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def diverged(model: torch.nn.Module, **tensors: torch.Tensor | None) -> str | None:
    """What went non-finite at a row step of a model's training: the first of ``tensors`` (the
    objective, the estimator's stats and gradient) holding a NaN or an infinity, else ``"parameters"``
    if any of the model's weights does; ``None`` if all are finite."""
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    return non_finite(**tensors) or non_finite(parameters=weights)
