"""The gradient-quality tables of README.md, from the variance studies under ``runs/``.

    python baselines/gradient-quality/tables.py

One table per study (the categorical and binary toys, the enumerable categorical and binary VAEs):
every estimator's variance, bias norm, MSE and cosine against the exact gradient, each ± its
standard error, at K = 2 and K = 8, in the registry's order.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from dcvbench.estimators import estimator_order
from dcvbench.results import find_runs, read_manifest, read_table

RUNS = Path(__file__).resolve().parent / "runs"


def title(manifest: dict) -> str:
    point = manifest["point"]
    if point["problem"] == "toy":
        latents = (
            f"{point['dim']} bits"
            if point["latent"] == "binary"
            else f"{point['dim']} × {point['classes']} classes"
        )
        return f"toy, {point['objective']}, {latents}, θ random"
    latents = (
        f"{point['latent_vars']} bits"
        if point["latent"] == "binary"
        else (f"{point['latent_vars']} variables × {point['classes']} classes")
    )
    return f"VAE checkpoint ({latents}, step {point['checkpoint_step']}), logit gradient"


def cell(value: float, se: float) -> str:
    return f"{value:.3g} ± {se:.2g}"


def main() -> None:
    for run in sorted(find_runs(RUNS), key=lambda path: str(path)):
        manifest = read_manifest(run)
        if manifest.get("job") != "variance":
            continue
        table = read_table(run / "variance.parquet")
        table = table.sort_values(
            ["k", "estimator"], key=lambda c: c.map(estimator_order) if c.name == "estimator" else c
        )
        variance = "variance" if manifest["point"]["problem"] == "toy" else "logit_variance"
        print(f"\n### {title(manifest)}\n")
        print("| estimator | K | f evals | variance | bias norm | MSE | cosine | s/estimate |")
        print("|---|---|---|---|---|---|---|---|")
        for row in table.itertuples(index=False):
            print(
                f"| {row.estimator} | {row.k} | {row.evals} | {getattr(row, variance):.3g} | "
                f"{cell(row.bias_norm, row.bias_norm_se)} | {cell(row.mse, row.mse_se)} | "
                f"{cell(row.cosine, row.cosine_se)} | {row.seconds_per_estimate:.2g} |"
            )


if __name__ == "__main__":
    pd.set_option("display.width", 200)
    main()
