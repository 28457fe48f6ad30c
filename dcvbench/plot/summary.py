"""The summary report: the aggregated frames as text tables, for the terminal, ``summary.md`` and the
HTML report.

Rows follow the registry's listing order (:func:`~dcvbench.plot.style.estimator_order`), as the
jobs' final tables do. Values are mean ± s.e. over seeds (over studies for variance studies); a value
from one seed has no ± and the table's note says so.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from dcvbench.plot.runs import BASELINE, RUNS

TIME_HEADER = "s/step (median)"
# What the quality columns are; a table that has them says so in its note, as one study has no other s.e.
QUALITY_INTRO = (
    "Against the exact gradient ∇, where it is known: bias norm ‖E ĝ − ∇‖/‖∇‖, "
    "MSE E‖ĝ − ∇‖², cosine E⟨ĝ, ∇⟩/(‖ĝ‖‖∇‖), each ± its s.e. from the draws."
)
QUALITY_NOTE = "bias norm, MSE and cosine ± their s.e. from the draws"
INTRO = (
    "Final values are each run's last recorded value, then mean ± s.e. over seeds; "
    f"{TIME_HEADER} is each run's median time per step, then mean ± s.e. over seeds. "
    "Variance studies: mean ± s.e. over studies; α* is the variance-optimal α of the point, "
    f"bias max |z| the largest |bias / s.e.| over coordinates (toy). {QUALITY_INTRO}"
)


@dataclass(frozen=True)
class SummaryTable:
    """One table of the summary: its title, a note on what its values average over, its text
    columns, and the group whose figures it links (``None``: none)."""

    title: str
    note: str
    frame: pd.DataFrame
    group: str | None


def _pm(mean: float, se: float | None, digits: int) -> str:
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


def _without_empty_columns(frame: pd.DataFrame, keep: Iterable[str]) -> pd.DataFrame:
    keep = set(keep)
    return frame[[c for c in frame.columns if c in keep or (frame[c] != "–").any()]]


def averaged_over(counts: Iterable[int], unit: str = "seed") -> str:
    """What a table's values average over: ``one seed, no standard error``, ``mean ± s.e. over 3
    seeds``."""
    counts = sorted({int(n) for n in counts})
    if not counts:
        return ""
    if counts == [1]:
        return f"one {unit}, no standard error"
    if len(counts) == 1:
        return f"mean ± s.e. over {counts[0]} {unit}s"
    return f"mean ± s.e. over {counts[0]}–{counts[-1]} {unit}s (a value without ± had one {unit})"


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
            "train objective": _pm_column(summary, "train_objective", 5),
            "final grad var": _pm_column(summary, "grad_var", 3),
            "vs rloo": [_pm(v, None, 3) for v in summary["var_ratio_rloo"]],
            TIME_HEADER: _pm_column(summary, "sec_per_step_median", 2),
        }
    )
    return _without_empty_columns(out, ("group", "estimator"))


def variance_display(variance: pd.DataFrame) -> pd.DataFrame:
    """Variance studies as text columns (one row per group, estimator, K), empty columns dropped.

    ``α*`` is the control variate's α (the variance-optimal one of the point; ``(fixed)`` where
    ``--alpha`` fixed it).
    """
    if variance.empty:
        return pd.DataFrame()
    alphas = [
        text if text == "–" or source != "fixed" else f"{text} (fixed)"
        for text, source in zip(_pm_column(variance, "alpha", 3), variance["alpha_source"], strict=True)
    ]
    out = pd.DataFrame(
        {
            "study": variance["group"],
            "budget": ["–" if pd.isna(budget) else f"{budget:.0f}" for budget in variance["budget"]],
            "estimator": _estimator_labels(variance),
            "K": variance["k"].astype(str),
            "evals": variance["evals"].astype(str),
            "variance": _pm_column(variance, "variance", 3),
            "vs rloo": _pm_column(variance, "variance_ratio", 3),
            "variance×evals": _pm_column(variance, "cost_variance", 3),
            "α*": alphas,
            "bias max |z|": _pm_column(variance, "bias_max_z", 2),
            "bias norm": _pm_column(variance, "bias_norm", 3),
            "MSE": _pm_column(variance, "mse", 3),
            "cosine": _pm_column(variance, "cosine", 3),
            "s/estimate": _pm_column(variance, "seconds_per_estimate", 2),
        }
    )
    return _without_empty_columns(out, ("study", "estimator", "K", "evals", "variance"))


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
) -> list[SummaryTable]:
    """A table per group of runs, then per variance study, then per temperature study: what the
    terminal, ``summary.md`` and the HTML report show. Each keeps only the columns its group has
    values for."""
    tables = []
    for group in dict.fromkeys(summary["group"]) if len(summary) else ():
        rows = summary[summary["group"] == group]
        note = averaged_over(rows.loc[rows["source"] == RUNS, "seeds"])
        tables.append(SummaryTable(group, note, summary_display(rows).drop(columns="group"), group))
    for group in dict.fromkeys(variance["group"]) if len(variance) else ():
        rows = variance[variance["group"] == group]
        note = averaged_over(rows.loc[rows["source"] == RUNS, "n"], "study")
        if rows["mse_mean"].notna().any():
            note += f"; {QUALITY_NOTE}"
        tables.append(SummaryTable(group, note, variance_display(rows).drop(columns="study"), group))
    if temperature is not None and len(temperature):
        main = temperature[temperature["source"] == RUNS]
        for group in dict.fromkeys(main["group"]):
            rows = main[main["group"] == group]
            note = averaged_over(rows["n"])
            tables.append(SummaryTable(f"{group}: temperature", note, temperature_display(rows), None))
    return tables


def summary_markdown(
    tables: Sequence[SummaryTable], figures: Mapping[str, Sequence[tuple[str, Path]]] | None = None
) -> str:
    """``summary.md``: one Markdown table per group, each with its note and relative links to its
    figures (``figures``: group → (what it shows, file beside ``summary.md``))."""
    figures = figures or {}
    text = f"# dcvbench summary\n\n{INTRO}\n"
    for table in tables:
        text += f"\n## {table.title}\n\n"
        links = [f"[{label}]({path.name})" for label, path in figures.get(table.group, ())]
        if links:
            text += "Figures: " + " · ".join(links) + "\n\n"
        text += f"{table.note[:1].upper()}{table.note[1:]}.\n\n" if table.note else ""
        text += markdown_table(table.frame.reset_index(drop=True))
    return text


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of a text frame (no extra dependency such as tabulate)."""
    if frame.empty:
        return "(none)\n"

    def cells(values) -> str:
        return "| " + " | ".join(str(value).replace("|", "\\|") for value in values) + " |"

    lines = [cells(frame.columns), "|" + "---|" * len(frame.columns)]
    lines += [cells(row) for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"
