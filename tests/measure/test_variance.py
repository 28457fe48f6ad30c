"""Resample variance: exact merging of moments, chunking that cannot change a result, and α*."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

from dcvbench.estimators import Estimate, Estimator, EstimatorInfo, get_estimator
from dcvbench.measure import variance
from dcvbench.measure.variance import Moments, optimal_alpha, resample_variance
from dcvbench.problems.toy import make_objective


def _draws(count: int, rows: int = 2, dim: int = 3, seed: int = 0) -> torch.Tensor:
    """Estimates with an offset far larger than their spread (where naive Σx² − n·mean² fails)."""
    generator = torch.Generator().manual_seed(seed)
    return 1e3 + torch.randn(count, rows, dim, generator=generator, dtype=torch.float64)  # [M, B, D]


@settings(max_examples=30, deadline=None, derandomize=True, database=None)
@given(cuts=st.lists(st.integers(1, 199), max_size=6, unique=True))
def test_merged_moments_equal_the_one_shot_moments(cuts: list[int]):
    grads = _draws(200)
    bounds = [0, *sorted(cuts), 200]
    pieces = [Moments.of(grads[lo:hi]) for lo, hi in itertools.pairwise(bounds)]
    merged = pieces[0]
    for piece in pieces[1:]:
        merged = merged.merge(piece)
    whole = Moments.of(grads)
    assert merged.count == whole.count == 200
    assert_close(merged.mean, whole.mean, rtol=1e-14, atol=0)
    assert_close(merged.squares, whole.squares, rtol=1e-10, atol=0)
    assert_close(merged.variance, grads.var(0, unbiased=True), rtol=1e-10, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_moments_leave_the_estimates_alone(dtype: torch.dtype):
    # Moments.of works in place on its float64 copy: never on the caller's tensor.
    grads = _draws(5).to(dtype)
    before = grads.clone()
    moments = Moments.of(grads)
    assert torch.equal(grads, before)
    assert_close(moments.variance, grads.to(torch.float64).var(0), rtol=1e-10, atol=0)


def test_merge_of_single_draws_and_in_any_order():
    grads = _draws(7)
    ones = [Moments.of(grads[i : i + 1]) for i in range(7)]
    forward, backward = ones[0], ones[-1]
    for moment in ones[1:]:
        forward = forward.merge(moment)
    for moment in reversed(ones[:-1]):
        backward = backward.merge(moment)
    for merged in (forward, backward):
        assert_close(merged.variance, grads.var(0), rtol=1e-10, atol=0)
        assert_close(merged.mean, grads.mean(0), rtol=1e-14, atol=0)


class _Replay(Estimator):
    """A fake estimator that hands out the rows of a fixed table of estimates, in order.

    Whatever the chunk sizes, the draws are the same, so a resample result must not depend on them.
    """

    info = EstimatorInfo(name="replay", summary="test double", unbiased=True, needs_input_grad=False)

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = table  # [M, B, D]
        self.used = 0
        self.calls = 0

    def estimate(self, logits, f, noise):
        rows = logits.shape[0] // self.table.shape[1]  # draws in this chunk
        grad = self.table[self.used : self.used + rows].reshape(logits.shape)  # [c·B, D]
        self.used += rows
        self.calls += 1
        return Estimate(grad=grad, values=torch.zeros(noise.shape[0], logits.shape[0]))


@pytest.mark.parametrize("chunk_elements", [1, 7 * 3 * 2 * 3, 64 * 3 * 2 * 3, 10**9])
def test_resample_variance_does_not_depend_on_chunking(monkeypatch, chunk_elements: int):
    draws, k = 500, 2
    table = _draws(draws, seed=4)  # [M, B, D]
    logits = torch.zeros(table.shape[1:], dtype=torch.float64)
    monkeypatch.setattr(variance, "CHUNK_ELEMENTS", chunk_elements)
    estimator = _Replay(table)
    result = resample_variance(estimator, logits, lambda b: b.sum(-1), k, draws, torch.Generator())
    # Chunks of CHUNK_ELEMENTS // ((K + 1)·B·D) draws, at least one: 1, 7, 64 and all 500 here.
    chunk = max(1, min(draws, chunk_elements // ((k + 1) * table[0].numel())))
    assert estimator.calls == -(-draws // chunk)
    assert estimator.used == result.draws == draws
    assert_close(result.moments.mean, table.mean(0), rtol=1e-14, atol=0)
    assert_close(result.moments.variance, table.var(0), rtol=1e-10, atol=0)
    assert result.variance == pytest.approx(float(table.var(0).mean()), rel=1e-10)


def test_chunked_real_estimator_agrees_statistically(monkeypatch):
    # Different chunkings draw different uniforms, so only the statistics agree: the means of the two
    # runs differ by less than 5 standard errors of their difference, in every coordinate.
    logits = torch.tensor([[0.3, -1.0, 2.0, 0.0]], dtype=torch.float64)
    f = make_objective("sum-square", 4)
    whole = resample_variance(get_estimator("rloo"), logits, f, 3, 20_000, torch.Generator().manual_seed(1))
    monkeypatch.setattr(variance, "CHUNK_ELEMENTS", 1000)
    chunked = resample_variance(get_estimator("rloo"), logits, f, 3, 20_000, torch.Generator().manual_seed(2))
    assert chunked.draws == whole.draws == 20_000
    standard_error = ((whole.moments.variance + chunked.moments.variance) / 20_000).sqrt()
    assert ((whole.moments.mean - chunked.moments.mean).abs() < 5 * standard_error).all()


def test_bias_z_is_the_error_in_standard_errors():
    table = _draws(400, seed=6)
    result = variance.VarianceResult(Moments.of(table), seconds=1.0)
    exact = table.mean(0) + 2.0 * (table.var(0) / 400).sqrt()
    assert_close(result.bias_z(exact), torch.full_like(exact, 2.0), rtol=1e-10, atol=0)
    # No error and no spread: z = 0, not NaN.
    flat = variance.VarianceResult(Moments.of(torch.ones(5, 1, 2, dtype=torch.float64)), seconds=1.0)
    assert torch.equal(flat.bias_z(torch.ones(1, 2)), torch.zeros(1, 2, dtype=torch.float64))


def test_too_few_draws_is_an_error():
    with pytest.raises(ValueError, match="at least 2 draws"):
        resample_variance(
            get_estimator("rloo"), torch.zeros(1, 2), make_objective("sum-square", 2), 2, 1, torch.Generator()
        )


# The variance of g = g₀ + α h is a parabola in α with its minimum at α*; at 0 and at 2α* it is the
# same, higher value. On the published toy at θ = 0.7 (D = 200, K = 2) rloo-dcv's variance at α* is
# about 1.3 % of rloo's (tests/estimators/test_dcv.py), so the gaps below are about 75-fold.
TOY_DIM, TOY_TARGET = 200, 0.499


def _toy():
    logits = torch.full(
        (1, TOY_DIM), torch.logit(torch.tensor(0.7, dtype=torch.float64)).item(), dtype=torch.float64
    )
    return logits, make_objective("separable", TOY_DIM, target=TOY_TARGET)


def test_optimal_alpha_minimises_the_variance():
    logits, f = _toy()
    alpha = optimal_alpha(
        get_estimator("rloo-dcv", alpha=0.0), logits, f, 2, 4_000, torch.Generator().manual_seed(1)
    )
    assert alpha != 0.0

    def variance_at(value: float) -> float:
        # Paired: the same seed gives every α the same samples, so only α differs.
        estimator = get_estimator("rloo-dcv", alpha=value)
        return resample_variance(estimator, logits, f, 2, 4_000, torch.Generator().manual_seed(2)).variance

    at_optimum, at_zero, at_double = variance_at(alpha), variance_at(0.0), variance_at(2.0 * alpha)
    # Measured: both ratios ≈ 0.013. Bound 0.2: fifteen-fold margin, far beyond sampling error (the
    # relative s.e. of each variance is a few per cent, and paired draws share most of it).
    assert at_optimum < 0.2 * at_zero
    assert at_optimum < 0.2 * at_double
    # And α* is the bottom, not just a good point: nearby values do worse on the same draws.
    assert at_optimum < variance_at(0.8 * alpha) and at_optimum < variance_at(1.2 * alpha)


def test_optimal_alpha_does_not_depend_on_the_estimators_current_alpha():
    # g₀ is recovered as g − α h with the estimator's own α, so α* is the same whatever α it holds.
    logits, f = _toy()
    found = [
        optimal_alpha(
            get_estimator("rloo-dcv", alpha=start), logits, f, 2, 1_000, torch.Generator().manual_seed(3)
        )
        for start in (0.0, -0.5, 1.7)
    ]
    assert found[1] == pytest.approx(found[0], rel=1e-9)
    assert found[2] == pytest.approx(found[0], rel=1e-9)
