"""``dcvbench plot``: figures and a summary table from every run below a directory.

Two halves, so what a figure shows can be tested without looking at pixels:

- **reading and aggregation** (:func:`load_results`, :func:`curve_frame`, :func:`time_frame`,
  :func:`variance_frame`, :func:`summary_frame`) return pandas frames: one row per
  (source, group, estimator, step) with the mean over seeds, its standard error and the number of
  seeds behind it;
- **drawing** (:func:`draw_curves`, :func:`draw_time`, :func:`draw_variance_ratio`,
  :func:`draw_cost_variance`) turns those frames into matplotlib figures.

Runs are grouped into *panel groups* — problem, latent type, toy objective and dimension or VAE data
set and architecture, and K — named by a file stem such as ``toy-separable-d200-k2`` or
``vae-mnist-subset-linear-k2``; settings that differ from the published defaults are appended
(``-t0.3``, ``-disarm`` for the DisARM protocol, ``-l64`` for 64 latent bits). Categorical runs are
never averaged with binary ones: their groups say so and name their sizes
(``toy-categorical-separable-n50-c4-k2``, ``vae-categorical-mnist-subset-linear-n20-c10-k2``).
Runs written before categorical latents existed are binary. Within a group, every estimator is one
series, averaged over seeds. Each estimator has the same colour in every
figure: a fixed mapping from the registry order to a qualitative palette.

Figures are built with :class:`matplotlib.figure.Figure` and the Agg canvas, never through
``pyplot``: there is no global figure registry to leak into, and style settings are applied through
``matplotlib.rc_context`` so nothing global changes.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dcvbench.estimators import REFERENCE_ESTIMATOR, estimator_names
from dcvbench.results import (
    MANIFEST,
    ResultsError,
    find_runs,
    read_manifest,
    read_table,
    read_trace,
)
from dcvbench.runtime import ConfigError

FORMATS = ("png", "pdf", "svg")
RUNS, BASELINE = "runs", "baseline"  # values of the ``source`` column
VARIANCE_TABLE = "variance.parquet"

# Published defaults (DESIGN §4): a setting that differs from them is appended to a group's name.
DEFAULT_TARGET = 0.499
DEFAULT_PROTOCOL = "dcv"
DEFAULT_LATENT = 200

# One column of a paper at readable size; fonts sized for that width.
FIGSIZE = (3.5, 2.6)
STYLE = {
    "font.size": 7,
    "axes.titlesize": 7,
    "axes.labelsize": 7,
    "legend.fontsize": 6,
    "xtick.labelsize": 6,
    "ytick.labelsize": 6,
    "lines.linewidth": 1.2,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "savefig.dpi": 200,
    "savefig.bbox": "tight",  # a safety net: nothing (a long label) is ever cropped
}
BAND_ALPHA = 0.2
MARKERS_BELOW = 30  # curves with fewer points than this get markers (sparse metrics such as bounds)
NOT_FINISHED = "†"
LEGEND_COLUMN_CHARS = 26  # longest label that still fits two legend columns in one paper column
LEGEND_ROW_INCHES = 0.14  # the figure grows by this per legend row placed below the axes

# Qualitative palette in registry order: tab10 with its grey moved last (grey reads as "inactive"),
# black before it, then Dark2 for registries longer than eleven estimators.
_TAB10 = matplotlib.colormaps["tab10"].colors
PALETTE = [
    *_TAB10[:7],
    *_TAB10[8:],
    (0.0, 0.0, 0.0),
    _TAB10[7],
    *matplotlib.colormaps["Dark2"].colors,
]
FALLBACK = matplotlib.colormaps["Set3"].colors  # estimators unknown to this registry


@dataclass(frozen=True)
class Metric:
    """A traced quantity and how to draw it."""

    column: str
    label: str
    log: bool = False
    zoom: bool = False  # fit y to the curves past their first tenth (see _zoom_past_start)


TOY_METRICS = (
    Metric("grad_var", "gradient variance (resample)", log=True),
    Metric("objective", "E_q[f] (exact)"),
    Metric("alpha", "α"),
)
VAE_METRICS = (
    Metric("grad_var_resample", "encoder gradient variance (resample)", log=True),
    Metric("grad_var_ema", "encoder gradient variance (EMA)", log=True),
    Metric("train_elbo", "training ELBO", zoom=True),
    Metric("train_bound", "training K-sample bound (vimco's objective)", zoom=True),
    Metric("test_bound", "test bound (IWAE)", zoom=True),
    Metric("alpha", "α"),
)
METRICS = {"toy": TOY_METRICS, "vae": VAE_METRICS}
# The summary's "final variance" per problem: the estimator's own (resample) variance first.
VARIANCE_COLUMNS = {"toy": ("grad_var",), "vae": ("grad_var_resample", "grad_var_ema")}
FINAL_COLUMNS = ("objective", "train_elbo", "test_bound")

# Columns of Results.runs: one row per training run.
# fmt: off
RUN_COLUMNS = [
    "source", "run_id", "path", "job", "problem", "group", "title", "estimator", "k", "seed", "status",
    "last_step", "started", "fingerprint",
]
# fmt: on
# Config fields that may differ between runs averaged together (they are what varies by design).
FINGERPRINT_IGNORES = ("seeds", "estimators", "out", "device", "data_dir")
# The columns that say where a variance study measured, per problem.
STUDY_POINT = {"toy": ("objective", "dim", "theta"), "vae": ("dataset", "arch", "checkpoint_step")}
# Columns of summary.csv, in order (a stable schema: every column, even where all-empty).
# fmt: off
SUMMARY_COLUMNS = [
    "source", "problem", "group", "k", "estimator", "seeds", "statuses", "last_step_min", "last_step_max",
    "objective_mean", "objective_se", "train_elbo_mean", "train_elbo_se", "test_bound_mean", "test_bound_se",
    "grad_var_metric", "grad_var_mean", "grad_var_se", "var_ratio_rloo", "sec_per_step_mean",
    "sec_per_step_se",
]
# fmt: on


@dataclass(frozen=True)
class Skipped:
    """A file or run that could not be read, and why (reported in one line)."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"skipped {self.path}: {self.reason}"


