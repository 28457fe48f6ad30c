"""The summary report: the aggregated frames as text tables, for the terminal and ``summary.md``."""

from __future__ import annotations

import pandas as pd

from dcvbench.plot.runs import BASELINE, RUNS


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


def temperature_display(temperature: pd.DataFrame) -> pd.DataFrame:
    """The temperature study as text columns (one row per estimator, schedule and λ)."""
    return pd.DataFrame(
        {
            "estimator": temperature["estimator"],
            "schedule": ["annealed to λ" if annealed else "fixed λ" for annealed in temperature["annealed"]],
            "λ": [f"{t:.3g}" for t in temperature["temperature"]],
            "seeds": temperature["n"].astype(str),
            "final test bound": _pm_column(
                temperature.rename(columns={"mean": "b_mean", "se": "b_se"}), "b", 5
            ),
        }
    )


def summary_tables(
    summary: pd.DataFrame, variance: pd.DataFrame, temperature: pd.DataFrame | None = None
) -> list[tuple[str, pd.DataFrame]]:
    """(title, text frame) per group of runs, then per variance study, then per temperature study:
    what the terminal and ``summary.md`` show. Each table keeps only the columns its group has
    values for."""
    tables = []
    for group in dict.fromkeys(summary["group"]) if len(summary) else ():
        frame = summary_display(summary[summary["group"] == group]).drop(columns="group")
        tables.append((group, frame))
    for group in dict.fromkeys(variance["group"]) if len(variance) else ():
        frame = variance_display(variance[variance["group"] == group]).drop(columns="study")
        tables.append((group, frame))
    if temperature is not None and len(temperature):
        main = temperature[temperature["source"] == RUNS]
        for group in dict.fromkeys(main["group"]):
            tables.append((f"{group}: temperature", temperature_display(main[main["group"] == group])))
    return tables


def summary_markdown(
    summary: pd.DataFrame, variance: pd.DataFrame, temperature: pd.DataFrame | None = None
) -> str:
    """``summary.md``: one Markdown table per group; values are mean ± s.e. over seeds."""
    text = "# dcvbench summary\n\n"
    text += "Final values are each run's last recorded value, then mean ± s.e. over seeds.\n"
    for title, frame in summary_tables(summary, variance, temperature):
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
