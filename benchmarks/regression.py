"""Same seed → same numbers: every estimator's traces against ones recorded at a reference commit.

    python benchmarks/regression.py check            # compare with benchmarks/regression/reference.parquet
    python benchmarks/regression.py record           # (re)record the reference from this tree

Runs, through the command line (what users run), with one torch thread and fixed seeds:

- ``toy`` with every toy estimator, binary (quadratic-form, D = 12, K = 4) and categorical
  (quadratic-form, N = 6, C = 3, K = 4): objective, variance and bias rows;
- a short ``vae`` (nonlinear, 8 latents, batch 16, 6 steps, K = 2) with every VAE estimator, binary
  and categorical (N = 4, C = 3): training ELBO, bounds, EMA and resample variance, α, temperature;
- a ``variance`` study of every toy estimator at random θ at K = 2 and 4, binary and categorical,
  and one at the binary VAE's checkpoint with every VAE estimator.

Rows are keyed by (case, estimator, k, step); timing columns (``wall_s``, ``sec_per_step``,
``seconds_per_estimate``) and run ids are left out. A column that a newer tree adds, or a value where
the reference recorded none, is new information and is ignored; a reference column or row that is
missing, or a recorded value that differs or is gone, is reported. Equality is exact, except for the
rows in :data:`ROUNDING` (one, justified there). ``check`` exits 1 on
any difference and prints, per column, how many values differ and by how much (relative).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REFERENCE = Path(__file__).resolve().parent / "regression" / "reference.parquet"
KEY = ["case", "estimator", "k", "step"]
# Rows allowed to differ by rounding, with the relative tolerance: the categorical VAE's relaxed ELBO
# takes its ExpConcrete density from torch.distributions since the rebuild (issue #13). It is the same
# function (float64 agreement to 4e-15, tests/latent/test_family.py) computed in another order: torch
# normalises the logits first. In float32 that moves a density by a few units in the last place
# (u = 2⁻²⁴), and six training steps carry it into the trace: the largest relative difference seen is
# 2.3e-7 ≈ 4u. The tolerance is 32u, eight times that; every other row must be bit-identical.
ROUNDING = {("vae-categorical", "concrete"): 32 * 2.0**-24}
IGNORED = {"run_id", "wall_s", "sec_per_step", "seconds_per_estimate", "checkpoint_run"}

TOY_BINARY = [
    "reinforce", "reinforce-ema", "rloo", "rloo-dcv", "muprop", "exact-baseline", "arm", "disarm",
    "arms", "concrete", "st-concrete", "relax", "rebar", "nvil",
]  # fmt: skip
VAE_BINARY = [e for e in TOY_BINARY if e != "exact-baseline"] + ["vimco"]
TOY_CATEGORICAL = ["reinforce", "rloo", "rloo-dcv", "exact-baseline", "concrete", "st-concrete"]
VAE_CATEGORICAL = [e for e in TOY_CATEGORICAL if e != "exact-baseline"]

COMMON = ["--seed", "3", "--device", "cpu", "--quiet"]
TOY = ["toy", "--objective", "quadratic-form", "--steps", "30", "--log-every", "10", "--var-every", "15"]
TOY += ["--var-samples", "64", "--k", "4", "--checkpoint-every", "30"]
VAE = ["vae", "--arch", "nonlinear", "--batch-size", "16", "--steps", "6", "--k", "2"]
VAE += ["--log-every", "2", "--eval-every", "6", "--eval-samples", "3", "--var-every", "3"]
VAE += ["--var-samples", "4", "--checkpoint-every", "6"]
VARIANCE = ["variance", "--theta", "random", "--k", "2", "--k", "4", "--samples", "200"]


def _estimators(names: list[str]) -> list[str]:
    return [arg for name in names for arg in ("--estimator", name)]


def cases() -> dict[str, list[str]]:
    """Every case's command line (without ``--out``)."""
    return {
        "toy-binary": [*TOY, "--dim", "12", *_estimators(TOY_BINARY), *COMMON],
        "toy-categorical": [
            *TOY, "--latent", "categorical", "--dim", "6", "--classes", "3",
            *_estimators(TOY_CATEGORICAL), *COMMON,
        ],
        "vae-binary": [*VAE, "--latent-vars", "8", *_estimators(VAE_BINARY), *COMMON],
        "vae-categorical": [
            *VAE, "--latent", "categorical", "--latent-vars", "4", "--classes", "3",
            *_estimators(VAE_CATEGORICAL), *COMMON,
        ],
        "variance-binary": [*VARIANCE, "--dim", "10", *_estimators(TOY_BINARY), *COMMON],
        "variance-categorical": [
            *VARIANCE, "--latent", "categorical", "--dim", "5", "--classes", "3",
            "--objective", "quadratic-form", *_estimators(TOY_CATEGORICAL), *COMMON,
        ],
    }  # fmt: skip


