"""Every unbiased estimator's mean matches the exact toy gradient (DESIGN §7), for every latent family.

Two families of cases, each with its own points, draws and family-wise threshold: bits (below) and
categorical latents (after the binary tests, ``CATEGORICAL_*``).

Bits.
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

Categorical latents. As for bits: one case is (estimator variant, K, objective); each draws
``CATEGORICAL_DRAWS`` independent estimates at two rows of class probabilities at once — random
ones, and a row with one uniform and two peaked variables (largest probability 0.97, smallest
0.01) — and compares the per-coordinate mean with the exact gradient
(:func:`~dcvbench.problems.toy.exact_gradient`) through ``VarianceResult.bias_z``. Every estimator
registered for categorical latents that is unbiased on the toy is covered, written once for both
families (reinforce-ema, muprop and nvil included).

Threshold (family-wise). Under the null hypothesis every coordinate's z is approximately |N(0, 1)| (the
mean of 20,000 iid draws; the skewness of the mean is that of one draw over √20,000, and its first-order
effect cancels between the two tails of a two-sided test). With ``N_TESTS = cases × coordinates``
two-sided tests, Bonferroni gives ``z* = Φ⁻¹(1 − FAMILY_ALPHA / (2·N_TESTS))``, about 4.8 here: a correct
library fails this file with probability at most 0.1 % over seeds, and the seeds are fixed.

Power: the same check, draws and threshold reject the biased ``concrete``
(:func:`test_categorical_check_rejects_concrete`), and a double control variate corrected with only
the diagonal of the score covariance, ``π(1 − π) ⊙ ḡ`` as for bits
(:func:`test_categorical_check_rejects_a_diagonal_correction`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
from scipy.stats import norm

from dcvbench.estimators import (
    Estimate,
    Estimator,
    build_estimator,
    default_settings,
    estimator_info,
    estimator_names,
    get_estimator,
)
from dcvbench.estimators.relax_rebar import Rebar
from dcvbench.estimators.rloo_dcv import RLOODCV
from dcvbench.latent import CATEGORICAL
from dcvbench.measure.variance import resample_variance
from dcvbench.objectives import ProblemShape
from dcvbench.problems.categorical_toy import (
    CATEGORICAL_OBJECTIVES,
    make_categorical_objective,
)
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
    settings: dict = field(default_factory=dict)  # options beyond the toy's defaults
    prepare: Callable[[Estimator], None] | None = None
    label: str = ""
    ks: tuple[int, ...] = KS
    draws: int = DRAWS

    def build(self) -> Estimator:
        # Learned parts in the toy's float64 too, so that the check sees the estimator, not rounding.
        settings = {**default_settings("toy"), **self.settings}
        estimator = build_estimator(self.name, settings, ProblemShape(DIM)).to(LOGITS.dtype)
        if self.prepare is not None:
            self.prepare(estimator)
        return estimator


def _learned_control_variants(name: str) -> list[Variant]:
    fewer = {"ks": LEARNED_KS, "draws": LEARNED_DRAWS}
    return [
        Variant(name, label=name, **fewer),
        Variant(name, {"control_lr": 1e-2}, _train_control, label=f"{name}-trained", **fewer),
        Variant(name, prepare=_randomise_control, label=f"{name}-random", **fewer),
    ]


RODEO_KS = (2, 3, 4)


def _train_rodeo(estimator: Estimator) -> None:
    """Train α, β and ψ for 100 steps at another point of another objective, as a run would."""
    if estimator.family.name == "binary":
        f = make_objective("quadratic-form", DIM, seed=7)
        logits = torch.logit(torch.linspace(0.2, 0.9, DIM, dtype=torch.float64)).repeat(8, 1)  # [8, DIM]
    else:
        f = make_categorical_objective("separable", CATEGORICAL_VARIABLES, CATEGORICAL_CLASSES, seed=5)
        shape = (8, CATEGORICAL_VARIABLES, CATEGORICAL_CLASSES)
        logits = torch.randn(shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    generator = torch.Generator().manual_seed(11)
    for _ in range(100):
        estimator.update(estimator(logits, f, 2, generator))
    assert float(estimator.alpha.detach()) != 0.0 and float(estimator.beta.detach()) != 0.0


def _randomise_rodeo(estimator: Estimator) -> None:
    """α, β and every weight of ψ random, ψ of the order of f (a control that dominated g would hide a
    bias)."""
    generator = torch.Generator().manual_seed(13)
    with torch.no_grad():
        estimator.alpha.fill_(0.8)
        estimator.beta.fill_(-0.6)
        for param in estimator.network.parameters():
            param.copy_(0.3 * torch.randn(param.shape, generator=generator, dtype=param.dtype))


def _rodeo_variants() -> list[Variant]:
    fewer = {"ks": RODEO_KS, "draws": LEARNED_DRAWS}
    return [
        Variant("rodeo", label="rodeo", **fewer),
        Variant("rodeo", {"control_lr": 1e-2}, _train_rodeo, label="rodeo-trained", **fewer),
        Variant("rodeo", prepare=_randomise_rodeo, label="rodeo-random", **fewer),
    ]


# Estimators with options worth testing separately; every other unbiased estimator in the registry is
# tested with its defaults, so a newly registered unbiased estimator is covered automatically.
SPECIAL_VARIANTS = {
    "reinforce-ema": [Variant("reinforce-ema", prepare=_set_ema_baseline, label="reinforce-ema-c")],
    "rloo-dcv": [
        Variant("rloo-dcv", {"alpha": -0.3}, label="rloo-dcv-a-0.3"),
        Variant("rloo-dcv", {"alpha": 0.0}, label="rloo-dcv-a0"),
    ],
    "rebar": _learned_control_variants("rebar"),
    "relax": _learned_control_variants("relax"),
    "rodeo": _rodeo_variants(),
    # K = 1 too: IndeCateR's outer samples need no baseline from each other.
    "indecater": [Variant("indecater", label="indecater", ks=(1, 2, 3))],
}


def _on_the_toy(name: str) -> bool:
    info = estimator_info(name)
    return info.unbiased and "toy" in info.problems


def _cases() -> list:
    cases = []
    for name in estimator_names("binary"):
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
    assert covered == {name for name in estimator_names("binary") if _on_the_toy(name)}
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


# -- categorical latents -----------------------------------------------------------------------

CATEGORICAL_VARIABLES, CATEGORICAL_CLASSES = 3, 3
CATEGORICAL_DRAWS = 20_000
CATEGORICAL_KS = (2, 3, 4)


def categorical_toy_logits() -> torch.Tensor:
    """Two rows ``[2, N, C]`` float64: random class probabilities; one uniform and two peaked variables."""
    generator = torch.Generator().manual_seed(4321)
    spread = torch.empty(CATEGORICAL_VARIABLES, CATEGORICAL_CLASSES, dtype=torch.float64)
    spread = spread.exponential_(generator=generator)
    spread = spread / spread.sum(-1, keepdim=True)  # uniform on the simplex
    extremes = torch.tensor(
        [[1 / 3, 1 / 3, 1 / 3], [0.97, 0.02, 0.01], [0.01, 0.04, 0.95]], dtype=torch.float64
    )
    return torch.stack([spread, extremes]).log()  # logits: log-probabilities


CATEGORICAL_LOGITS = categorical_toy_logits()
CATEGORICAL_COORDS = CATEGORICAL_LOGITS.numel()


def _set_categorical_ema_baseline(estimator: Estimator) -> None:
    """Give reinforce-ema a non-zero baseline (a fixed c), as after a step of training."""
    f = make_categorical_objective("quadratic-form", CATEGORICAL_VARIABLES, CATEGORICAL_CLASSES)
    estimator.update(estimator(CATEGORICAL_LOGITS, f, 2, torch.Generator().manual_seed(7)))
    assert float(estimator.baseline) != 0.0


# Options worth testing separately (α = 0 is rloo exactly, tested in test_rloo_dcv.py), as
# (options, prepare, label); every other unbiased categorical estimator is tested with its defaults,
# so a newly registered one is covered automatically.
CATEGORICAL_SPECIAL = {
    "rloo-dcv": [({"alpha": -0.6}, None, "rloo-dcv-alpha-0.6")],
    "reinforce-ema": [({}, _set_categorical_ema_baseline, "reinforce-ema-c")],
    "rodeo": [
        ({}, None, "rodeo"),
        ({"control_lr": 1e-2}, _train_rodeo, "rodeo-trained"),
        ({}, _randomise_rodeo, "rodeo-random"),
    ],
}


def _categorical_cases() -> list:
    cases = []
    for name in estimator_names("categorical"):
        info = estimator_info(name)
        if not _on_the_toy(name):
            continue
        for options, prepare, label in CATEGORICAL_SPECIAL.get(name, [({}, None, name)]):
            for k in CATEGORICAL_KS:
                if k < info.min_k or (info.even_k and k % 2):
                    continue
                for objective in CATEGORICAL_OBJECTIVES:
                    case = (name, options, prepare, k, objective)
                    cases.append(pytest.param(*case, id=f"{label}-K{k}-{objective}"))
    return cases


CATEGORICAL_CASES = _categorical_cases()
CATEGORICAL_Z_CRITICAL = float(norm.isf(FAMILY_ALPHA / (2 * len(CATEGORICAL_CASES) * CATEGORICAL_COORDS)))


def categorical_max_bias_z(
    name: str, options: dict, k: int, objective: str, seed: int, prepare=None
) -> float:
    f = make_categorical_objective(objective, CATEGORICAL_VARIABLES, CATEGORICAL_CLASSES)
    estimator = get_estimator(name, latent="categorical", **options)
    if prepare is not None:
        prepare(estimator)
    generator = torch.Generator().manual_seed(seed)
    result = resample_variance(estimator, CATEGORICAL_LOGITS, f, k, CATEGORICAL_DRAWS, generator)
    assert result.draws == CATEGORICAL_DRAWS
    return float(result.bias_z(exact_gradient(f, CATEGORICAL_LOGITS)).max())


def test_categorical_the_points_include_peaked_and_uniform_distributions():
    probs = torch.softmax(CATEGORICAL_LOGITS, -1)
    assert float(probs.max()) >= 0.97 and float(probs.min()) <= 0.01
    assert torch.allclose(probs[1, 0], torch.full_like(probs[1, 0], 1.0 / CATEGORICAL_CLASSES))


def test_categorical_threshold_is_a_sensible_family_wise_bound():
    # reinforce, reinforce-ema, rloo, rloo-dcv, muprop, exact-baseline, nvil, carms, indecater and
    # three rodeo variants; K = 2, 3, 4; 2 objectives
    assert len(CATEGORICAL_CASES) == 72
    assert 4.5 < CATEGORICAL_Z_CRITICAL < 5.5


def test_every_unbiased_categorical_estimator_is_covered():
    covered = {param.values[0] for param in CATEGORICAL_CASES}
    on_the_toy = {name for name in estimator_names("categorical") if _on_the_toy(name)}
    expected = {"reinforce", "reinforce-ema", "rloo", "rloo-dcv", "muprop", "exact-baseline", "nvil"}
    expected |= {"carms", "indecater", "rodeo"}
    assert covered == on_the_toy == expected


@pytest.mark.parametrize(("name", "options", "prepare", "k", "objective"), CATEGORICAL_CASES)
def test_categorical_mean_matches_exact_gradient(name: str, options: dict, prepare, k: int, objective: str):
    z = categorical_max_bias_z(name, options, k, objective, seed=2000 + k, prepare=prepare)
    limit = CATEGORICAL_Z_CRITICAL
    assert z < limit, f"{name} {options} K={k} {objective}: max |z| = {z:.2f} ≥ {limit:.2f}"


@pytest.mark.parametrize("objective", CATEGORICAL_OBJECTIVES)
def test_categorical_check_rejects_concrete(objective: str):
    z = categorical_max_bias_z("concrete", {"temperature": 1.0}, 2, objective, seed=2002)
    assert z > CATEGORICAL_Z_CRITICAL, f"concrete at λ = 1 not rejected on {objective}: max |z| = {z:.2f}"


class _DiagonalCorrection(RLOODCV):
    """rloo-dcv with the binary correction ``α π(1 − π) ⊙ ḡ`` in place of ``α (diag(π) − ππᵀ) ḡ``: biased."""

    def estimate(self, logits, f, noise):
        estimate = super().estimate(logits, f, noise)
        probs = torch.softmax(logits, -1)
        input_grad = f.value_and_input_grad(CATEGORICAL.sample(logits, noise)).input_grad  # the same b
        mean_grad = input_grad.mean(0)  # ḡ
        full = probs * (mean_grad - (probs * mean_grad).sum(-1, keepdim=True))
        diagonal = probs * (1.0 - probs) * mean_grad
        alpha = estimate.stats["alpha"]
        return Estimate(grad=estimate.grad + alpha * (full - diagonal), values=estimate.values)


@pytest.mark.parametrize("objective", CATEGORICAL_OBJECTIVES)
def test_categorical_check_rejects_a_diagonal_correction(objective: str):
    f = make_categorical_objective(objective, CATEGORICAL_VARIABLES, CATEGORICAL_CLASSES)
    estimator = _DiagonalCorrection(CATEGORICAL, alpha=-0.6)
    generator = torch.Generator().manual_seed(2002)
    result = resample_variance(estimator, CATEGORICAL_LOGITS, f, 2, CATEGORICAL_DRAWS, generator)
    z = float(result.bias_z(exact_gradient(f, CATEGORICAL_LOGITS)).max())
    assert z > CATEGORICAL_Z_CRITICAL, f"a diagonal correction not rejected on {objective}: max |z| = {z:.2f}"