@dataclass
class Results:
    """Everything read from one or more directories of runs.

    ``runs``: one row per training run (``source, run_id, path, job, problem, group, title,
    estimator, k, seed, status, last_step, started, fingerprint``). ``trace``: the trace rows of
    those runs with ``source`` added. ``variance``: the rows of every ``variance.parquet`` with
    ``source``, ``group`` and ``title`` added.
    """

    runs: pd.DataFrame
    trace: pd.DataFrame
    variance: pd.DataFrame
    skipped: list[Skipped] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class PlotReport:
    """What :func:`plot_results` did: figures written, the summary, and what it skipped."""

    out_dir: Path
    figures: list[Path]
    summary: pd.DataFrame
    variance: pd.DataFrame
    skipped: list[Skipped]
    warnings: list[str]


# ---------------------------------------------------------------------------------------------
# Colours and labels.


def estimator_color(name: str) -> tuple[float, float, float]:
    """The colour of an estimator: the same in every figure and every invocation."""
    names = estimator_names()
    if name in names:
        return PALETTE[names.index(name) % len(PALETTE)]
    # Not registered here (a newer or foreign run): a stable hash, not the order of appearance.
    return FALLBACK[zlib.crc32(name.encode()) % len(FALLBACK)]


def estimator_order(name: str) -> tuple[int, str]:
    """Sort key: registry order, unknown names after, alphabetically."""
    names = estimator_names()
    return (names.index(name), name) if name in names else (len(names), name)


def _seeds_phrase(counts: Iterable[int]) -> str:
    counts = sorted(set(int(n) for n in counts))
    if not counts:
        return ""
    if counts == [1]:
        return "single seed (no band)"
    if len(counts) == 1:
        return f"mean ± s.e. over {counts[0]} seeds"
    return f"mean ± s.e. over {counts[0]}–{counts[-1]} seeds"


# ---------------------------------------------------------------------------------------------
# Reading.


def load_results(root: Path | str, source: str = RUNS) -> Results:
    """Read every run below ``root`` (any depth); unreadable ones are skipped with a reason.

    Raises :class:`ResultsError` if ``root`` holds no run at all, or none that could be read.
    """
    root = Path(root)
    if not root.is_dir():
        raise ResultsError(f"{root} is not a directory of dcvbench runs")
    paths = find_runs(root)
    if not paths:
        raise ResultsError(f"no dcvbench runs under {root}")
    records: list[dict[str, Any]] = []
    traces: list[pd.DataFrame] = []
    tables: list[pd.DataFrame] = []
    skipped: list[Skipped] = []
    for path in paths:
        try:
            manifest = read_manifest(path)
        except ResultsError as error:
            skipped.append(Skipped(path / MANIFEST, str(error).removeprefix(f"{path / MANIFEST} ")))
            continue
        job = manifest.get("job")
        if job == "variance":
            table = _read_variance(path, manifest, skipped)
            if table is not None:
                tables.append(table.assign(source=source))
            continue
        if job not in METRICS:
            skipped.append(Skipped(path, f"unknown job {job!r} in {MANIFEST}"))
            continue
        try:
            record = _run_record(path, manifest, source)
        except KeyError as error:
            skipped.append(Skipped(path / MANIFEST, f"manifest lacks {error.args[0]!r}"))
            continue
        trace = read_trace(
            path, lambda part, reason: skipped.append(Skipped(part, f"unreadable Parquet part ({reason})"))
        )
        if trace.empty:
            skipped.append(Skipped(path, f"no trace rows yet (status {record['status']})"))
            continue
        records.append(record)
        traces.append(trace.assign(source=source, run_id=record["run_id"]))
    if not records and not tables:
        reason = f": {len(skipped)} skipped, first {skipped[0]}" if skipped else ""
        raise ResultsError(f"no readable dcvbench runs under {root}{reason}")
    runs = pd.DataFrame(records, columns=RUN_COLUMNS)
    runs, warnings = _deduplicate(runs)
    trace = pd.concat(traces, ignore_index=True) if traces else pd.DataFrame()
    if len(trace):
        trace = trace[trace["run_id"].isin(runs["run_id"])].reset_index(drop=True)
    variance = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    warnings += _mixed_settings(runs)
    return Results(runs, trace, variance, skipped, warnings)


