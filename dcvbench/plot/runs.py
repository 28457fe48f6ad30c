"""Reading runs: every manifest and trace below a directory, as frames, grouped into panel groups.

Runs are grouped into *panel groups* — problem, latent type, toy objective and dimension or VAE data
set and architecture, and K — named by a file stem such as ``toy-separable-d200-k2`` or
``vae-mnist-subset-linear-k2``; settings that differ from the defaults of
:mod:`dcvbench.config` are appended (``-t0.3``, ``-disarm`` for the DisARM protocol, ``-l64`` for 64
latent bits, ``-intensities`` for a VAE trained on grey levels). Categorical runs are never averaged
with binary ones: their groups say so and name their sizes (``toy-categorical-separable-n50-c4-k2``,
``vae-categorical-mnist-subset-linear-n20-c10-k2``).
Runs written before categorical latents existed are binary. Runs of one group, estimator and
configuration (:func:`~dcvbench.results.config_key`) are the seeds of one series.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from dcvbench.config import LATENT_BITS, ToyProblem, VaeConfig, check_run_fields, normalised_config
from dcvbench.estimators import EstimatorError, estimator_info, start_temperature
from dcvbench.plot.optimum import toy_optimum
from dcvbench.results import (
    INVOCATION_FIELDS,
    MANIFEST,
    ResultsError,
    config_key,
    find_runs,
    read_manifest,
    read_table,
    read_trace,
    run_status,
)
from dcvbench.runtime import ConfigError

RUNS, BASELINE = "runs", "baseline"  # values of the ``source`` column
VARIANCE_TABLE = "variance.parquet"
TRAINING_JOBS = ("toy", "vae", "predict", "train")
# The Concrete paper's names of the two one-layer architectures: one model, one group, whichever name.
VAE_ARCH_ALIASES = {
    "200H-784V": "linear",
    "200H~784V": "nonlinear",
}  # jobs that write a trace (a variance study writes a table)

# Columns of Results.runs: one row per training run.
# fmt: off
RUN_COLUMNS = [
    "source", "run_id", "path", "job", "problem", "group", "title", "estimator", "k", "seed", "status",
    "last_step", "started", "fingerprint", "base_estimator", "temperature", "annealed", "optimum",
]
# fmt: on
# Config fields that may differ between runs averaged together: beside how they were invoked, where
# they ran and read their data.
FINGERPRINT_IGNORES = (*INVOCATION_FIELDS, "device", "data_dir")
# The columns that say where a variance study measured, per problem.
STUDY_POINT = {
    "toy": ("objective", "dim", "theta"),
    "vae": ("dataset", "arch", "checkpoint_step"),
    "user": ("objective", "dim"),
}


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
    estimator, k, seed, status, last_step, started, fingerprint``, …, ``optimum``: a toy's best
    achievable ``E_q[f]`` where known, :func:`~dcvbench.plot.optimum.toy_optimum`). ``trace``: the
    trace rows of those runs with ``source`` added. ``variance``: the rows of every
    ``variance.parquet`` with ``source``, ``group`` and ``title`` added.
    """

    runs: pd.DataFrame
    trace: pd.DataFrame
    variance: pd.DataFrame
    skipped: list[Skipped] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


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
        if job not in TRAINING_JOBS:
            skipped.append(Skipped(path, f"unknown job {job!r} in {MANIFEST}"))
            continue
        try:
            check_run_fields(manifest)
            record = _run_record(path, manifest, source)
        except ConfigError as error:
            skipped.append(Skipped(path / MANIFEST, f"manifest: {error}"))
            continue
        except KeyError as error:
            skipped.append(Skipped(path / MANIFEST, f"manifest lacks {error.args[0]!r}"))
            continue
        except (TypeError, ValueError) as error:  # a config's value of the wrong type
            skipped.append(Skipped(path / MANIFEST, f"manifest holds a value of the wrong type ({error})"))
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
            suffix = "" if math.isclose(target, ToyProblem.target) else f"-t{target:g}"
            group = f"toy-{objective}-d{dim}{suffix}-k{k}"
            title = f"toy {objective}, D={dim}{'' if not suffix else f', t={target:g}'}, K={k}"
    elif job == "train":  # the user's own model (dcvbench train --objective): its name is its problem
        group = f"train-{manifest['problem']}-k{k}"
        title = f"your model {manifest['problem']}, K={k}"
    elif job == "predict":
        dataset, arch = manifest["dataset"], manifest["arch"]
        bound = "" if config.get("objective") is None else f"-{config['objective']}"
        group = f"predict-{dataset}-{arch}{bound}-k{k}"
        title = f"structured prediction {dataset}, {arch}{_bound_title(config)}, K={k}"
    else:
        dataset, arch = manifest["dataset"], VAE_ARCH_ALIASES.get(manifest["arch"], manifest["arch"])
        protocol = config.get("protocol", VaeConfig.protocol)
        suffix = "" if protocol == VaeConfig.protocol else f"-{protocol}"
        extra = "" if protocol == VaeConfig.protocol else f", {protocol} protocol"
        suffix += "" if config.get("objective") is None else f"-{config['objective']}"
        extra += _bound_title(config)
        # Bounds on grey levels are not comparable with binarised ones: never one group.
        targets = config.get("targets", VaeConfig.targets)
        suffix += "" if targets == VaeConfig.targets else f"-{targets}"
        extra += "" if targets == VaeConfig.targets else f", {targets}"
        # At equal cost (--budget) each estimator trains at its own K: the runs of one budget are one group.
        budget = config.get("budget")
        size, size_title = (f"budget{budget}", f"budget {budget}") if budget else (f"k{k}", f"K={k}")
        if config.get("latent") == "categorical":
            variables, classes = int(config["latent_vars"]), int(config["classes"])
            group = f"vae-categorical-{dataset}-{arch}{suffix}-n{variables}-c{classes}-{size}"
            title = f"VAE {dataset}, {arch}{extra}, {_categorical(variables, classes)}, {size_title}"
        else:
            # Written before categorical latents, "latent" was the number of bits.
            bits = int(config.get("latent_vars", config.get("latent", LATENT_BITS)))
            suffix += "" if bits == LATENT_BITS else f"-l{bits}"
            extra += "" if bits == LATENT_BITS else f", {bits} latents"
            group = f"vae-{dataset}-{arch}{suffix}-{size}"
            title = f"VAE {dataset}, {arch}{extra}, {size_title}"
    return {
        "source": source,
        "run_id": manifest["run_id"],
        "path": str(path),
        "job": job,
        "problem": job,
        "group": group,
        "title": title,
        "estimator": series_label(manifest["estimator"], config),
        "k": k,
        "seed": int(manifest["seed"]),
        "status": run_status(manifest) or "unknown",  # "stale": running, its process gone
        "last_step": manifest.get("last_step"),
        "started": manifest.get("started") or "",
        "fingerprint": _fingerprint(job, config),
        "base_estimator": manifest["estimator"],
        **_temperature(manifest["estimator"], config),
        "optimum": toy_optimum(config) if job == "toy" else None,
    }


