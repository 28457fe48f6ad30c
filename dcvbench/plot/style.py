"""How every figure looks: one paper column, and one colour per estimator in every figure."""

from __future__ import annotations

import zlib

import matplotlib

from dcvbench.estimators import estimator_names

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
