"""Every unbiased categorical estimator's mean matches the exact categorical toy gradient.

As ``tests/estimators/test_unbiased.py`` for binary latents: one case is (estimator variant, K,
objective); each draws ``DRAWS`` independent estimates at two rows of class probabilities at once —
random ones, and a row with one uniform and two peaked variables (largest probability 0.97, smallest
0.01) — and compares the per-coordinate mean with the exact gradient
(:func:`~dcvbench.problems.categorical_toy.categorical_exact_gradient`) through
``VarianceResult.bias_z`` = ``|mean − exact| / s.e.``.

Threshold (family-wise). Under the null hypothesis every coordinate's z is approximately |N(0, 1)| (the
mean of 20,000 iid draws; the skewness of the mean is that of one draw over √20,000, and its first-order
effect cancels between the two tails of a two-sided test). With ``N_TESTS = cases × coordinates``
two-sided tests, Bonferroni gives ``z* = Φ⁻¹(1 − FAMILY_ALPHA / (2·N_TESTS))``, about 4.7 here: a correct
library fails this file with probability at most 0.1 % over seeds, and the seeds are fixed.

Power: the same check, draws and threshold reject the biased ``concrete``
(:func:`test_check_rejects_concrete`), and a double control variate corrected with only the diagonal
of the score covariance, ``π(1 − π) ⊙ ḡ`` as for bits (:func:`test_check_rejects_a_diagonal_correction`).
"""

from __future__ import annotations

import pytest
import torch
from scipy.stats import norm

from dcvbench.estimators import Estimate, estimator_class, estimator_info, estimator_names, get_estimator
from dcvbench.estimators.sampling import categorical_from_uniform
from dcvbench.measure.variance import resample_variance
from dcvbench.problems.categorical_toy import (
    CATEGORICAL_OBJECTIVES,
    categorical_exact_gradient,
    make_categorical_objective,
)

VARIABLES, CLASSES = 3, 3
DRAWS = 20_000
KS = (2, 3, 4)
FAMILY_ALPHA = 1e-3


def toy_logits() -> torch.Tensor:
    """Two rows ``[2, N, C]`` float64: random class probabilities; one uniform and two peaked variables."""
    generator = torch.Generator().manual_seed(4321)
    spread = torch.empty(VARIABLES, CLASSES, dtype=torch.float64).exponential_(generator=generator)
    spread = spread / spread.sum(-1, keepdim=True)  # uniform on the simplex
    extremes = torch.tensor(
        [[1 / 3, 1 / 3, 1 / 3], [0.97, 0.02, 0.01], [0.01, 0.04, 0.95]], dtype=torch.float64
    )
    return torch.stack([spread, extremes]).log()  # logits: log-probabilities


LOGITS = toy_logits()
COORDS = LOGITS.numel()

# Options worth testing separately (α = 0 is rloo exactly, tested in test_dcv.py); every other unbiased
# categorical estimator is tested with its defaults, so a newly registered one is covered automatically.
SPECIAL_OPTIONS = {"rloo-dcv": [{"alpha": -0.6}]}


def _cases() -> list:
    cases = []
    for name in estimator_names("categorical"):
        info = estimator_info(name, "categorical")
        if not info.unbiased:
            continue
        for options in SPECIAL_OPTIONS.get(name, [{}]):
            label = name + "".join(f"-{key}{value}" for key, value in options.items())
            for k in KS:
                if k < info.min_k or (info.even_k and k % 2):
                    continue
                for objective in CATEGORICAL_OBJECTIVES:
                    cases.append(pytest.param(name, options, k, objective, id=f"{label}-K{k}-{objective}"))
    return cases


CASES = _cases()
Z_CRITICAL = float(norm.isf(FAMILY_ALPHA / (2 * len(CASES) * COORDS)))


def max_bias_z(name: str, options: dict, k: int, objective: str, seed: int) -> float:
    f = make_categorical_objective(objective, VARIABLES, CLASSES)
    estimator = get_estimator(name, latent="categorical", **options)
    result = resample_variance(estimator, LOGITS, f, k, DRAWS, torch.Generator().manual_seed(seed))
    assert result.draws == DRAWS
    return float(result.bias_z(categorical_exact_gradient(f, LOGITS)).max())


def test_the_points_include_peaked_and_uniform_distributions():
    probs = torch.softmax(LOGITS, -1)
    assert float(probs.max()) >= 0.97 and float(probs.min()) <= 0.01
    assert torch.allclose(probs[1, 0], torch.full_like(probs[1, 0], 1.0 / CLASSES))


def test_threshold_is_a_sensible_family_wise_bound():
    assert len(CASES) == 24  # reinforce, rloo, rloo-dcv, exact-baseline; K = 2, 3, 4; 2 objectives
    assert 4.5 < Z_CRITICAL < 5.5


@pytest.mark.parametrize(("name", "options", "k", "objective"), CASES)
def test_mean_matches_exact_gradient(name: str, options: dict, k: int, objective: str):
    z = max_bias_z(name, options, k, objective, seed=2000 + k)
    assert z < Z_CRITICAL, f"{name} {options} K={k} {objective}: max |z| = {z:.2f} ≥ {Z_CRITICAL:.2f}"


@pytest.mark.parametrize("objective", CATEGORICAL_OBJECTIVES)
def test_check_rejects_concrete(objective: str):
    z = max_bias_z("concrete", {"temperature": 1.0}, 2, objective, seed=2002)
    assert z > Z_CRITICAL, f"concrete at λ = 1 not rejected on {objective}: max |z| = {z:.2f}"


class _DiagonalCorrection(estimator_class("rloo-dcv", "categorical")):
    """rloo-dcv with the binary correction ``α π(1 − π) ⊙ ḡ`` in place of ``α (diag(π) − ππᵀ) ḡ``: biased."""

    def estimate(self, logits, f, noise):
        estimate = super().estimate(logits, f, noise)
        probs = torch.softmax(logits, -1)
        _, input_grad = f.value_and_input_grad(categorical_from_uniform(noise, logits))  # the same b
        mean_grad = input_grad.mean(0)  # ḡ
        full = probs * (mean_grad - (probs * mean_grad).sum(-1, keepdim=True))
        diagonal = probs * (1.0 - probs) * mean_grad
        alpha = estimate.stats["alpha"]
        return Estimate(grad=estimate.grad + alpha * (full - diagonal), values=estimate.values)


@pytest.mark.parametrize("objective", CATEGORICAL_OBJECTIVES)
def test_check_rejects_a_diagonal_correction(objective: str):
    f = make_categorical_objective(objective, VARIABLES, CLASSES)
    estimator = _DiagonalCorrection(alpha=-0.6)
    result = resample_variance(estimator, LOGITS, f, 2, DRAWS, torch.Generator().manual_seed(2002))
    z = float(result.bias_z(categorical_exact_gradient(f, LOGITS)).max())
    assert z > Z_CRITICAL, f"a diagonal correction not rejected on {objective}: max |z| = {z:.2f}"