def _run_record(path: Path, manifest: dict[str, Any], source: str) -> dict[str, Any]:
    """One row of ``Results.runs``; KeyError names a manifest field that is missing."""
    job = manifest["job"]
    config = manifest.get("config") or {}
    k = int(manifest["k"])
    if job == "toy":
        problem = config["problem"]
        objective, dim = problem["objective"], int(problem["dim"])
        if problem.get("latent", "binary") == "categorical":
            classes = int(problem["classes"])
            group = f"toy-categorical-{objective}-n{dim}-c{classes}-k{k}"
            title = f"toy {objective}, {_categorical(dim, classes)}, K={k}"
        else:
            target = float(problem["target"])
            suffix = "" if math.isclose(target, DEFAULT_TARGET) else f"-t{target:g}"
            group = f"toy-{objective}-d{dim}{suffix}-k{k}"
            title = f"toy {objective}, D={dim}{'' if not suffix else f', t={target:g}'}, K={k}"
    else:
        dataset, arch = manifest["dataset"], manifest["arch"]
        protocol = config.get("protocol", DEFAULT_PROTOCOL)
        suffix = "" if protocol == DEFAULT_PROTOCOL else f"-{protocol}"
        extra = "" if protocol == DEFAULT_PROTOCOL else f", {protocol} protocol"
        if config.get("latent") == "categorical":
            variables, classes = int(config["latent_vars"]), int(config["classes"])
            group = f"vae-categorical-{dataset}-{arch}{suffix}-n{variables}-c{classes}-k{k}"
            title = f"VAE {dataset}, {arch}{extra}, {_categorical(variables, classes)}, K={k}"
        else:
            # Written before categorical latents, "latent" was the number of bits.
            bits = int(config.get("latent_vars", config.get("latent", DEFAULT_LATENT)))
            suffix += "" if bits == DEFAULT_LATENT else f"-l{bits}"
            extra += "" if bits == DEFAULT_LATENT else f", {bits} latents"
            group = f"vae-{dataset}-{arch}{suffix}-k{k}"
            title = f"VAE {dataset}, {arch}{extra}, K={k}"
    settings = {key: value for key, value in config.items() if key not in FINGERPRINT_IGNORES}
    return {
        "source": source,
        "run_id": manifest["run_id"],
        "path": str(path),
        "job": job,
        "problem": job,
        "group": group,
        "title": title,
        "estimator": manifest["estimator"],
        "k": k,
        "seed": int(manifest["seed"]),
        "status": manifest.get("status", "unknown"),
        "last_step": manifest.get("last_step"),
        "started": manifest.get("started") or "",
        "fingerprint": json.dumps(settings, sort_keys=True, default=str),
    }


def _read_variance(path: Path, manifest: dict[str, Any], skipped: list[Skipped]) -> pd.DataFrame | None:
    table_path = path / VARIANCE_TABLE
    if not table_path.exists():
        skipped.append(Skipped(path, f"no {VARIANCE_TABLE} (status {manifest.get('status', 'unknown')})"))
        return None
    try:
        table = read_table(table_path)
    except ResultsError as error:
        reason = str(error).removeprefix(f"unreadable table {table_path}: ")
        skipped.append(Skipped(table_path, f"unreadable Parquet table ({reason.splitlines()[0]})"))
        return None
    problem = table["problem"].iloc[0] if "problem" in table and len(table) else "toy"
    needed = {"estimator", "k", "variance", "variance_ratio", "cost_variance", *STUDY_POINT.get(problem, ())}
    missing = needed - set(table.columns)
    if problem not in STUDY_POINT or missing or table.empty:
        why = (
            f"is for an unknown problem {problem!r}"
            if problem not in STUDY_POINT
            else f"lacks columns {sorted(missing)}"
            if missing
            else "is empty"
        )
        skipped.append(Skipped(table_path, f"{VARIANCE_TABLE} {why}"))
        return None
    labels = [_study_label(problem, row) for row in table.to_dict("records")]
    return table.assign(
        group=[group for group, _ in labels],
        title=[title for _, title in labels],
        status=manifest.get("status", "unknown"),
        path=str(path),
    )


