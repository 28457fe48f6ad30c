"""Aggregation: the data behind each figure and the summary, as frames.

One row per (source, group, estimator[, step or K]) with the mean over seeds, its standard error and
the number of seeds behind it, so what a figure shows can be tested without looking at pixels.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from dcvbench.estimators import REFERENCE_ESTIMATOR
from dcvbench.plot.runs import RUNS, Results
from dcvbench.plot.style import estimator_order

# The summary's "final variance" per job: the estimator's own (resample) variance first.
VARIANCE_COLUMNS = {
    "toy": ("grad_var",),
    "vae": ("grad_var_resample", "grad_var_ema"),
    "predict": ("grad_var_resample", "grad_var_ema"),
    "train": ("grad_var_ema",),
}
FINAL_COLUMNS = ("objective", "train_elbo", "test_bound", "train_objective")
# What a variance study measures per (estimator, K), in variance-summary.csv's order: the variance, its
# ratio to rloo's, variance × evals, the control variate's α (α* where optimal), the largest |z| of
# the bias over coordinates (toy: against the exact gradient) and the seconds one estimate takes.
STUDY_MEASURES = (
    "variance",
    "variance_ratio",
    "cost_variance",
    "alpha",
    "bias_max_z",
    "seconds_per_estimate",
)
# Measured against the exact gradient (toys; a VAE checkpoint with --exact), each with its own s.e.
# from the study's draws: bias norm ‖E ĝ − ∇‖/‖∇‖, MSE E‖ĝ − ∇‖², cosine E⟨ĝ, ∇⟩/(‖ĝ‖‖∇‖).
QUALITY_MEASURES = ("bias_norm", "mse", "cosine")
# Columns of summary.csv, in order (a stable schema: every column, even where all-empty).
# fmt: off
SUMMARY_COLUMNS = [
    "source", "problem", "group", "k", "estimator", "seeds", "statuses", "last_step_min", "last_step_max",
    "objective_mean", "objective_se", "train_elbo_mean", "train_elbo_se", "test_bound_mean", "test_bound_se",
    "train_objective_mean", "train_objective_se", "grad_var_metric", "grad_var_mean", "grad_var_se",
    "var_ratio_rloo", "sec_per_step_median_mean", "sec_per_step_median_se",
]
# fmt: on


def _mean_se(values: pd.Series) -> tuple[float, float, int]:
    values = values.dropna()
    n = len(values)
    if n == 0:
        return math.nan, math.nan, 0
    mean = float(values.mean())
    se = float(values.std(ddof=1) / math.sqrt(n)) if n >= 2 else math.nan
    return mean, se, n


def _series_info(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (source, group, estimator): seeds, whether every run finished, and the statuses."""
    rows = []
    for (source, group, estimator), frame in runs.groupby(["source", "group", "estimator"], sort=False):
        counts = frame["status"].value_counts()
        statuses = ", ".join(
            status if len(counts) == 1 and n == len(frame) and status == "finished" else f"{status} {n}"
            for status, n in sorted(counts.items())
        )
        rows.append(
            {
                "source": source,
                "group": group,
                "estimator": estimator,
                "seeds": len(frame),
                "finished": bool((frame["status"] == "finished").all()),
                "statuses": statuses,
            }
        )
    return pd.DataFrame(rows, columns=["source", "group", "estimator", "seeds", "finished", "statuses"])


def curve_frame(results: Results, metric: str) -> pd.DataFrame:
    """Mean, standard error and seed count of ``metric`` per (source, group, estimator, step).

    ``se`` is the sample standard deviation over seeds divided by √n, and NaN when only one seed
    measured that step (no band is drawn then). ``finished`` is False when any run of the series
    is still running, interrupted, failed or diverged.
    """
    columns = [
        "source",
        "group",
        "title",
        "estimator",
        "step",
        "mean",
        "se",
        "n",
        "seeds",
        "finished",
        "statuses",
    ]
    trace = results.trace
    if trace.empty or metric not in trace:
        return pd.DataFrame(columns=columns)
    labels = results.runs[["source", "run_id", "group", "title", "estimator"]]
    rows = trace[["source", "run_id", "step", metric]].dropna(subset=[metric])
    rows = rows.merge(labels, on=["source", "run_id"])
    if rows.empty:
        return pd.DataFrame(columns=columns)
    keys = ["source", "group", "title", "estimator", "step"]
    grouped = rows.groupby(keys, sort=True)[metric]
    frame = grouped.agg(mean="mean", std=lambda v: v.std(ddof=1), n="count").reset_index()
    frame["se"] = np.where(frame["n"] >= 2, frame["std"] / np.sqrt(frame["n"]), np.nan)
    frame = frame.merge(_series_info(results.runs), on=["source", "group", "estimator"])
    return frame[columns].reset_index(drop=True)