def _run(argv: list[str]) -> None:
    from dcvbench.cli import main

    code = main(argv)
    if code != 0:
        raise SystemExit(f"dcvbench {' '.join(argv)} exited {code}")


def _traces(out: Path, case: str) -> list[pd.DataFrame]:
    frames = []
    for manifest_path in sorted(out.glob("*/run.json")):
        run_dir = manifest_path.parent
        manifest = json.loads(manifest_path.read_text())
        if (run_dir / "variance.parquet").exists():
            frame = pd.read_parquet(run_dir / "variance.parquet")
            # The study's own columns, apart from the traces' (its `objective` is a name, not a value).
            frame = frame.rename(columns=lambda c: c if c in KEY or c in IGNORED else f"study.{c}")
            frame["step"] = 0
        else:
            frame = pd.read_parquet(run_dir / "trace")
            frame["estimator"], frame["k"] = manifest["estimator"], manifest["k"]
        frame["case"] = case
        frames.append(frame)
    return frames


def measure(workdir: Path) -> pd.DataFrame:
    """Run every case under ``workdir`` and return their rows, keyed by :data:`KEY`."""
    torch.set_num_threads(1)  # thread count can change the order of float reductions
    frames = []
    for case, argv in cases().items():
        out = workdir / case
        _run([*argv, "--out", str(out)])
        frames += _traces(out, case)
        if case == "vae-binary":  # a variance study at that run's checkpoint
            checkpoint = next(p.parent for p in out.glob("*/run.json") if "rloo-dcv" in p.parent.name)
            study = workdir / "variance-checkpoint"
            _run(["variance", "--checkpoint", str(checkpoint), "--samples", "20", "--k", "2",
                  *_estimators(VAE_BINARY), *COMMON, "--out", str(study)])  # fmt: skip
            frames += _traces(study, "variance-checkpoint")
    table = pd.concat(frames, ignore_index=True)
    table = table.drop(columns=[c for c in table.columns if c in IGNORED])
    for column in table.columns:  # names, flags and sizes as text
        if table[column].dtype.kind not in "fiu":
            table[column] = [_text(value) for value in table[column]]
    return table.sort_values(KEY, kind="stable").reset_index(drop=True)


def _text(value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "<NA>"
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def compare(reference: pd.DataFrame, current: pd.DataFrame) -> list[str]:
    """Differences between the reference rows and the current ones, one line each (empty: equal)."""
    problems = []
    ref, cur = reference.set_index(KEY), current.set_index(KEY)
    missing_rows = ref.index.difference(cur.index)
    if len(missing_rows):
        problems.append(f"{len(missing_rows)} reference rows missing, e.g. {list(missing_rows[:3])}")
    common = ref.index.intersection(cur.index)
    ref, cur = ref.loc[common], cur.loc[common]
    cases = zip(common.get_level_values("case"), common.get_level_values("estimator"), strict=True)
    tolerance = np.array([ROUNDING.get(case, 0.0) for case in cases])  # relative, per row
    for column in ref.columns:
        if column not in cur.columns:
            if ref[column].notna().any():
                problems.append(f"column {column!r} missing")
            continue
        a, b = ref[column], cur[column]
        if a.dtype.kind in "fiu" and b.dtype.kind in "fiu":
            x, y = a.to_numpy(float), b.to_numpy(float)
            # A value where the reference recorded none is new information (a statistic an
            # estimator now reports), not a change.
            same = (x == y) | np.isnan(x)
            scale = np.maximum(np.abs(x), np.abs(y))
            relative = np.where(same, 0.0, np.abs(x - y) / np.where(scale > 0, scale, 1.0))
            same |= relative <= tolerance
            if not same.all():
                worst = int(np.nanargmax(relative))
                problems.append(
                    f"{column}: {int((~same).sum())} of {len(x)} values differ, largest relative "
                    f"difference {np.nanmax(relative):.3g} at {common[worst]}"
                )
        else:
            same = (a.astype(str) == b.astype(str)).to_numpy()
            if not same.all():
                problems.append(f"{column}: {int((~same).sum())} of {len(a)} values differ")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("check", "record"))
    parser.add_argument("--reference", type=Path, default=REFERENCE)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as workdir:
        current = measure(Path(workdir))
    if args.mode == "record":
        args.reference.parent.mkdir(parents=True, exist_ok=True)
        current.to_parquet(args.reference, index=False)
        print(f"recorded {len(current)} rows in {args.reference}")
        return 0
    problems = compare(pd.read_parquet(args.reference), current)
    for line in problems:
        print(line)
    verdict = "identical" if not problems else f"{len(problems)} differences"
    print(f"{len(current)} rows compared: {verdict}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