def _study_label(problem: str, row: dict[str, Any]) -> tuple[str, str]:
    """File stem and title of the study a row of ``variance.parquet`` belongs to.

    Tables written before categorical latents have no ``latent`` column: they are binary.
    """
    categorical = row.get("latent") == "categorical"
    if problem == "vae":
        step = int(row["checkpoint_step"])
        where, latents = f"{row['dataset']}-{row['arch']}", ""
        if categorical:
            variables, classes = int(row["latent_vars"]), int(row["classes"])
            where = f"categorical-{where}-n{variables}-c{classes}"
            latents = f", {_categorical(variables, classes)}"
        return (
            f"variance-vae-{where}-step{step}",
            f"variance at step {step}: VAE {row['dataset']}, {row['arch']}{latents}",
        )
    objective, dim, theta = row["objective"], int(row["dim"]), row["theta"]
    if categorical:
        classes = int(row["classes"])
        title = f"variance at π={theta}: toy {objective}, {_categorical(dim, classes)}"
        return f"variance-toy-categorical-{objective}-n{dim}-c{classes}-{theta}", title
    target = float(row.get("target", DEFAULT_TARGET))
    suffix = "" if math.isclose(target, DEFAULT_TARGET) else f"-t{target:g}"
    title = f"variance at θ={theta}: toy {objective}, D={dim}" + (suffix and f", t={target:g}")
    return f"variance-toy-{objective}-d{dim}{suffix}-theta{theta}", title


def _categorical(variables: int, classes: int) -> str:
    """``20×10 categorical``: N variables of C classes, for titles."""
    return f"{variables}×{classes} categorical"


