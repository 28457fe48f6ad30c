"""Every estimator of the registry looks different from every other: a colour-distance test.

Distance: CIEDE2000 ΔE (CIE 142-2001; the CIE's current colour difference, corrected for CIELAB's
non-uniformity in saturated blues and greys) between the two colours as seen with normal vision and
as simulated for protanopia, deuteranopia and tritanopia (Machado, Oliveira & Fernandes 2009, severity
1, in linear sRGB), the smallest of the four.

Threshold: ΔE00 = 10. A ΔE00 of about 1 is just noticeable between two large patches side by side;
thin lines at print size need several times more to be noticed at all (Stone, Szafir & Setlur 2014,
"An engineering model for color difference as a function of size"), and telling two series apart at a
glance, across a legend, needs an order of magnitude more than the just-noticeable difference. Two
estimators closer than that must differ in line style and marker.
"""

import itertools

import numpy as np
import pytest
from matplotlib.colors import to_rgb

from dcvbench.estimators import REFERENCE_ESTIMATOR, estimator_names
from dcvbench.plot import estimator_order, estimator_style
from dcvbench.plot.style import LINE_STYLES, MARKERS, PALETTE, REFERENCE_COLOR

THRESHOLD = 10.0  # ΔE00; see the module docstring
# Machado et al. (2009), Table 1 at severity 1.0: linear RGB → linear RGB as the viewer sees it.
VISIONS = {
    "normal": np.eye(3),
    "protanopia": np.array(
        [[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216], [-0.003882, -0.048116, 1.051998]]
    ),
    "deuteranopia": np.array(
        [[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413], [-0.011820, 0.042940, 0.968881]]
    ),
    "tritanopia": np.array(
        [[1.255528, -0.076749, -0.178779], [-0.078411, 0.930809, 0.147602], [0.004733, 0.691367, 0.303900]]
    ),
}
SRGB_TO_XYZ = np.array(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]]
)
# The estimators the README and the default runs compare: distinct colours, not just line styles.
HEADLINE = ("rloo", "rloo-dcv", "disarm", "exact-baseline", "arms", "reinforce", "muprop", "arm")