def series_label(estimator: str, config: dict[str, Any]) -> str:
    """The name a run's series is drawn under: the estimator's, with its temperature when that is
    not the default (``concrete λ=0.1``, ``concrete λ=2→0.5 exp``; with a non-default annealing
    rate, KL or prior temperature, those too), so that a temperature study's runs are series of
    their own, not seeds of one."""
    if not _has_temperature(estimator, config):
        return estimator
    settings = config.get("estimator_settings") or {}
    temperature = start_temperature(estimator, settings)  # as given, else the estimator's own default
    anneal = config.get("anneal", "none")
    # The other settings of the relaxation that a study may vary, each named when not the default.
    extras = []
    rate = config.get("anneal_rate", VaeConfig.anneal_rate)
    if anneal != "none" and not math.isclose(rate, VaeConfig.anneal_rate):
        extras.append(f"rate {rate:.3g}")
    if config.get("kl", "relaxed") != "relaxed":
        extras.append(f"{config['kl']} KL")
    prior = config.get("prior_temperature")
    if prior is not None and not math.isclose(prior, VaeConfig.prior_temperature):
        extras.append(f"prior λ={prior:.3g}")
    if math.isclose(temperature, start_temperature(estimator, {})) and anneal == "none" and not extras:
        return estimator
    label = f"{estimator} λ={temperature:.3g}"
    if anneal != "none":
        label += f"→{config['anneal_floor']:.3g} {anneal}"
    return label + "".join(f", {extra}" for extra in extras)


