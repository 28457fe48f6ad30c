"""The tables of README.md, from the runs under ``runs/``.

    python baselines/successors/tables.py

1. one equal-budget table per variance study (binary and categorical toys, the enumerable VAE
   checkpoints): every estimator's K at the budget, variance relative to ``rloo`` at the same budget,
   bias norm, MSE and cosine against the exact gradient (± standard error), and seconds per estimate;
2. the VAE training comparison (the RODEO figure): the encoder-gradient variance along training
   (resampled, and the running average), mean over seeds, and from which logged step on each
   ordering of the published one (``rodeo < rloo-dcv < disarm``) holds at every later step, per seed
   and for the mean; the final test bound, mean ± standard error over seeds.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pandas as pd

from dcvbench.estimators import estimator_order
from dcvbench.results import find_runs, read_manifest, read_table, read_trace

RUNS = Path(__file__).resolve().parent / "runs"
ORDERING = ("rodeo", "rloo-dcv", "disarm")  # the RODEO README's ordering, lowest variance first
VARIANCE_COLUMNS = ("grad_var_resample", "grad_var_ema")
SHOWN_EVERY = 1000  # rows of the printed variance tables; the onsets use every logged step


def title(manifest: dict) -> str:
    point = manifest["point"]
    if point["latent"] == "binary":
        latents = f"{point['dim' if point['problem'] == 'toy' else 'latent_vars']} bits"
    else:
        size = point["dim"] if point["problem"] == "toy" else point["latent_vars"]
        latents = f"{size} variables × {point['classes']} classes"
    if point["problem"] == "toy":
        return f"toy, {point['objective']}, {latents}, θ random"
    return f"VAE checkpoint ({latents}, rodeo, step {point['checkpoint_step']}), logit gradient"


def cell(value: float, se: float) -> str:
    return f"{value:.3g} ± {se:.2g}"


def variance_tables() -> None:
    for run in sorted(find_runs(RUNS / "toy") + find_runs(RUNS / "vae"), key=str):
        manifest = read_manifest(run)
        table = read_table(run / "variance.parquet")
        table = table.sort_values(
            ["budget", "estimator"], key=lambda c: c.map(estimator_order) if c.name == "estimator" else c
        )
        ratio = "variance_ratio" if manifest["point"]["problem"] == "toy" else "logit_variance_ratio"
        print(f"\n### {title(manifest)}\n")
        print(
            "| budget | estimator | K | f evals | variance ÷ rloo | bias norm | MSE | cosine | s/estimate |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for row in table.itertuples(index=False):
            print(
                f"| {row.budget} | {row.estimator} | {row.k} | {row.evals} | {getattr(row, ratio):.3g} | "
                f"{cell(row.bias_norm, row.bias_norm_se)} | {cell(row.mse, row.mse_se)} | "
                f"{cell(row.cosine, row.cosine_se)} | {row.seconds_per_estimate:.2g} |"
            )


def training_traces() -> pd.DataFrame:
    traces = [read_trace(run) for run in find_runs(RUNS / "training")]
    return pd.concat(traces, ignore_index=True)


def onset(means: pd.DataFrame, pairs: list[tuple[str, str]]) -> int | None:
    """The first step from which every ``(lower, higher)`` of ``pairs`` has ``lower``'s variance below
    ``higher``'s, at that step and every later one (``means``: one column per estimator, one row per
    step); ``None``: never."""
    holds = pd.Series(True, index=means.index)
    for lower, higher in pairs:
        holds &= means[lower] < means[higher]
    lasting = holds[::-1].cummin()[::-1]  # True where it holds from here on
    return int(lasting.idxmax()) if lasting.any() else None


def conditions(names: list[str]) -> list[tuple[str, list[tuple[str, str]]]]:
    """What the onsets are reported of: the published ordering, each of its pairs either way, and
    rodeo below every other estimator."""
    pairs = [*itertools.pairwise(ORDERING), (ORDERING[0], ORDERING[-1])]
    found = [(" < ".join(ORDERING), list(itertools.pairwise(ORDERING)))]
    found += [(f"{lower} < {higher}", [(lower, higher)]) for lower, higher in pairs]
    found += [(f"{higher} < {lower}", [(higher, lower)]) for lower, higher in pairs]
    return [*found, ("rodeo lowest", [("rodeo", name) for name in names if name != "rodeo"])]


def training_tables() -> None:
    trace = training_traces()
    names = sorted(trace["estimator"].unique(), key=estimator_order)
    seeds = sorted(trace["seed"].unique())
    for column in VARIANCE_COLUMNS:
        rows = trace.dropna(subset=[column])
        means = rows.pivot_table(index="step", columns="estimator", values=column, aggfunc="mean")[names]
        print(f"\n### {column}, mean over {len(seeds)} seeds (every {SHOWN_EVERY} steps)\n")
        print("| step | " + " | ".join(names) + " | order |")
        print("|---|" + "---|" * (len(names) + 1))
        for step, row in means.iterrows():
            if step % SHOWN_EVERY == 0:
                order = " < ".join(sorted(names, key=lambda name: row[name]))
                print(f"| {step} | " + " | ".join(f"{row[name]:.3g}" for name in names) + f" | {order} |")
        per_seed = rows.pivot_table(index=["seed", "step"], columns="estimator", values=column)
        seed_columns = " | ".join(f"seed {seed}" for seed in seeds)
        print(f"\n| holds from this step on | {seed_columns} | mean over seeds |")
        print("|---|" + "---|" * (len(seeds) + 1))
        for label, pairs in conditions(names):
            onsets = [onset(per_seed.loc[seed], pairs) for seed in seeds] + [onset(means, pairs)]
            print(
                f"| {label} | " + " | ".join("never" if step is None else str(step) for step in onsets) + " |"
            )
    final = trace.dropna(subset=["test_bound"]).sort_values("step").groupby(["estimator", "seed"]).last()
    print(
        f"\n| estimator | test bound at step {int(final['step'].max())} (mean ± s.e., {len(seeds)} seeds) |"
    )
    print("|---|---|")
    for name in names:
        bounds = final.loc[name, "test_bound"]
        se = bounds.std(ddof=1) / math.sqrt(len(bounds)) if len(bounds) > 1 else float("nan")
        print(f"| {name} | {bounds.mean():.2f} ± {se:.2f} |")


if __name__ == "__main__":
    variance_tables()
    training_tables()
