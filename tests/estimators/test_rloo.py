"""RLOO's variance against the closed form of DESIGN §4.1.

At θ = ½, K = 2, on the separable toy ``f(b) = (1/D) Σ_d (b_d − t)²``: on binary points
``f₁ − f₂ = c Σ_e x_e`` with ``c = (1 − 2t)/D`` and ``x = b₁ − b₂`` (x_e = ±1 with probability ¼
each, 0 with ½), and RLOO is ``g = ½ (f₁ − f₂)(b₁ − b₂)``, so ``g_d = (c/2)(x_d² + x_d S_d)`` with
``S_d = Σ_{e≠d} x_e`` independent of ``x_d``. Hence ``Var g_d = (c²/4)(Var x_d² + E x_d² E S_d²)
= (c²/4)(¼ + (D − 1)/4) = (1 − 2t)²/(16 D)`` for every coordinate.
"""

from __future__ import annotations

import torch
from scipy.stats import t as student_t

from dcvbench.estimators import get_estimator
from dcvbench.measure.variance import resample_variance
from dcvbench.problems.toy import make_objective

DIM, TARGET = 200, 0.499
REPLICATES, DRAWS = 20, 5_000


def test_rloo_variance_at_one_half_matches_the_closed_form():
    closed_form = (1.0 - 2.0 * TARGET) ** 2 / (16 * DIM)
    f = make_objective("separable", DIM, target=TARGET)
    logits = torch.zeros(1, DIM, dtype=torch.float64)  # θ = ½

    # The coordinates share S_d, so their variance estimates are correlated: rather than assume a
    # formula for the standard error of the mean over coordinates, use batch means over independent
    # replicate runs. Each replicate's mean-over-coordinates variance is unbiased for the closed form
    # (an unbiased per-coordinate variance averaged), and the replicates are iid.
    estimates = torch.tensor(
        [
            resample_variance(
                get_estimator("rloo"), logits, f, 2, DRAWS, torch.Generator().manual_seed(seed)
            ).variance
            for seed in range(REPLICATES)
        ],
        dtype=torch.float64,
    )
    mean = float(estimates.mean())
    standard_error = float(estimates.std()) / REPLICATES**0.5

    # Precise enough to matter: a deviation of 4 % from the closed form would be rejected.
    assert standard_error < 0.01 * closed_form
    # Two-sided test at level 0.001 with a Student t on REPLICATES − 1 degrees of freedom (the
    # replicates are averages over 200 coordinates × 5,000 draws: close to normal).
    critical = float(student_t.isf(0.0005, REPLICATES - 1))
    t_statistic = (mean - closed_form) / standard_error
    assert abs(t_statistic) < critical, (
        f"variance {mean:.4e} vs closed form {closed_form:.4e}, t = {t_statistic:.2f}"
    )
