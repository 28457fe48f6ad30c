"""Every unbiased estimator's mean matches the exact toy gradient (DESIGN §7).

One test case is (estimator variant, K, objective). Each case draws many independent estimates at
three rows of θ at once (a non-uniform vector, θ = ½, and values near 0 and 1) and compares the
per-coordinate mean with :func:`~dcvbench.problems.toy.exact_gradient` through
``VarianceResult.bias_z`` = ``|mean − exact| / s.e.``.

Threshold (a family-wise test). Under the null hypothesis (the estimator is unbiased) every
coordinate's z is approximately |N(0, 1)|: the mean of 50,000 iid draws. One draw is skewed (skewness
up to 14, measured, for plain REINFORCE), the mean much less (14/√50,000 ≈ 0.06), and the
first-order (Edgeworth) skewness correction cancels between the two tails of a two-sided test. With
``N_TESTS = (number of cases) × (coordinates per case)`` two-sided tests, the Bonferroni bound
P(any |z| > z*) ≤ N_TESTS · 2·P(N(0,1) > z*) = ``FAMILY_ALPHA`` gives
``z* = Φ⁻¹(1 − FAMILY_ALPHA / (2·N_TESTS))`` — about 5.0 here. A correct library therefore fails this
file with probability about 0.1 % over seeds; the seeds are fixed, so the result is reproducible.
(Measured: the largest |z| over all 1,944 coordinates is about 3.1.)

Power: the same check rejects the biased ``concrete`` estimator (:func:`test_check_rejects_concrete`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
from scipy.stats import norm

from dcvbench.estimators import Estimator, estimator_info, estimator_names, get_estimator
from dcvbench.measure.variance import resample_variance
from dcvbench.problems.toy import OBJECTIVES, exact_gradient, make_objective

DIM = 6
DRAWS = 50_000
KS = (2, 3, 4, 5)
FAMILY_ALPHA = 1e-3


def toy_logits() -> torch.Tensor:
    """Three rows of θ, ``[3, DIM]`` float64 logits: non-uniform, ½ everywhere, near 0 and 1."""
    generator = torch.Generator().manual_seed(1234)
    spread = 0.1 + 0.8 * torch.rand(DIM, generator=generator, dtype=torch.float64)
    half = torch.full((DIM,), 0.5, dtype=torch.float64)
    extreme = torch.tensor([0.02, 0.98, 0.02, 0.98, 0.3, 0.7], dtype=torch.float64)
    return torch.logit(torch.stack([spread, half, extreme]))  # [3, DIM]


LOGITS = toy_logits()
COORDS = LOGITS.numel()


def _set_ema_baseline(estimator: Estimator) -> None:
    """Give reinforce-ema a non-zero baseline (a fixed c), as after a step of training."""
    f = make_objective("quadratic-form", DIM)
    estimator.update(estimator(LOGITS, f, 2, torch.Generator().manual_seed(7)))
    assert float(estimator.baseline) != 0.0


@dataclass(frozen=True)
class Variant:
    """One configuration of a registered estimator."""

    name: str
    options: dict = field(default_factory=dict)
    prepare: Callable[[Estimator], None] | None = None
    label: str = ""

    def build(self) -> Estimator:
        estimator = get_estimator(self.name, **self.options)
        if self.prepare is not None:
            self.prepare(estimator)
        return estimator


# Estimators with options worth testing separately; every other unbiased estimator in the registry is
# tested with its defaults, so a newly registered unbiased estimator is covered automatically.
SPECIAL_VARIANTS = {
    "reinforce-ema": [Variant("reinforce-ema", prepare=_set_ema_baseline, label="reinforce-ema-c")],
    "rloo-dcv": [
        Variant("rloo-dcv", {"alpha": -0.3}, label="rloo-dcv-a-0.3"),
        Variant("rloo-dcv", {"alpha": 0.0}, label="rloo-dcv-a0"),
    ],
}


def _cases() -> list:
    cases = []
    for name in estimator_names():
        info = estimator_info(name)
        if not info.unbiased:
            continue
        for variant in SPECIAL_VARIANTS.get(name, [Variant(name, label=name)]):
            for k in KS:
                if k < info.min_k or (info.even_k and k % 2):
                    continue
                for objective in OBJECTIVES:
                    cases.append(pytest.param(variant, k, objective, id=f"{variant.label}-K{k}-{objective}"))
    return cases


CASES = _cases()
# Bonferroni over every coordinate of every case; two-sided.
Z_CRITICAL = float(norm.isf(FAMILY_ALPHA / (2 * len(CASES) * COORDS)))


def max_bias_z(estimator: Estimator, k: int, objective: str, seed: int) -> float:
    f = make_objective(objective, DIM)
    result = resample_variance(estimator, LOGITS, f, k, DRAWS, torch.Generator().manual_seed(seed))
    assert result.draws == DRAWS
    return float(result.bias_z(exact_gradient(f, LOGITS)).max())


def test_threshold_is_a_sensible_family_wise_bound():
    # Sanity of the derivation above: dozens of cases, a threshold near 5 standard errors.
    assert len(CASES) >= 90
    assert 4.5 < Z_CRITICAL < 5.5


def test_every_unbiased_estimator_is_covered():
    covered = {param.values[0].name for param in CASES}
    unbiased = {name for name in estimator_names() if estimator_info(name).unbiased}
    assert covered == unbiased
    assert {"reinforce", "rloo", "rloo-dcv", "muprop", "exact-baseline", "arm", "disarm", "arms"} <= covered


@pytest.mark.parametrize(("variant", "k", "objective"), CASES)
def test_mean_matches_exact_gradient(variant: Variant, k: int, objective: str):
    z = max_bias_z(variant.build(), k, objective, seed=1000 + k)
    assert z < Z_CRITICAL, f"{variant.label} K={k} {objective}: max |z| = {z:.2f} ≥ {Z_CRITICAL:.2f}"


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_check_rejects_concrete(objective: str):
    # The same check, same draws and threshold, on a biased estimator: it must reject.
    z = max_bias_z(get_estimator("concrete", temperature=1.0), 2, objective, seed=1002)
    assert z > Z_CRITICAL, f"concrete at λ = 1 not rejected on {objective}: max |z| = {z:.2f}"
