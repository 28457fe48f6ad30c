"""Resample variance over logits of any trailing shape: categorical ``[B, N, C]`` draws, their chunking,
the variance-optimal α of the categorical double control variate, and encoder VJPs of the categorical VAE."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from dcvbench.estimators import Estimate, Estimator, EstimatorInfo, get_estimator
from dcvbench.measure import variance
from dcvbench.measure.vae_variance import encoder_vjp
from dcvbench.measure.variance import draw_estimates, optimal_alpha, resample_variance
from dcvbench.problems.categorical_toy import make_categorical_objective, random_categorical_logits
from dcvbench.problems.vae import VAE

F64 = torch.float64
ROWS, VARIABLES, CLASSES = 2, 3, 4


class _Replay(Estimator):
    """Hands out the rows of a fixed table of ``[B, N, C]`` estimates in order, whatever the chunks."""

    info = EstimatorInfo(name="replay", summary="test double", unbiased=True, needs_input_grad=False)

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = table  # [M, B, N, C]
        self.used = 0

    def estimate(self, logits, f, noise):
        assert noise.shape[1:] == logits.shape  # the noise has the logits' trailing shape
        draws = logits.shape[0] // self.table.shape[1]
        grad = self.table[self.used : self.used + draws].reshape(logits.shape)  # [c·B, N, C]
        self.used += draws
        return Estimate(grad=grad, values=torch.zeros(noise.shape[0], logits.shape[0]))


@pytest.mark.parametrize("chunk_elements", [1, 7 * 3 * ROWS * VARIABLES * CLASSES, 10**9])
def test_categorical_draws_keep_their_shape_and_chunking_changes_nothing(monkeypatch, chunk_elements: int):
    table = 5.0 + torch.randn(
        300, ROWS, VARIABLES, CLASSES, generator=torch.Generator().manual_seed(0), dtype=F64
    )
    monkeypatch.setattr(variance, "CHUNK_ELEMENTS", chunk_elements)
    logits = torch.zeros(ROWS, VARIABLES, CLASSES, dtype=F64)
    result = resample_variance(_Replay(table), logits, lambda b: b.sum((-2, -1)), 2, 300, torch.Generator())
    assert result.moments.mean.shape == (ROWS, VARIABLES, CLASSES)
    assert_close(result.moments.mean, table.mean(0), rtol=1e-14, atol=0)
    assert_close(result.moments.variance, table.var(0), rtol=1e-10, atol=0)


def test_tiled_rows_are_the_rows_of_the_logits():
    # Draw c of row r sits at tiled row c·B + r: with distinct rows, each estimate has its row's logits.
    logits = random_categorical_logits(VARIABLES, CLASSES, seed=1, rows=ROWS)
    seen = []

    class Recording(Estimator):
        info = EstimatorInfo(name="recording", summary="test double", unbiased=True, needs_input_grad=False)

        def estimate(self, tiled, f, noise):
            seen.append(tiled)
            return Estimate(grad=tiled.clone(), values=torch.zeros(noise.shape[0], tiled.shape[0]))

    chunks = list(
        draw_estimates(Recording(), logits, lambda b: b.sum((-2, -1)), 2, 5, torch.Generator(), chunk=3)
    )
    assert [grads.shape for grads, _ in chunks] == [
        (3, ROWS, VARIABLES, CLASSES),
        (2, ROWS, VARIABLES, CLASSES),
    ]
    for grads, control in chunks:
        assert control is None
        assert torch.equal(grads, logits.expand_as(grads))


def test_optimal_alpha_minimises_the_categorical_variance():
    logits = random_categorical_logits(20, CLASSES, seed=3)
    f = make_categorical_objective("quadratic-form", 20, CLASSES)
    alpha = optimal_alpha(
        get_estimator("rloo-dcv", latent="categorical", alpha=0.0),
        logits,
        f,
        2,
        4_000,
        torch.Generator().manual_seed(1),
    )

    def variance_at(value: float) -> float:
        # Paired: the same seed gives every α the same samples, so only α differs.
        estimator = get_estimator("rloo-dcv", latent="categorical", alpha=value)
        return resample_variance(estimator, logits, f, 2, 4_000, torch.Generator().manual_seed(2)).variance

    at_optimum = variance_at(alpha)
    # g = g₀ + α h: the variance is a parabola in α, so α* is below every other α on the same draws.
    # Measured: α* ≈ −0.99, and the variance at 0 (rloo) and at 2α* about 4.2 and 4.4 times that at α*.
    assert alpha < 0.0
    assert at_optimum < 0.5 * variance_at(0.0) and at_optimum < 0.5 * variance_at(2.0 * alpha)
    assert at_optimum < variance_at(0.8 * alpha) and at_optimum < variance_at(1.2 * alpha)


@pytest.mark.parametrize("arch", ["linear", "nonlinear"])
def test_encoder_vjp_of_the_categorical_vae_is_the_backward_pass(arch: str):
    model = VAE(
        VARIABLES, CLASSES, arch=arch, pixels=10, hidden=6, dtype=F64,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    x = (torch.rand(ROWS, 10, generator=torch.Generator().manual_seed(1), dtype=F64) < 0.3).to(F64)
    grads = torch.randn(3, ROWS, VARIABLES, CLASSES, generator=torch.Generator().manual_seed(2), dtype=F64)
    expected = []
    for g in grads:  # one backward pass per draw: the slow reference
        model.zero_grad(set_to_none=True)
        model.encode(x).backward(g / ROWS)
        expected.append(torch.cat([p.grad.reshape(-1) for p in model.encoder_parameters()]))
    assert_close(encoder_vjp(model, x)(grads), torch.stack(expected), rtol=1e-12, atol=1e-14)