def _per_run_final(results: Results, column: str) -> pd.DataFrame:
    """The last non-null value of ``column`` in each run (``source, run_id, value``)."""
    trace = results.trace
    if trace.empty or column not in trace:
        return pd.DataFrame(columns=["source", "run_id", "value"])
    rows = trace[["source", "run_id", "step", column]].dropna(subset=[column])
    last = rows.sort_values("step", kind="stable").groupby(["source", "run_id"], sort=False).tail(1)
    return last.rename(columns={column: "value"})[["source", "run_id", "value"]]


def _per_run_median(results: Results, column: str) -> pd.DataFrame:
    """The median of ``column`` over each run's rows (``source, run_id, value``)."""
    trace = results.trace
    if trace.empty or column not in trace:
        return pd.DataFrame(columns=["source", "run_id", "value"])
    rows = trace[["source", "run_id", column]].dropna(subset=[column])
    return rows.groupby(["source", "run_id"], sort=False)[column].median().rename("value").reset_index()


def _over_seeds(results: Results, per_run: pd.DataFrame, prefix: str) -> pd.DataFrame:
    """Mean ± s.e. over the runs (seeds) of each (source, group, estimator)."""
    merged = per_run.merge(results.runs[["source", "run_id", "group", "estimator"]], on=["source", "run_id"])
    rows = []
    for (source, group, estimator), frame in merged.groupby(["source", "group", "estimator"], sort=False):
        mean, se, n = _mean_se(frame["value"].astype(float))
        rows.append(
            {"source": source, "group": group, "estimator": estimator}
            | {f"{prefix}_mean": mean, f"{prefix}_se": se, f"{prefix}_n": n}
        )
    columns = ["source", "group", "estimator", f"{prefix}_mean", f"{prefix}_se", f"{prefix}_n"]
    return pd.DataFrame(rows, columns=columns)


def temperature_frame(results: Results) -> pd.DataFrame:
    """The temperature study: the final held-out bound per (source, group, estimator, schedule, λ).

    Only estimators run at two or more temperatures (or schedules) in a group appear; ``λ`` is the
    fixed temperature, or the floor an annealed run reached. Columns: ``source, group, title,
    estimator, annealed, temperature, mean, se, n``.
    """
    columns = ["source", "group", "title", "estimator", "annealed", "temperature", "mean", "se", "n"]
    runs = results.runs.dropna(subset=["temperature"])
    final = _per_run_final(results, "test_bound")
    if runs.empty or final.empty:
        return pd.DataFrame(columns=columns)
    merged = final.merge(runs, on=["source", "run_id"])
    rows = []
    for (source, group, estimator), frame in merged.groupby(["source", "group", "base_estimator"], sort=True):
        settings = frame[["annealed", "temperature"]].drop_duplicates()
        if len(settings) < 2:
            continue
        for (annealed, temperature), runs_at in frame.groupby(["annealed", "temperature"], sort=True):
            mean, se, n = _mean_se(runs_at["value"].astype(float))
            title = runs_at["title"].iloc[0]
            rows.append(
                {"source": source, "group": group, "title": title, "estimator": estimator}
                | {
                    "annealed": bool(annealed),
                    "temperature": float(temperature),
                    "mean": mean,
                    "se": se,
                    "n": n,
                }
            )
    return pd.DataFrame(rows, columns=columns)


def time_frame(results: Results) -> pd.DataFrame:
    """Seconds per step per (source, group, estimator): each run's median over its rows, then mean ±
    s.e. over seeds. The median, as the jobs' final tables report a run's time: a step's time varies
    with the machine's load, and a few slow rows (variance measurements, another process) must not
    decide the ranking."""
    frame = _over_seeds(results, _per_run_median(results, "sec_per_step"), "sec_per_step")
    frame = frame.merge(results.runs[["source", "group", "title"]].drop_duplicates(), on=["source", "group"])
    frame = frame.merge(_series_info(results.runs), on=["source", "group", "estimator"])
    frame = frame.rename(
        columns={"sec_per_step_mean": "mean", "sec_per_step_se": "se", "sec_per_step_n": "n"}
    )
    return frame[frame["n"] > 0].reset_index(drop=True)