def lab(color: str, vision: str = "normal") -> np.ndarray:
    """CIELAB (D65) of a matplotlib colour as seen with ``vision``."""
    srgb = np.array(to_rgb(color))
    linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
    xyz = SRGB_TO_XYZ @ np.clip(VISIONS[vision] @ linear, 0.0, 1.0) / SRGB_TO_XYZ.sum(axis=1)
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def ciede2000(lab1: np.ndarray, lab2: np.ndarray) -> float:
    """ΔE00 between two CIELAB colours (Sharma, Wu & Dalal 2005's formulation)."""
    (l1, a1, b1), (l2, a2, b2) = lab1, lab2
    c_bar = (np.hypot(a1, b1) + np.hypot(a2, b2)) / 2
    g = 0.5 * (1 - np.sqrt(c_bar**7 / (c_bar**7 + 25.0**7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = np.hypot(a1p, b1), np.hypot(a2p, b2)
    h1p, h2p = np.degrees(np.arctan2(b1, a1p)) % 360, np.degrees(np.arctan2(b2, a2p)) % 360
    dh = 0.0 if c1p * c2p == 0 else (h2p - h1p + 180) % 360 - 180
    d_big_h = 2 * np.sqrt(c1p * c2p) * np.sin(np.radians(dh / 2))
    l_bar, cp_bar = (l1 + l2) / 2, (c1p + c2p) / 2
    if c1p * c2p == 0:
        h_bar = h1p + h2p
    elif abs(h1p - h2p) <= 180:
        h_bar = (h1p + h2p) / 2
    else:
        h_bar = (h1p + h2p + 360) / 2 if h1p + h2p < 360 else (h1p + h2p - 360) / 2
    t = (
        1
        - 0.17 * np.cos(np.radians(h_bar - 30))
        + 0.24 * np.cos(np.radians(2 * h_bar))
        + 0.32 * np.cos(np.radians(3 * h_bar + 6))
        - 0.20 * np.cos(np.radians(4 * h_bar - 63))
    )
    rotation = 30 * np.exp(-(((h_bar - 275) / 25) ** 2))
    r_c = 2 * np.sqrt(cp_bar**7 / (cp_bar**7 + 25.0**7))
    s_l = 1 + 0.015 * (l_bar - 50) ** 2 / np.sqrt(20 + (l_bar - 50) ** 2)
    s_c, s_h = 1 + 0.045 * cp_bar, 1 + 0.015 * cp_bar * t
    r_t = -np.sin(np.radians(2 * rotation)) * r_c
    dl, dc, dh_term = (l2 - l1) / s_l, (c2p - c1p) / s_c, d_big_h / s_h
    return float(np.sqrt(dl**2 + dc**2 + dh_term**2 + r_t * dc * dh_term))


def distance(color1: str, color2: str) -> float:
    """The smallest ΔE00 between two colours over normal and the three dichromatic visions."""
    return min(ciede2000(lab(color1, vision), lab(color2, vision)) for vision in VISIONS)


@pytest.mark.parametrize(
    ("lab1", "lab2", "expected"),
    [  # Sharma, Wu & Dalal (2005), Table 1: pairs 1, 7, 17 and 25
        ((50.0, 2.6772, -79.7751), (50.0, 0.0, -82.7485), 2.0425),
        ((50.0, 0.0, 0.0), (50.0, -1.0, 2.0), 2.3669),
        ((50.0, 2.5, 0.0), (73.0, 25.0, -18.0), 27.1492),
        ((60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387), 1.2644),
    ],
)
def test_the_colour_distance_is_ciede2000(lab1, lab2, expected):
    assert ciede2000(np.array(lab1), np.array(lab2)) == pytest.approx(expected, abs=1e-4)


def test_the_palette_is_distinct_for_every_vision():
    colours = [REFERENCE_COLOR, *PALETTE]
    worst = min(distance(a, b) for a, b in itertools.combinations(colours, 2))
    assert worst >= THRESHOLD
    assert np.gcd(len(PALETTE), len(MARKERS)) == 1  # colour-sharing estimators get different markers


def test_every_two_estimators_differ_in_colour_or_else_in_line_style_and_marker():
    names = estimator_names()  # both latent families, and any estimator added later
    assert len(names) > len(PALETTE)  # so the second cue is exercised, not vacuous
    styles = {name: estimator_style(name) for name in names}
    for a, b in itertools.combinations(names, 2):
        if distance(styles[a].color, styles[b].color) < THRESHOLD:
            assert styles[a].linestyle != styles[b].linestyle, (a, b)
            assert styles[a].marker != styles[b].marker, (a, b)
    for a, b in itertools.combinations(HEADLINE, 2):
        assert distance(styles[a].color, styles[b].color) >= THRESHOLD, (a, b)


def test_the_reference_is_black_and_solid_and_styles_are_stable():
    assert estimator_style(REFERENCE_ESTIMATOR).color == REFERENCE_COLOR
    assert estimator_style(REFERENCE_ESTIMATOR).linestyle == LINE_STYLES[0]
    assert estimator_style("disarm") == estimator_style("disarm")
    # A series that is no registered estimator (a newer or foreign run, a temperature variant): a
    # stable palette colour, dotted so it never passes for a registered one.
    foreign = estimator_style("not-registered")
    assert foreign == estimator_style("not-registered") and foreign.color in PALETTE
    assert foreign.linestyle == LINE_STYLES[2]


def test_order_is_the_registrys_with_variants_beside_their_estimator():
    labels = ["zzz-foreign", "concrete λ=0.1", "disarm", "concrete", "rloo", "rloo-dcv"]
    assert sorted(labels, key=estimator_order) == [
        "rloo",
        "rloo-dcv",
        "disarm",
        "concrete",
        "concrete λ=0.1",
        "zzz-foreign",
    ]