def _temperature(estimator: str, config: dict[str, Any]) -> dict[str, Any]:
    """A relaxed run's temperature λ (the floor it anneals to, when annealed) and whether it
    annealed: what the temperature study compares. ``None`` for an estimator that does not relax."""
    if not _has_temperature(estimator, config):
        return {"temperature": None, "annealed": None}
    annealed = config.get("anneal", "none") != "none"
    settings = config.get("estimator_settings") or {}
    temperature = config["anneal_floor"] if annealed else start_temperature(estimator, settings)
    return {"temperature": float(temperature), "annealed": annealed}


def _has_temperature(estimator: str, config: dict[str, Any]) -> bool:
    """Whether a run's estimator relaxes (has a temperature); not for one this version does not know."""
    try:
        return estimator_info(estimator, config.get("latent", "binary")).relaxation is not None
    except EstimatorError:
        return False


def _bound_title(config: dict[str, Any]) -> str:
    """What a group's estimators train, when it was chosen: ``, m = K bound``."""
    return {None: "", "elbo": ", ELBO", "iwae": ", K-sample bound"}[config.get("objective")]


def _fingerprint(job: str, config: dict[str, Any]) -> str:
    """What seeds of one series share: the configuration as this version saves it (as ``sweep``
    compares it), or as written when this version cannot read it (a newer dcvbench's run)."""
    with contextlib.suppress(ConfigError):
        config = normalised_config(job, config)
    return config_key(config, FINGERPRINT_IGNORES)


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
    labels = [_equal_cost(row, *_study_label(problem, row)) for row in table.to_dict("records")]
    return table.assign(
        group=[group for group, _ in labels],
        title=[title for _, title in labels],
        status=run_status(manifest) or "unknown",
        path=str(path),
    )


def _study_label(problem: str, row: dict[str, Any]) -> tuple[str, str]:
    """File stem and title of the study a row of ``variance.parquet`` belongs to.

    Tables written before categorical latents have no ``latent`` column: they are binary.
    """
    categorical = row.get("latent") == "categorical"
    if problem == "user":  # the user's own objective (dcvbench.compare, variance --objective)
        objective, dim = str(row["objective"]), int(row["dim"])
        stem = re.sub(r"[^A-Za-z0-9]+", "-", objective).strip("-")
        latents = _categorical(dim, int(row["classes"])) if categorical else f"D={dim}"
        return f"variance-user-{stem}", f"variance of {objective}: {latents}"
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
    target = float(row.get("target", ToyProblem.target))
    suffix = "" if math.isclose(target, ToyProblem.target) else f"-t{target:g}"
    title = f"variance at θ={theta}: toy {objective}, D={dim}" + (suffix and f", t={target:g}")
    return f"variance-toy-{objective}-d{dim}{suffix}-theta{theta}", title


def _equal_cost(row: dict[str, Any], group: str, title: str) -> tuple[str, str]:
    """A study at equal cost (``--budget``: each estimator at its own K) is a group of its own: its
    ratios are to rloo at the same budget, not at the same K. Tables written before have no budget."""
    if pd.isna(row.get("budget")):
        return group, title
    return f"{group}-budgets", f"{title}, equal cost"


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
