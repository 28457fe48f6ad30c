"""The tables of baselines/concrete-paper/README.md, from the runs under a directory.

    python baselines/concrete-paper/tables.py [RUNS_DIR]    # default: baselines/concrete-paper/runs

One Markdown table per task and objective: estimators × architectures, each cell the final held-out
bound (density estimation: the 100-sample IWAE bound on log p(x), higher is better; structured
prediction: the test NLL, its negative, lower is better) as mean ± s.e. over seeds; then seconds
per step, and the temperature study. Read through dcvbench's own plot library, with the aggregation
of ``dcvbench plot``, so the numbers are those of its summary.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from dcvbench.plot.aggregate import summary_frame, temperature_frame
from dcvbench.plot.runs import RUNS, load_results

HERE = Path(__file__).resolve().parent


def cell(mean: float, se: float, sign: float = 1.0, digits: int = 2) -> str:
    if pd.isna(mean):
        return "–"
    text = f"{sign * mean:.{digits}f}"
    return text if pd.isna(se) else f"{text} ± {se:.{digits}f}"


def group_settings(runs: pd.DataFrame) -> pd.DataFrame:
    """Per group: its job, architecture and objective (from the manifest of one of its runs)."""
    rows = []
    for row in runs.drop_duplicates("group").itertuples():
        manifest = json.loads((Path(row.path) / "run.json").read_text())
        rows.append(
            {"group": row.group, "arch": manifest["arch"], "objective": manifest["config"]["objective"]}
        )
    return pd.DataFrame(rows)


def print_table(frame: pd.DataFrame, column: str, sign: float, digits: int) -> None:
    archs = sorted(dict.fromkeys(frame["arch"]), key=lambda arch: ("~" in arch, arch.count("H"), arch))
    print("| estimator | " + " | ".join(archs) + " |")
    print("|---|" + "---|" * len(archs))
    for estimator, rows in frame.groupby("estimator", sort=False):
        values = {
            r.arch: cell(getattr(r, f"{column}_mean"), getattr(r, f"{column}_se"), sign, digits)
            for r in rows.itertuples()
        }
        print(f"| {estimator} | " + " | ".join(values.get(a, "–") for a in archs) + " |")


def main() -> None:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "runs"
    results = load_results(root, RUNS)
    runs = results.runs
    plain = runs[runs["estimator"] == runs["base_estimator"]]  # the temperature study's runs apart
    summary = summary_frame(results).merge(group_settings(runs), on="group")
    summary = summary[summary["estimator"].isin(plain["estimator"])].merge(
        runs[["group", "job"]].drop_duplicates("group"), on="group"
    )
    for (job, objective), frame in summary.groupby(["job", "objective"], sort=True):
        frame = frame[frame["group"].isin(plain["group"])]
        task = "structured prediction" if job == "predict" else "density estimation"
        m = "m = 1" if objective == "elbo" else "m = K = 5"
        metric = "test NLL, lower is better" if job == "predict" else "test bound, higher is better"
        print(f"\n### {task}, {m} (`--objective {objective}`): {metric}\n")
        print_table(frame, "test_bound", -1.0 if job == "predict" else 1.0, 2)
        print(f"\n{task}, {m}: seconds per step (each run's median, then mean over seeds)\n")
        print_table(frame, "sec_per_step_median", 1.0, 4)
    study = temperature_frame(results)
    study["temperature"] = study["temperature"].round(3)  # 0.667 of a grid and 2/3, the default: one λ
    for group, frame in study.groupby("group", sort=True):
        sign = -1.0 if group.startswith("predict") else 1.0
        print(f"\n### temperature: `{group}` ({'test NLL' if sign < 0 else 'test bound'})\n")
        print("| λ | fixed | annealed to λ |\n|---|---|---|")
        for temperature, rows in frame.groupby("temperature", sort=True):
            values = {bool(r.annealed): cell(r.mean, r.se, sign) for r in rows.itertuples()}
            print(f"| {temperature:.3g} | {values.get(False, '–')} | {values.get(True, '–')} |")


if __name__ == "__main__":
    main()
