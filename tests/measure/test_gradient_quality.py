"""Gradient quality against the exact gradient: bias norm, MSE and cosine, and their standard errors."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from scipy.stats import chi2
from torch.testing import assert_close

from dcvbench.estimators import Estimate, Estimator, EstimatorInfo, get_estimator
from dcvbench.measure.variance import ERROR_GROUPS, ErrorMoments, resample_variance
from dcvbench.problems.toy import exact_gradient, make_objective

DIM = 10


def _toy() -> tuple[torch.Tensor, object, torch.Tensor]:
    """The sum-square toy at seeded θ ∈ (0.1, 0.9): logits [1, D], f, and its exact gradient [1, D]."""
    probs = 0.1 + 0.8 * torch.rand(1, DIM, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    logits = torch.logit(probs)
    f = make_objective("sum-square", DIM)
    return logits, f, exact_gradient(f, logits)


def _quality(name: str, draws: int, seed: int, k: int = 2):
    logits, f, exact = _toy()
    generator = torch.Generator().manual_seed(seed)
    result = resample_variance(get_estimator(name), logits, f, k, draws, generator, exact=exact)
    return result, exact


class _Constant(Estimator):
    """A fake estimator whose every estimate is ``value``: no variance at all."""

    info = EstimatorInfo(name="constant", summary="test double", unbiased=False, needs_input_grad=False)

    def __init__(self, value: torch.Tensor):
        super().__init__()
        self.value = value  # [B, D]

    def estimate(self, logits, f, noise):
        grad = self.value.repeat(logits.shape[0] // self.value.shape[0], 1)  # [c·B, D]
        return Estimate(grad=grad, values=torch.zeros(noise.shape[0], logits.shape[0]))


@pytest.mark.parametrize(
    ("factor", "bias_norm", "cosine"), [(1.0, 0.0, 1.0), (3.0, 2.0, 1.0), (-1.0, 2.0, -1.0)]
)
def test_a_noiseless_estimator_has_its_quality_exactly(factor: float, bias_norm: float, cosine: float):
    logits, f, exact = _toy()
    result = resample_variance(_Constant(factor * exact), logits, f, 2, 300, torch.Generator(), exact=exact)
    quality = result.errors.quality
    scale = float(exact.square().sum())
    assert quality.bias_norm == pytest.approx(bias_norm, abs=1e-12)
    assert quality.mse == pytest.approx((factor - 1) ** 2 * scale, rel=1e-12, abs=1e-30)
    assert quality.cosine == pytest.approx(cosine, rel=1e-12)
    # Nothing varies, so nothing is uncertain.
    assert quality.bias_norm_se == pytest.approx(0.0, abs=1e-7)
    assert quality.mse_se == pytest.approx(0.0, abs=1e-20)
    assert quality.cosine_se == pytest.approx(0.0, abs=1e-7)


def test_a_zero_estimate_has_cosine_zero_and_no_direction_has_no_cosine():
    exact = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
    grads = torch.zeros(8, 1, 3, dtype=torch.float64)
    assert ErrorMoments.of(grads, exact).quality.cosine == 0.0
    quality = ErrorMoments.of(grads + 1.0, torch.zeros_like(exact)).quality
    assert math.isnan(quality.bias_norm) and math.isnan(quality.cosine)
    assert quality.mse == pytest.approx(3.0)  # the MSE needs no direction


def test_merged_chunks_give_the_one_shot_sums_whatever_the_cuts():
    generator = torch.Generator().manual_seed(1)
    grads = torch.randn(203, 2, 3, generator=generator, dtype=torch.float64)  # [M, B, D]
    exact = torch.randn(2, 3, generator=generator, dtype=torch.float64)
    whole = ErrorMoments.of(grads, exact)
    for cuts in ([1, 2, 40], [31, 64, 65, 200], list(range(5, 203, 17))):
        pieces = [ErrorMoments.of(grads[lo:hi], exact) for lo, hi in itertools.pairwise([0, *cuts, 203])]
        merged = pieces[0]
        for piece in pieces[1:]:
            merged = merged.merge(piece)
        # Draw m is in group m mod G whatever the chunks: the group sums, and so the s.e., are the same.
        assert torch.equal(merged.group_counts, whole.group_counts)
        assert_close(merged.group_sums, whole.group_sums, rtol=1e-13, atol=1e-13)
        for name, value in vars(whole.quality).items():
            assert getattr(merged.quality, name) == pytest.approx(value, rel=1e-9), name
    larger = 203 % ERROR_GROUPS  # groups of 7 draws; the others have 6
    assert whole.group_counts.tolist() == [7] * larger + [6] * (ERROR_GROUPS - larger)


def test_gaussian_draws_of_known_bias_and_covariance():
    # ĝ = ∇ + b + L z: ‖b‖/‖∇‖, E‖ĝ − ∇‖² = ‖b‖² + tr LLᵀ, both known.
    generator = torch.Generator().manual_seed(2)
    exact = torch.randn(1, 40, generator=generator, dtype=torch.float64)
    bias = 0.1 * torch.randn(1, 40, generator=generator, dtype=torch.float64)
    mix = torch.randn(40, 40, generator=generator, dtype=torch.float64) / math.sqrt(40)
    grads = exact + bias + torch.randn(20_000, 1, 40, generator=generator, dtype=torch.float64) @ mix.T
    quality = ErrorMoments.of(grads, exact).quality
    expected_norm = float(bias.norm() / exact.norm())
    expected_mse = float(bias.square().sum() + mix.square().sum())
    assert abs(quality.bias_norm - expected_norm) < 4 * quality.bias_norm_se
    assert abs(quality.mse - expected_mse) < 4 * quality.mse_se


# A bias norm is never negative: for an unbiased estimator its estimate √Û₊ has a skewed distribution,
# and with the s.e. √(Û₊ + s) − √Û₊ (s the s.e. of Û), bias_norm > k·se exactly when Û/s > k²/(2k + 1).
# k = 7: Û/s > 3.27, which an unbiased Û (about normal, mean 0) passes with probability 5e-4.
UNBIASED_K = 7


@pytest.mark.parametrize("name", ["rloo", "disarm", "exact-baseline"])
def test_an_unbiased_estimators_bias_norm_is_consistent_with_zero(name: str):
    result, exact = _quality(name, 20_000, seed=3)
    quality = result.errors.quality
    assert quality.bias_norm <= UNBIASED_K * quality.bias_norm_se
    # MSE = ‖bias‖² + tr Var, within the MSE's s.e. (tr Var = D × the mean per-coordinate variance).
    scale = float(exact.square().sum())
    assert abs(quality.mse - (quality.bias_norm**2 * scale + DIM * result.variance)) < quality.mse_se


def test_concretes_bias_norm_is_not_zero_and_its_mse_adds_up():
    result, exact = _quality("concrete", 20_000, seed=3)
    quality = result.errors.quality
    assert quality.bias_norm > UNBIASED_K * quality.bias_norm_se  # biased at λ = 2/3: measured 0.32, 60 s.e.
    scale = float(exact.square().sum())
    # With the bias resolved (Û > 0) the identity mse = Û + tr S holds to rounding.
    assert quality.mse == pytest.approx(quality.bias_norm**2 * scale + DIM * result.variance, rel=1e-9)


STUDIES = 30
# Two-sided 0.1 % bounds of (spread² over 30 studies) / (mean reported s.e.²): χ²₂₉ / 29.
LOW, HIGH = chi2.ppf([0.0005, 0.9995], STUDIES - 1) / (STUDIES - 1)


@pytest.mark.parametrize(
    ("name", "measures"),
    [("concrete", ("bias_norm", "mse", "cosine")), ("rloo", ("mse", "cosine"))],
)
def test_the_standard_errors_match_the_spread_over_independent_studies(name: str, measures: tuple[str, ...]):
    qualities = [_quality(name, 2_000, seed=100 + seed)[0].errors.quality for seed in range(STUDIES)]
    for measure in measures:
        values = torch.tensor([getattr(q, measure) for q in qualities], dtype=torch.float64)
        reported = torch.tensor([getattr(q, f"{measure}_se") for q in qualities], dtype=torch.float64)
        ratio = float(values.var() / reported.square().mean())
        assert LOW < ratio < HIGH, (measure, ratio)


def test_an_unbiased_estimators_bias_norm_se_is_not_too_small():
    # Near zero bias the s.e. is √s, the noise floor (class docstring): at least the spread of the norm.
    qualities = [_quality("rloo", 2_000, seed=200 + seed)[0].errors.quality for seed in range(STUDIES)]
    values = torch.tensor([q.bias_norm for q in qualities], dtype=torch.float64)
    reported = torch.tensor([q.bias_norm_se for q in qualities], dtype=torch.float64)
    assert float(values.var() / reported.square().mean()) < HIGH