def variance_frame(results: Results) -> pd.DataFrame:
    """Variance studies aggregated over seeds, per (source, group, estimator, budget, K).

    Columns: each of :data:`STUDY_MEASURES` and :data:`QUALITY_MEASURES` with ``_mean`` and ``_se``
    (NaN where a study did not measure it: α for estimators without one, bias z and quality at a VAE
    checkpoint without the exact gradient, columns of tables written before they existed);
    ``alpha_source`` (``optimal``: α* of that point, ``fixed``: ``--alpha``); ``n`` studies; ``evals``;
    ``budget`` (NaN in a study by K).
    The s.e. of a study measure is that of the mean over studies (none for one study); that of a
    quality measure comes from the draws: ``√(Σ_i se_i²) / n`` over the ``n`` studies' own s.e.s, so
    one study has one too.
    """
    table = results.variance
    columns = ["source", "group", "title", "estimator", "budget", "k", "evals", "n", "alpha_source"]
    for name in (*STUDY_MEASURES, *QUALITY_MEASURES):
        columns += [f"{name}_mean", f"{name}_se"]
    if table.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    if "budget" not in table:  # written before equal-cost studies
        table = table.assign(budget=math.nan)
    keys = ["source", "group", "title", "estimator", "budget", "k"]
    for key, frame in table.groupby(keys, sort=True, dropna=False):
        row = dict(zip(keys, key, strict=True))
        row["evals"] = int(frame["evals"].iloc[0]) if "evals" in frame else int(row["k"])
        sources = frame["alpha_source"].dropna().unique() if "alpha_source" in frame else ()
        row["alpha_source"] = ", ".join(sorted(sources)) or None
        for name in STUDY_MEASURES:
            values = frame[name].astype(float) if name in frame else pd.Series(dtype=float)
            mean, se, _ = _mean_se(values)
            row |= {f"{name}_mean": mean, f"{name}_se": se}
        for name in QUALITY_MEASURES:
            row |= _propagated_mean_se(frame, name)
        row["n"] = len(frame)
        rows.append(row)
    # By K within an estimator: at equal cost too, as K grows with the budget.
    rows.sort(key=lambda r: (r["group"], r["source"] != RUNS, estimator_order(r["estimator"]), r["k"]))
    return pd.DataFrame(rows, columns=columns)


def _propagated_mean_se(studies: pd.DataFrame, name: str) -> dict[str, float]:
    """Mean over the studies that measured ``name``, and its s.e. from their own (independent) ones."""
    if name not in studies or f"{name}_se" not in studies:
        return {f"{name}_mean": math.nan, f"{name}_se": math.nan}
    measured = studies[[name, f"{name}_se"]].astype(float).dropna(subset=[name])
    if measured.empty:
        return {f"{name}_mean": math.nan, f"{name}_se": math.nan}
    se = math.sqrt((measured[f"{name}_se"] ** 2).sum(skipna=False)) / len(measured)
    return {f"{name}_mean": float(measured[name].mean()), f"{name}_se": se}


def summary_frame(results: Results) -> pd.DataFrame:
    """One row per (source, group, estimator): final values, variance ratio, time, seeds, statuses.

    Final values are each run's last recorded value (at ``last_step``, which for an unfinished run
    is earlier than for the others), then mean ± s.e. over seeds. ``var_ratio_rloo`` is the mean
    final variance over that of ``rloo`` in the same group and source.
    """
    runs = results.runs
    if runs.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    frame = runs.groupby(["source", "group", "estimator"], sort=False).agg(
        problem=("problem", "first"),
        k=("k", "first"),
        last_step_min=("last_step", "min"),
        last_step_max=("last_step", "max"),
    )
    frame = frame.reset_index().merge(_series_info(runs), on=["source", "group", "estimator"])
    for column in FINAL_COLUMNS:
        final = _over_seeds(results, _per_run_final(results, column), column)
        frame = frame.merge(final, on=["source", "group", "estimator"], how="left")
    # The variance column of each job: resample where measured, else EMA.
    variance_parts = []
    for job, names in VARIANCE_COLUMNS.items():
        for name in names:
            final = _over_seeds(results, _per_run_final(results, name), "grad_var")
            final = final[final["grad_var_n"] > 0].assign(grad_var_metric=name)
            in_job = final["group"].isin(runs.loc[runs["job"] == job, "group"])
            variance_parts.append(final[in_job])
    variance = pd.concat(variance_parts, ignore_index=True) if variance_parts else pd.DataFrame()
    keys = ["source", "group", "estimator"]
    if len(variance):
        variance = variance.drop_duplicates(keys, keep="first")  # resample before EMA (tuple order)
        frame = frame.merge(variance, on=keys, how="left")
    else:
        frame = frame.assign(grad_var_metric=None, grad_var_mean=np.nan, grad_var_se=np.nan)
    reference = frame.loc[frame["estimator"] == REFERENCE_ESTIMATOR, ["source", "group", "grad_var_mean"]]
    reference = reference.rename(columns={"grad_var_mean": "reference"})
    frame = frame.merge(reference, on=["source", "group"], how="left")
    frame["var_ratio_rloo"] = frame["grad_var_mean"] / frame["reference"]
    timing = time_frame(results)[["source", "group", "estimator", "mean", "se"]]
    timing = timing.rename(columns={"mean": "sec_per_step_median_mean", "se": "sec_per_step_median_se"})
    frame = frame.merge(timing, on=keys, how="left")
    for column in SUMMARY_COLUMNS:
        if column not in frame:
            frame[column] = np.nan
    frame = frame[SUMMARY_COLUMNS]
    order = frame.apply(lambda r: (r["source"] != RUNS, r["group"], *estimator_order(r["estimator"])), axis=1)
    return frame.iloc[sorted(range(len(frame)), key=lambda i: order.iloc[i])].reset_index(drop=True)