def _deduplicate(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """One run per (source, group, estimator, seed): the newest; a repeated seed is not a new sample."""
    if runs.empty:
        return runs, []
    keys = ["source", "group", "estimator", "seed"]
    runs = runs.sort_values("started", kind="stable")
    repeated = runs[runs.duplicated(keys, keep="last")]
    warnings = [
        f"{row.group} {row.estimator} seed {row.seed}{' (baseline)' if row.source == BASELINE else ''}: "
        f"several runs, using the newest (ignoring {row.run_id})"
        for row in repeated.itertuples()
    ]
    return runs.drop_duplicates(keys, keep="last").reset_index(drop=True), warnings


def _mixed_settings(runs: pd.DataFrame) -> list[str]:
    """Warn where runs averaged together were made with different settings (lr, steps, …)."""
    warnings = []
    for (source, group, estimator), rows in runs.groupby(["source", "group", "estimator"], sort=True):
        if rows["fingerprint"].nunique() > 1:
            settings = [json.loads(text) for text in rows["fingerprint"].unique()]
            keys = sorted(
                {key for s in settings for key in s if len({json.dumps(x.get(key)) for x in settings}) > 1}
            )
            where = f"{group} {estimator}" + (" (baseline)" if source == BASELINE else "")
            warnings.append(f"{where}: seeds averaged together differ in {', '.join(keys)}")
    return warnings


# ---------------------------------------------------------------------------------------------
# Aggregation: the data behind each figure.


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


def _per_run_mean(results: Results, column: str) -> pd.DataFrame:
    trace = results.trace
    if trace.empty or column not in trace:
        return pd.DataFrame(columns=["source", "run_id", "value"])
    rows = trace[["source", "run_id", column]].dropna(subset=[column])
    return rows.groupby(["source", "run_id"], sort=False)[column].mean().rename("value").reset_index()


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


def time_frame(results: Results) -> pd.DataFrame:
    """Seconds per step per (source, group, estimator): mean over seeds of each run's mean."""
    frame = _over_seeds(results, _per_run_mean(results, "sec_per_step"), "sec_per_step")
    frame = frame.merge(results.runs[["source", "group", "title"]].drop_duplicates(), on=["source", "group"])
    frame = frame.merge(_series_info(results.runs), on=["source", "group", "estimator"])
    frame = frame.rename(
        columns={"sec_per_step_mean": "mean", "sec_per_step_se": "se", "sec_per_step_n": "n"}
    )
    return frame[frame["n"] > 0].reset_index(drop=True)


def variance_frame(results: Results) -> pd.DataFrame:
    """Variance studies aggregated over seeds, per (source, group, estimator, K).

    Columns: ``variance``, ``variance_ratio`` (to rloo at the same K) and ``cost_variance``
    (variance × evals), each with ``_mean`` and ``_se``; ``n`` studies; ``evals``.
    """
    table = results.variance
    columns = ["source", "group", "title", "estimator", "k", "evals", "n"]
    for name in ("variance", "variance_ratio", "cost_variance"):
        columns += [f"{name}_mean", f"{name}_se"]
    if table.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    keys = ["source", "group", "title", "estimator", "k"]
    for key, frame in table.groupby(keys, sort=True):
        row = dict(zip(keys, key, strict=True))
        row["evals"] = int(frame["evals"].iloc[0]) if "evals" in frame else int(row["k"])
        for name in ("variance", "variance_ratio", "cost_variance"):
            mean, se, _ = _mean_se(frame[name].astype(float))
            row |= {f"{name}_mean": mean, f"{name}_se": se}
        row["n"] = len(frame)
        rows.append(row)
    rows.sort(key=lambda r: (r["group"], r["source"] != RUNS, estimator_order(r["estimator"]), r["k"]))
    return pd.DataFrame(rows, columns=columns)


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
    # The variance column of each problem: resample where measured, else EMA.
    variance_parts = []
    for problem, names in VARIANCE_COLUMNS.items():
        for name in names:
            final = _over_seeds(results, _per_run_final(results, name), "grad_var")
            final = final[final["grad_var_n"] > 0].assign(grad_var_metric=name)
            in_problem = final["group"].isin(runs.loc[runs["problem"] == problem, "group"])
            variance_parts.append(final[in_problem])
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
    timing = timing.rename(columns={"mean": "sec_per_step_mean", "se": "sec_per_step_se"})
    frame = frame.merge(timing, on=keys, how="left")
    for column in SUMMARY_COLUMNS:
        if column not in frame:
            frame[column] = np.nan
    frame = frame[SUMMARY_COLUMNS]
    order = frame.apply(lambda r: (r["source"] != RUNS, r["group"], *estimator_order(r["estimator"])), axis=1)
    return frame.iloc[sorted(range(len(frame)), key=lambda i: order.iloc[i])].reset_index(drop=True)


def _pm(mean: float, se: float, digits: int) -> str:
    if mean is None or pd.isna(mean):
        return "–"
    text = f"{mean:.{digits}g}"
    return text if se is None or pd.isna(se) else f"{text} ± {se:.2g}"


def _pm_column(frame: pd.DataFrame, prefix: str, digits: int) -> list[str]:
    return [_pm(m, s, digits) for m, s in zip(frame[f"{prefix}_mean"], frame[f"{prefix}_se"], strict=True)]


def _estimator_labels(frame: pd.DataFrame) -> list[str]:
    return [
        name + (" (baseline)" if source == BASELINE else "")
        for name, source in zip(frame["estimator"], frame["source"], strict=True)
    ]


def summary_display(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary as text columns (mean ± s.e.), empty columns dropped: for terminal and Markdown."""
    if summary.empty:
        return pd.DataFrame()
    steps = zip(summary["last_step_min"], summary["last_step_max"], strict=True)
    out = pd.DataFrame(
        {
            "group": summary["group"],
            "estimator": _estimator_labels(summary),
            "seeds": summary["seeds"].astype(str),
            "status": summary["statuses"],
            "last step": [
                "–" if pd.isna(lo) else (f"{int(lo)}" if lo == hi else f"{int(lo)}–{int(hi)}")
                for lo, hi in steps
            ],
            "final E f": _pm_column(summary, "objective", 7),
            "train ELBO": _pm_column(summary, "train_elbo", 5),
            "test bound": _pm_column(summary, "test_bound", 5),
            "final grad var": _pm_column(summary, "grad_var", 3),
            "vs rloo": [_pm(v, None, 3) for v in summary["var_ratio_rloo"]],
            "s/step": _pm_column(summary, "sec_per_step", 2),
        }
    )
    keep = [c for c in out.columns if c in ("group", "estimator") or (out[c] != "–").any()]
    return out[keep]


def variance_display(variance: pd.DataFrame) -> pd.DataFrame:
    """Variance studies as text columns (one row per group, estimator, K)."""
    if variance.empty:
        return pd.DataFrame()
    return pd.DataFrame(
        {
            "study": variance["group"],
            "estimator": _estimator_labels(variance),
            "K": variance["k"].astype(str),
            "evals": variance["evals"].astype(str),
            "variance": _pm_column(variance, "variance", 3),
            "vs rloo": _pm_column(variance, "variance_ratio", 3),
            "variance×evals": _pm_column(variance, "cost_variance", 3),
        }
    )


def summary_tables(summary: pd.DataFrame, variance: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(title, text frame) per group of runs, then per variance study: what the terminal and
    ``summary.md`` show. Each table keeps only the columns its group has values for."""
    tables = []
    for group in dict.fromkeys(summary["group"]) if len(summary) else ():
        frame = summary_display(summary[summary["group"] == group]).drop(columns="group")
        tables.append((group, frame))
    for group in dict.fromkeys(variance["group"]) if len(variance) else ():
        frame = variance_display(variance[variance["group"] == group]).drop(columns="study")
        tables.append((group, frame))
    return tables


def summary_markdown(summary: pd.DataFrame, variance: pd.DataFrame) -> str:
    """``summary.md``: one Markdown table per group; values are mean ± s.e. over seeds."""
    text = "# dcvbench summary\n\n"
    text += "Final values are each run's last recorded value, then mean ± s.e. over seeds.\n"
    for title, frame in summary_tables(summary, variance):
        text += f"\n## {title}\n\n" + markdown_table(frame.reset_index(drop=True))
    return text


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of a text frame (no extra dependency such as tabulate)."""
    if frame.empty:
        return "(none)\n"
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(str(value).replace("|", "\\|") for value in row) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Drawing.


def _new_figure() -> tuple[Figure, Any]:
    fig = Figure(figsize=FIGSIZE, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _series_label(estimator: str, source: str, finished: bool, statuses: str, seeds: int) -> str:
    """``rloo-dcv (baseline) † (interrupted 1 of 2)``: unfinished runs are named in the legend."""
    label = estimator + (" (baseline)" if source == BASELINE else "")
    if not finished:
        unfinished = [part for part in statuses.split(", ") if not part.startswith("finished")]
        label += f" {NOT_FINISHED} ({', '.join(unfinished)} of {seeds})"
    return label


def _legend(fig: Figure, ax) -> None:
    """Inside the axes for a few series; below them, in two columns, for more (taller figure).

    At one paper column's width a legend of five or more entries covers the curves.
    """
    handles, labels = ax.get_legend_handles_labels()
    if len(labels) <= 4:
        ax.legend(frameon=False, loc="best", handlelength=2.0)
        return
    _legend_below(fig, handles, labels)


def _legend_below(fig: Figure, handles: list, labels: list[str]) -> None:
    columns = 2 if max(map(len, labels)) <= LEGEND_COLUMN_CHARS else 1  # two long labels overflow 3.5 in
    fig.set_figheight(FIGSIZE[1] + LEGEND_ROW_INCHES * math.ceil(len(labels) / columns))
    fig.legend(handles, labels, loc="outside lower center", ncols=columns, frameon=False, handlelength=2.0)


def draw_curves(curves: pd.DataFrame, metric: Metric, title: str) -> Figure:
    """One panel: a line per (source, estimator), the s.e. band shaded, baselines dashed."""
    fig, ax = _new_figure()
    main = curves[curves["source"] == RUNS]
    for (source, estimator), series in sorted(
        curves.groupby(["source", "estimator"], sort=False),
        key=lambda item: (item[0][0] != RUNS, estimator_order(item[0][1])),
    ):
        series = series.sort_values("step")
        color = estimator_color(estimator)
        step, mean, se = (
            series["step"].to_numpy(),
            series["mean"].to_numpy(float),
            series["se"].to_numpy(float),
        )
        if metric.log:
            keep = mean > 0  # a log axis cannot show non-positive means
            step, mean, se = step[keep], mean[keep], se[keep]
        first = series.iloc[0]
        ax.plot(
            step,
            mean,
            color=color,
            linestyle="--" if source == BASELINE else "-",
            marker="o" if len(step) < MARKERS_BELOW else None,
            markersize=2.5,
            label=_series_label(
                estimator, source, bool(first["finished"]), first["statuses"], int(first["seeds"])
            ),
        )
        if np.isfinite(se).any():
            low, high = mean - se, mean + se
            if metric.log:
                low = np.maximum(low, mean / 100)  # keep the band on a log axis: clip at mean/100
            ax.fill_between(
                step, low, high, color=color, alpha=BAND_ALPHA / (2 if source == BASELINE else 1), lw=0
            )
    if metric.log:
        ax.set_yscale("log")
    elif metric.zoom:
        _zoom_past_start(ax, curves)
    ax.set_xlabel("step")
    ax.set_ylabel(metric.label)
    seeds = _seeds_phrase(main.drop_duplicates("estimator")["seeds"]) if len(main) else ""
    ax.set_title(f"{title}\n{seeds}" if seeds else title)
    _legend(fig, ax)
    return fig


def _zoom_past_start(ax, curves: pd.DataFrame) -> None:
    """Fit the y axis to the curves after the first tenth of the steps.

    Training curves (ELBO, bounds) move by hundreds of nats in the first steps and by a fraction of
    a nat between estimators at the end; scaling to the start would flatten the comparison.
    """
    steps = curves["step"]
    if steps.nunique() < 5:
        return
    later = curves[steps >= steps.min() + 0.1 * (steps.max() - steps.min())]
    low = (later["mean"] - later["se"].fillna(0.0)).min()
    high = (later["mean"] + later["se"].fillna(0.0)).max()
    if np.isfinite([low, high]).all() and high > low:
        pad = 0.05 * (high - low)
        ax.set_ylim(low - pad, high + pad)


def draw_time(timing: pd.DataFrame, title: str) -> Figure:
    """Bars of mean seconds per step per estimator; baseline bars hatched beside them."""
    fig, ax = _new_figure()
    estimators = sorted(timing["estimator"].unique(), key=estimator_order)
    has_baseline = (timing["source"] == BASELINE).any()
    width = 0.4 if has_baseline else 0.7
    for i, estimator in enumerate(estimators):
        for source, offset in ((RUNS, 0.0), (BASELINE, width)):
            row = timing[(timing["estimator"] == estimator) & (timing["source"] == source)]
            if row.empty:
                continue
            row = row.iloc[0]
            x = i + offset - (width / 2 if has_baseline else 0.0)
            baseline = source == BASELINE
            ax.bar(
                x,
                row["mean"],
                width=width,
                yerr=None if pd.isna(row["se"]) else row["se"],
                color="none" if baseline else estimator_color(estimator),
                edgecolor=estimator_color(estimator),
                linestyle="--" if baseline else "-",
                hatch="///" if baseline else None,
                capsize=2,
                error_kw={"elinewidth": 0.8},
                label="baseline (hatched)" if baseline and i == 0 else None,
            )
    labels = []
    for estimator in estimators:
        rows = timing[(timing["estimator"] == estimator) & (timing["source"] == RUNS)]
        finished = rows["finished"].all() if len(rows) else True
        labels.append(estimator + ("" if finished else f" {NOT_FINISHED}"))
    ax.set_xticks(range(len(estimators)), labels, rotation=30, ha="right")
    ax.set_ylabel("seconds per step")
    main = timing[timing["source"] == RUNS]
    seeds = _seeds_phrase(main["seeds"]) if len(main) else ""
    ax.set_title(f"{title}: wall time per step\n{seeds}" if seeds else f"{title}: wall time per step")
    if has_baseline:
        ax.legend(frameon=False, loc="best")
    return fig


def _k_positions(ks: Sequence[int], estimators: Sequence[str], width: float = 0.8):
    """x of each (K, estimator): K at integer positions, estimators spread within ``width``."""
    step = width / max(len(estimators), 1)
    return {
        (k, name): i + (j - (len(estimators) - 1) / 2) * step
        for i, k in enumerate(ks)
        for j, name in enumerate(estimators)
    }


def draw_variance_ratio(variance: pd.DataFrame, title: str) -> Figure:
    """Dots of variance relative to rloo per estimator and K (log y), rloo's level dashed at 1."""
    fig, ax = _new_figure()
    ks = sorted(variance["k"].unique())
    estimators = sorted(variance["estimator"].unique(), key=estimator_order)
    positions = _k_positions(ks, estimators)
    for (source, estimator), rows in variance.groupby(["source", "estimator"], sort=False):
        rows = rows.dropna(subset=["variance_ratio_mean"])
        rows = rows[rows["variance_ratio_mean"] > 0]
        if rows.empty:
            continue
        baseline = source == BASELINE
        ax.errorbar(
            [positions[(k, estimator)] + (0.05 if baseline else 0.0) for k in rows["k"]],
            rows["variance_ratio_mean"],
            yerr=rows["variance_ratio_se"].fillna(0.0).to_numpy(),
            fmt="o",
            color=estimator_color(estimator),
            markerfacecolor="none" if baseline else estimator_color(estimator),
            markersize=4,
            capsize=2,
            linestyle="none",
            label=estimator + (" (baseline)" if baseline else ""),
        )
    ax.axhline(1.0, color="0.5", linestyle=":", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(ks)), [f"K={k}" for k in ks])
    ax.set_ylabel(f"variance / variance of {REFERENCE_ESTIMATOR}")
    n = variance.loc[variance["source"] == RUNS, "n"]
    seeds = "" if n.empty or n.max() <= 1 else f"\nmean ± s.e. over {int(n.max())} studies"
    ax.set_title(f"{title}{seeds}")
    _ordered_legend(ax)
    return fig


def draw_cost_variance(variance: pd.DataFrame, title: str) -> Figure:
    """Variance × evaluations of f against K, per estimator (log y, log₂ x)."""
    fig, ax = _new_figure()
    for (source, estimator), rows in variance.groupby(["source", "estimator"], sort=False):
        rows = rows.sort_values("k")
        rows = rows[rows["cost_variance_mean"] > 0]
        if rows.empty:
            continue
        baseline = source == BASELINE
        ax.errorbar(
            rows["k"],
            rows["cost_variance_mean"],
            yerr=rows["cost_variance_se"].fillna(0.0).to_numpy(),
            color=estimator_color(estimator),
            linestyle="--" if baseline else "-",
            marker="o",
            markerfacecolor="none" if baseline else estimator_color(estimator),
            markersize=3,
            capsize=2,
            label=estimator + (" (baseline)" if baseline else ""),
        )
    ks = sorted(variance["k"].unique())
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.minorticks_off()
    ax.set_yscale("log")
    ax.set_xlabel("K (samples per estimate)")
    ax.set_ylabel("variance × evaluations of f")
    ax.set_title(f"{title}\ncost-normalised variance")
    _ordered_legend(ax)
    return fig


def _ordered_legend(ax) -> None:
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: ("(baseline)" in labels[i], estimator_order(labels[i])))
    handles, labels = [handles[i] for i in order], [labels[i] for i in order]
    if len(labels) <= 6:  # dots and short lines leave room for a few more entries inside
        ax.legend(handles, labels, frameon=False, loc="best")
        return
    _legend_below(ax.get_figure(), handles, labels)


