"""How every figure looks: one paper column, and one look per estimator in every figure.

Each estimator gets a colour and, as a second cue, a line style and a marker (:func:`estimator_style`),
by a rule over the registry's listing order rather than a hand-written table, so an estimator added
later gets a look of its own without any change here:

- the reference estimator (``rloo``, what variance ratios divide by) is black;
- the others take :data:`PALETTE` in registry order; when the palette is exhausted the colours repeat
  with the next line style of :data:`LINE_STYLES`, so two estimators that share a colour never share a
  line style;
- markers cycle through :data:`MARKERS`, whose length is coprime to the palette's, so two estimators
  that share a colour never share a marker either (what tells them apart in dot plots, which have no
  lines).

The palette is colour-blind safe: Okabe & Ito's colours (Wong, *Nature Methods* 8:441, 2011) in
their canonical order, without yellow (too faint on white for a thin line) and with black kept for the
reference, then Paul Tol's muted wine and indigo. Every two of these nine colours differ by a CIEDE2000
ΔE of at least 10 for normal vision and under simulated protanopia, deuteranopia and tritanopia
(``tests/plot/test_style.py`` measures it, and why 10 is the threshold).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from dcvbench.estimators import REFERENCE_ESTIMATOR, estimator_names
from dcvbench.estimators import estimator_order as registry_order

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
BASELINE_ALPHA = 0.45  # baseline runs: the estimator's own look, faded (its line style is its identity)

REFERENCE_COLOR = "#000000"
# fmt: off
PALETTE = (
    "#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7",  # Okabe–Ito: orange, sky blue,
    "#882255", "#332288",  # bluish green, blue, vermillion, reddish purple; Tol muted: wine, indigo
)
# fmt: on
LINE_STYLES = ("-", (0, (4.0, 1.5)), (0, (1.0, 1.2)), (0, (4.0, 1.2, 1.0, 1.2)))  # solid, dash, dot, dash-dot
MARKERS = ("o", "s", "^", "D", "v", "P", "X")  # 7: coprime to the palette's 8


@dataclass(frozen=True)
class EstimatorStyle:
    """The look of one estimator's series: matplotlib's ``color``, ``linestyle`` and ``marker``."""

    color: str
    linestyle: str | tuple
    marker: str


def estimator_style(name: str) -> EstimatorStyle:
    """The look of an estimator (or of a series labelled after one, such as ``concrete λ=0.1``): the
    same in every figure and every invocation."""
    if name == REFERENCE_ESTIMATOR:
        return EstimatorStyle(REFERENCE_COLOR, LINE_STYLES[0], MARKERS[0])
    others = [other for other in estimator_names() if other != REFERENCE_ESTIMATOR]
    if name in others:
        index = others.index(name)
        line = LINE_STYLES[(index // len(PALETTE)) % len(LINE_STYLES)]
        return EstimatorStyle(PALETTE[index % len(PALETTE)], line, MARKERS[index % len(MARKERS)])
    # Not registered here (a variant such as a temperature study's, a newer or foreign run): a stable
    # hash, not the order of appearance; dotted, so it never passes for a registered estimator.
    index = zlib.crc32(name.encode())
    return EstimatorStyle(PALETTE[index % len(PALETTE)], LINE_STYLES[2], MARKERS[index % len(MARKERS)])


def estimator_order(name: str) -> tuple[int, str]:
    """Sort key: registry order (a series labelled after an estimator, ``concrete λ=0.1``, beside
    it), unknown names after, alphabetically. Tables and legends list estimators in this order."""
    position, _ = registry_order(name.split(" ", 1)[0])
    return position, name
