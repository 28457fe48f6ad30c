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
(Measured: the largest |z| over all 2,808 coordinates is about 3.1; REBAR without the θ path: 7.6 to 69.)

Estimators with learned controls (``rebar``, ``relax``) are tested fresh, with a trained control and
with a randomised one: unbiasedness must hold for every value of λ, s and ψ, not only the initial
ones. Their estimates cost three evaluations and a backward pass through ``r_ψ`` (50 hidden units per
sample, against 6 latents here), so these cases draw ``LEARNED_DRAWS`` = 10,000 estimates at K ∈ {1, 3}
(their K-sample estimate is exactly the mean of K single-sample ones, ``test_relax.py``). The
threshold is the same: each z is still a mean over its own standard error; one draw's skewness is
at most 16 here (measured), the mean's at most 16/√10,000 = 0.16, and its first-order effect still
cancels between the two tails; the cases count in ``N_TESTS`` like the others.

Power: the same check rejects the biased ``concrete`` estimator (:func:`test_check_rejects_concrete`),
and REBAR whose ``∇_η c(z̃)`` misses the dependence of ``z̃`` on ``η`` through ``θ`` (the bug of a
published port, :func:`test_check_rejects_rebar_that_ignores_theta_in_the_conditional_sample`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
from scipy.stats import norm

from dcvbench.estimators import (
    Estimator,
    EstimatorSettings,
    ProblemShape,
    build_estimator,
    estimator_info,
    estimator_names,
    get_estimator,
)
from dcvbench.estimators.relax import Rebar
from dcvbench.measure.variance import resample_variance
from dcvbench.problems.toy import OBJECTIVES, exact_gradient, make_objective

DIM = 6
DRAWS = 50_000
KS = (2, 3, 4, 5)
LEARNED_DRAWS = 10_000
LEARNED_KS = (1, 3)
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


def _train_control(estimator: Estimator) -> None:
    """Train λ, s (and ψ) for 100 steps at another point of another objective, as a run would."""
    f = make_objective("separable", DIM)
    logits = torch.logit(torch.linspace(0.2, 0.9, DIM, dtype=torch.float64)).repeat(8, 1)  # [8, DIM]
    generator = torch.Generator().manual_seed(11)
    for _ in range(100):
        estimator.update(estimator(logits, f, 1, generator))
    assert float(estimator.temperature.detach()) != 0.5 and float(estimator.scale.detach()) != 1.0


def _randomise_control(estimator: Estimator) -> None:
    """λ, s far from their initial values; for relax, every weight of ``r_ψ`` random (non-zero r)."""
    generator = torch.Generator().manual_seed(13)
    with torch.no_grad():
        estimator.log_temperature.fill_(math.log(1.7))
        estimator.scale.fill_(0.6)
        for param in estimator.network.parameters() if estimator.network is not None else ():
            # Scaled so that r_ψ is of the order of f: a control that dominates g would hide a bias.
            param.copy_(0.3 * torch.randn(param.shape, generator=generator, dtype=param.dtype))


@dataclass(frozen=True)
class Variant:
    """One configuration of a registered estimator, built as the jobs build it (for the toy's shape)."""

    name: str
    settings: EstimatorSettings = field(default_factory=EstimatorSettings)
    prepare: Callable[[Estimator], None] | None = None
    label: str = ""
    ks: tuple[int, ...] = KS
    draws: int = DRAWS

    def build(self) -> Estimator:
        # Learned parts in the toy's float64 too, so that the check sees the estimator, not rounding.
        estimator = build_estimator(self.name, self.settings, ProblemShape(DIM)).to(LOGITS.dtype)
        if self.prepare is not None:
            self.prepare(estimator)
        return estimator


def _learned_control_variants(name: str) -> list[Variant]:
    fewer = {"ks": LEARNED_KS, "draws": LEARNED_DRAWS}
    return [
        Variant(name, label=name, **fewer),
        Variant(name, EstimatorSettings(control_lr=1e-2), _train_control, label=f"{name}-trained", **fewer),
        Variant(name, prepare=_randomise_control, label=f"{name}-random", **fewer),
    ]


# Estimators with options worth testing separately; every other unbiased estimator in the registry is
# tested with its defaults, so a newly registered unbiased estimator is covered automatically.
SPECIAL_VARIANTS = {
    "reinforce-ema": [Variant("reinforce-ema", prepare=_set_ema_baseline, label="reinforce-ema-c")],
    "rloo-dcv": [
        Variant("rloo-dcv", EstimatorSettings(alpha=-0.3), label="rloo-dcv-a-0.3"),
        Variant("rloo-dcv", EstimatorSettings(alpha=0.0), label="rloo-dcv-a0"),
    ],
    "rebar": _learned_control_variants("rebar"),
    "relax": _learned_control_variants("relax"),
}


def _on_the_toy(name: str) -> bool:
    info = estimator_info(name)
    return info.unbiased and "toy" in info.problems


def _cases() -> list:
    cases = []
    for name in estimator_names():
        info = estimator_info(name)
        if not _on_the_toy(name):
            continue
        for variant in SPECIAL_VARIANTS.get(name, [Variant(name, label=name)]):
            for k in variant.ks:
                if k < info.min_k or (info.even_k and k % 2):
                    continue
                for objective in OBJECTIVES:
                    cases.append(pytest.param(variant, k, objective, id=f"{variant.label}-K{k}-{objective}"))
    return cases


CASES = _cases()
# Bonferroni over every coordinate of every case; two-sided.
Z_CRITICAL = float(norm.isf(FAMILY_ALPHA / (2 * len(CASES) * COORDS)))


def max_bias_z(estimator: Estimator, k: int, objective: str, seed: int, draws: int = DRAWS) -> float:
    f = make_objective(objective, DIM)
    result = resample_variance(estimator, LOGITS, f, k, draws, torch.Generator().manual_seed(seed))
    assert result.draws == draws
    return float(result.bias_z(exact_gradient(f, LOGITS)).max())


def test_threshold_is_a_sensible_family_wise_bound():
    # Sanity of the derivation above: dozens of cases, a threshold near 5 standard errors.
    assert len(CASES) >= 90
    assert 4.5 < Z_CRITICAL < 5.5


def test_every_unbiased_estimator_is_covered():
    covered = {param.values[0].name for param in CASES}
    assert covered == {name for name in estimator_names() if _on_the_toy(name)}
    expected = {"reinforce", "rloo", "rloo-dcv", "muprop", "exact-baseline", "arm", "disarm", "arms"}
    assert expected | {"rebar", "relax"} <= covered


@pytest.mark.parametrize(("variant", "k", "objective"), CASES)
def test_mean_matches_exact_gradient(variant: Variant, k: int, objective: str):
    z = max_bias_z(variant.build(), k, objective, seed=1000 + k, draws=variant.draws)
    assert z < Z_CRITICAL, f"{variant.label} K={k} {objective}: max |z| = {z:.2f} ≥ {Z_CRITICAL:.2f}"


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_check_rejects_concrete(objective: str):
    # The same check, same draws and threshold, on a biased estimator: it must reject.
    z = max_bias_z(get_estimator("concrete", temperature=1.0), 2, objective, seed=1002)
    assert z > Z_CRITICAL, f"concrete at λ = 1 not rejected on {objective}: max |z| = {z:.2f}"


class RebarIgnoringTheta(Rebar):
    """The published bug: ``θ`` inside ``v'`` detached, so ``∇_η c(z̃)`` follows only ``z̃``'s direct
    dependence on ``η`` (DESIGN §3.4's formula, otherwise as it stands)."""

    def conditional(self, logits: torch.Tensor, b: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        probs = torch.sigmoid(logits).detach()
        noise = b * (v * probs + 1.0 - probs) + (1.0 - b) * v * (1.0 - probs)  # v'
        return logits + torch.log(noise) - torch.log1p(-noise)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_check_rejects_rebar_that_ignores_theta_in_the_conditional_sample(objective: str):
    # The check of the learned-control cases, with their draws and threshold, at K = 1.
    z = max_bias_z(RebarIgnoringTheta().to(LOGITS.dtype), 1, objective, seed=1001, draws=LEARNED_DRAWS)
    assert z > Z_CRITICAL, f"REBAR without dθ/dη in z̃ not rejected on {objective}: max |z| = {z:.2f}"
