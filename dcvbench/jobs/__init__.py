"""Jobs wire a problem, estimators, measurement and results together; the CLI only calls them.

A job reports progress through a :class:`Progress` object it is given, so it knows nothing of
terminals; the CLI passes a rich progress bar, library users nothing (:class:`NoProgress`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pandas as pd
import torch

from dcvbench.checkpoints import CHECKPOINT
from dcvbench.results import read_manifest, read_trace
from dcvbench.runtime import ConfigError


class Progress(Protocol):
    def start(self, description: str, total: int) -> None:
        """A new unit of work (one run) with ``total`` steps begins."""

    def advance(self, steps: int = 1) -> None: ...


class NoProgress:
    """Progress that reports nothing."""

    def start(self, description: str, total: int) -> None:
        pass

    def advance(self, steps: int = 1) -> None:
        pass


@dataclass(frozen=True)
class RunSummary:
    """How a run ended and the last recorded value of each of its metrics."""

    run_id: str
    path: Path
    estimator: str
    k: int
    seed: int
    status: str
    last_step: int | None
    metrics: dict[str, float | None]


def last_values(trace: pd.DataFrame, columns: tuple[str, ...]) -> dict[str, float | None]:
    """The last non-null value of each column of a trace (``None`` if never measured)."""
    values: dict[str, float | None] = {}
    for column in columns:
        measured = trace[column].dropna() if column in trace else pd.Series(dtype=float)
        values[column] = float(measured.iloc[-1]) if len(measured) else None
    return values


def run_summary(path: Path, manifest: dict, metrics: tuple[str, ...]) -> RunSummary:
    """The summary of the run in ``path``: how its manifest says it ended, and its last metrics."""
    return RunSummary(
        run_id=manifest["run_id"],
        path=path,
        estimator=manifest["estimator"],
        k=manifest["k"],
        seed=manifest["seed"],
        status=manifest["status"],
        last_step=manifest.get("last_step"),
        metrics=last_values(read_trace(path), metrics),
    )


def run_to_resume(run_dir: Path | str, job: str) -> tuple[Path, dict, Path]:
    """The directory, manifest and checkpoint of a ``job`` run that ``--resume`` can continue.

    A directory that is no run is a :class:`~dcvbench.results.ResultsError`; a run of another job
    or one without a checkpoint is a :class:`ConfigError`. Nothing is written here.
    """
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    if manifest.get("job") != job:
        raise ConfigError(f"{run_dir} is not a {job} run (its job is {manifest.get('job')!r})")
    checkpoint = run_dir / CHECKPOINT
    if not checkpoint.is_file():
        raise ConfigError(f"{run_dir} has no {CHECKPOINT} to resume from; start the run again instead")
    return run_dir, manifest, checkpoint


def alpha_of(estimator: torch.nn.Module) -> float | None:
    """The control-variate weight α of an estimator that has one (``None`` for the others)."""
    alpha = getattr(estimator, "alpha", None)
    return None if alpha is None else float(alpha.detach())


def non_finite(**tensors: torch.Tensor | None) -> str | None:
    """The name of the first quantity holding a NaN or an infinity, if any (for divergence)."""
    for name, tensor in tensors.items():
        if tensor is not None and not bool(torch.isfinite(tensor).all()):
            return name
    return None
