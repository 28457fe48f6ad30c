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


def non_finite(**tensors: torch.Tensor | None) -> str | None:
    """The name of the first quantity holding a NaN or an infinity, if any (for divergence)."""
    for name, tensor in tensors.items():
        if tensor is not None and not bool(torch.isfinite(tensor).all()):
            return name
    return None
