"""``dcvbench.compare``: which estimator for *your* objective, measured as ``dcvbench variance`` does.

At the logits ``η`` ``[B, D]`` (bits) or ``[B, N, C]`` (categorical) of the user's objective
``f`` (:mod:`dcvbench.problems.user`), every chosen estimator draws ``draws`` independent estimates
of ``∇_η E_{q_η}[f]`` at each K (or, per budget, at the largest K within that many evaluations of
f), all from generators in the same state (paired draws), and one row per (estimator, K or budget)
reports the variance, the ratio to ``rloo``'s, ``α*`` for ``rloo-dcv``, seconds per estimate and
f-evaluations; with the exact gradient — given, or computed by enumeration when there are at most
:data:`~dcvbench.measure.exact.USER_MAX_CODES` codes per row — also each coordinate's bias z, the
bias norm, the MSE and the cosine (each with its ``_se``; DESIGN §3.9). It is the variance study's
own code (:func:`~dcvbench.jobs.variance.run_variance` at a
:class:`~dcvbench.jobs.variance.UserPoint`): the same seeds give the same numbers.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from dcvbench.config import VARIANCE_DEFAULT_ESTIMATORS, VarianceConfig
from dcvbench.estimators import default_settings
from dcvbench.jobs import Progress
from dcvbench.jobs.variance import function_name, run_variance
from dcvbench.problems.user import UserProblem, user_problem
from dcvbench.runtime import DEFAULT_THREADS, dtype_name, resolve_dtype


def compare(
    objective: Callable[[Tensor], Tensor],
    logits: Tensor,
    *,
    estimators: str | Sequence[str] | None = None,
    k: int | Sequence[int] | None = None,
    draws: int = VarianceConfig.samples,
    budget: int | Sequence[int] | None = None,
    exact_gradient: Tensor | None = None,
    seed: int = VarianceConfig.seed,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    threads: int = DEFAULT_THREADS,
    tune_steps: int = VarianceConfig.tune_steps,
    estimator_settings: Mapping[str, Any] | None = None,
    out: str | None = None,
    progress: Progress | None = None,
) -> pd.DataFrame:
    """Estimators side by side on ``objective`` at ``logits``: one row per estimator and K (or budget).

    Args:
        objective: ``f``: samples ``[K, B, D]`` in {0, 1}, or one-hot ``[K, B, N, C]``, → ``[K, B]``;
            it may implement the optional protocols of :mod:`dcvbench.objectives`.
        logits: ``η`` ``[B, D]`` or ``[B, N, C]`` (categorical when 3-d).
        estimators: registered names (``dcvbench estimators``); default: ``rloo, rloo-dcv, disarm``
            (categorical: ``rloo, rloo-dcv, concrete``). ``rloo`` is always measured: every ratio is to it.
        k: samples per estimate (one or several); default 2 unless ``budget`` is given.
        draws: independent estimates per row of the table.
        budget: instead of ``k``: each estimator at the largest K whose estimate costs at most this
            many evaluations of f (one or several budgets).
        exact_gradient: ``∇_η E_q[f]`` ``[B, *event]``, for the bias and quality columns; without
            it they come from enumeration when the latent space is small enough, else are absent.
        seed: the draws' seed; the same seed gives the same draws as ``dcvbench variance --seed``.
        device, dtype: where and in what precision to measure; ``None``: the logits' own. Given,
            the logits (and the exact gradient) are moved there, and the objective must follow them.
        threads: torch threads while measuring.
        tune_steps: train estimators' learned parts at the point for this many estimates first.
        estimator_settings: estimator options (``{"alpha": -0.1, "temperature": 0.5}``), the rest
            at their defaults.
        out: a directory under which the study is written as ``dcvbench variance`` writes one (run
            directory, manifest, ``variance.parquet``), for ``dcvbench plot``; ``None``: nothing kept.
        progress: a :class:`~dcvbench.jobs.Progress` told of the draws as they are made.

    Returns:
        The study's table (the columns of ``variance.parquet``: docs/measurement.md).

    Raises:
        dcvbench.runtime.ConfigError: bad shapes, names or settings, in one line.
    """
    moved = {"device": device, "dtype": None if dtype is None else _dtype(dtype)}
    problem = user_problem(
        UserProblem(objective, _moved(logits, **moved), _moved(exact_gradient, **moved)),
        "compare()",
    )
    latent = problem.shape.latent_type
    kept = contextlib.nullcontext(str(out)) if out is not None else tempfile.TemporaryDirectory()
    with kept as root:
        config = VarianceConfig(
            estimators=_names(estimators, VARIANCE_DEFAULT_ESTIMATORS[latent]),
            ks=None if k is None else _ints(k),
            budgets=() if budget is None else _ints(budget),
            samples=draws,
            seed=seed,
            device=problem.logits.device.type,
            dtype=dtype_name(problem.logits.dtype),
            threads=threads,
            tune_steps=tune_steps,
            estimator_settings={**default_settings("variance"), **(estimator_settings or {})},
            out=root,
            # The user's problem, not the toy: its estimators are checked for its own latents.
            objective=function_name(problem.objective),
        )
        table = run_variance(config, progress, problem).table
    # Without out= the run directory is gone: its id would name nothing.
    return table if out is not None else table.drop(columns="run_id")


def _moved(tensor: Tensor | None, device, dtype: torch.dtype | None) -> Tensor | None:
    if not isinstance(tensor, Tensor) or (device is None and dtype is None):
        return tensor  # user_problem names what is wrong with anything else
    return tensor.to(device=device, dtype=dtype)


def _dtype(dtype: str | torch.dtype) -> torch.dtype:
    """A dtype given by name or as a torch dtype, one of the study's (:data:`~dcvbench.runtime.DTYPES`)."""
    return resolve_dtype(dtype if isinstance(dtype, str) else dtype_name(dtype))


def _names(estimators: str | Sequence[str] | None, default: tuple[str, ...]) -> tuple[str, ...]:
    if estimators is None:
        return default
    return (estimators,) if isinstance(estimators, str) else tuple(estimators)


def _ints(values: int | Sequence[int]) -> tuple[int, ...]:
    return (values,) if isinstance(values, int) else tuple(values)