# ---------------------------------------------------------------------------------------------
# The whole job.


def plot_results(
    root: Path | str,
    out_dir: Path | str | None = None,
    fmt: str = "png",
    baseline: Path | str | None = None,
) -> PlotReport:
    """Read every run below ``root``, draw every figure its data allows, write the summary.

    Figures go to ``out_dir`` (default ``root/plots``), named ``<group>-<metric>.<fmt>``;
    ``summary.md`` and ``summary.csv`` (and ``variance-summary.csv`` for variance studies) beside
    them. Runs under ``baseline`` are drawn dashed in the same colours, labelled "(baseline)", in
    the groups that ``root`` has. Nothing is written if ``root`` holds no readable run.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    root = Path(root)
    results = load_results(root, RUNS)
    if baseline is not None:
        results = combine(results, load_results(baseline, BASELINE))
    out = Path(out_dir) if out_dir is not None else root / "plots"
    _check_output(out, results)
    summary = summary_frame(results)
    variance = variance_frame(results)
    out.mkdir(parents=True, exist_ok=True)
    figures: list[Path] = []
    with matplotlib.rc_context(STYLE):
        figures += _draw_training(results, out, fmt)
        figures += _draw_variance(variance, out, fmt)
    summary.to_csv(out / "summary.csv", index=False)
    if len(variance):
        variance.to_csv(out / "variance-summary.csv", index=False)
    (out / "summary.md").write_text(summary_markdown(summary, variance))
    return PlotReport(out, figures, summary, variance, results.skipped, results.warnings)


def combine(results: Results, reference: Results) -> Results:
    """Main runs plus baseline runs, keeping only baseline groups that the main runs have."""
    groups = set(results.runs["group"]) | (set(results.variance["group"]) if len(results.variance) else set())
    studies = set(reference.variance["group"]) if len(reference.variance) else set()
    extra = sorted((set(reference.runs["group"]) | studies) - groups)
    warnings = [*results.warnings, *reference.warnings]
    warnings += [f"baseline group {group} has no runs to compare with; not drawn" for group in extra]
    runs = reference.runs[reference.runs["group"].isin(groups)]
    trace = (
        reference.trace[reference.trace["run_id"].isin(runs["run_id"])]
        if len(reference.trace)
        else reference.trace
    )
    variance = reference.variance
    if len(variance):
        variance = variance[variance["group"].isin(groups)]
    return Results(
        runs=pd.concat([results.runs, runs], ignore_index=True),
        trace=pd.concat([results.trace, trace], ignore_index=True),
        variance=pd.concat([results.variance, variance], ignore_index=True),
        skipped=[*results.skipped, *reference.skipped],
        warnings=warnings,
    )


def _check_output(out: Path, results: Results) -> None:
    """Refuse an output directory inside a run directory: figures must never mix with inputs."""
    resolved = out.resolve()
    studies = results.variance["path"].tolist() if "path" in results.variance else []
    for path in [*results.runs["path"].tolist(), *studies]:
        run = Path(path).resolve()
        if resolved == run or run in resolved.parents:
            raise ConfigError(f"--out {out} is inside the run directory {path}; choose another directory")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a directory; choose a directory")


def _save(fig: Figure, path: Path, figures: list[Path]) -> None:
    fig.savefig(path)
    figures.append(path)


def _draw_training(results: Results, out: Path, fmt: str) -> list[Path]:
    figures: list[Path] = []
    runs = results.runs
    if runs.empty:
        return figures
    main_groups = runs.loc[runs["source"] == RUNS, ["group", "title", "problem"]].drop_duplicates("group")
    curves = {m.column: curve_frame(results, m.column) for ms in METRICS.values() for m in ms}
    timing = time_frame(results)
    for row in main_groups.sort_values("group").itertuples():
        for metric in METRICS[row.problem]:
            frame = curves[metric.column]
            frame = frame[frame["group"] == row.group]
            if not (frame["source"] == RUNS).any():
                continue  # only figures for which these runs hold data
            fig = draw_curves(frame, metric, row.title)
            _save(fig, out / f"{row.group}-{metric.column}.{fmt}", figures)
        frame = timing[timing["group"] == row.group]
        if (frame["source"] == RUNS).any():
            _save(draw_time(frame, row.title), out / f"{row.group}-sec_per_step.{fmt}", figures)
    return figures


def _draw_variance(variance: pd.DataFrame, out: Path, fmt: str) -> list[Path]:
    figures: list[Path] = []
    if variance.empty:
        return figures
    for group, frame in variance.groupby("group", sort=True):
        if not (frame["source"] == RUNS).any():
            continue
        title = frame["title"].iloc[0]
        if frame["variance_ratio_mean"].notna().any():
            _save(draw_variance_ratio(frame, title), out / f"{group}-ratio.{fmt}", figures)
        _save(draw_cost_variance(frame, title), out / f"{group}-cost.{fmt}", figures)
    return figures
