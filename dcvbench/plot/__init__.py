"""``dcvbench plot``: figures and a summary table from every run below a directory.

One module per concern, so what a figure shows can be tested without looking at pixels:

- :mod:`~dcvbench.plot.runs` reads manifests, traces and variance tables into frames and names each
  run's panel group (:func:`load_results`, :func:`combine`); :mod:`~dcvbench.plot.optimum` gives a
  toy run's best achievable objective;
- :mod:`~dcvbench.plot.aggregate` returns the data behind each figure: one row per (source, group,
  estimator, step) with the mean over seeds, its standard error and the number of seeds behind it
  (:func:`curve_frame`, :func:`time_frame`, :func:`variance_frame`, :func:`summary_frame`);
- :mod:`~dcvbench.plot.draw` turns those frames into matplotlib figures, one per metric the traces
  hold (:func:`metrics_of`: the jobs' measurements and every estimator's stats);
- :mod:`~dcvbench.plot.summary` writes the summary tables, :mod:`~dcvbench.plot.report` the HTML
  report; :mod:`~dcvbench.plot.style` gives each estimator the same colour, line style and marker in
  every figure (:func:`estimator_style`); :mod:`~dcvbench.plot.job` does it all (:func:`plot_results`).
"""

from dcvbench.plot.aggregate import curve_frame, summary_frame, time_frame, variance_frame
from dcvbench.plot.draw import (
    MEASUREMENTS,
    Metric,
    draw_cost_variance,
    draw_curves,
    draw_time,
    draw_variance_ratio,
    metrics_of,
)
from dcvbench.plot.job import FORMATS, FigureFile, PlotReport, plot_results
from dcvbench.plot.runs import BASELINE, RUNS, Results, Skipped, combine, load_results
from dcvbench.plot.style import EstimatorStyle, estimator_order, estimator_style
from dcvbench.plot.summary import SummaryTable, summary_markdown, summary_tables

__all__ = [
    "BASELINE",
    "FORMATS",
    "MEASUREMENTS",
    "RUNS",
    "EstimatorStyle",
    "FigureFile",
    "Metric",
    "PlotReport",
    "Results",
    "Skipped",
    "SummaryTable",
    "combine",
    "curve_frame",
    "draw_cost_variance",
    "draw_curves",
    "draw_time",
    "draw_variance_ratio",
    "estimator_order",
    "estimator_style",
    "load_results",
    "metrics_of",
    "plot_results",
    "summary_frame",
    "summary_markdown",
    "summary_tables",
    "time_frame",
    "variance_frame",
]
