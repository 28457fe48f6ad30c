"""Encoder-gradient variance of the VAE: the EMA definition and the batched resample path."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from dcvbench.estimators import get_estimator
from dcvbench.measure.vae_variance import (
    EMAVariance,
    encoder_vjp,
    resample_encoder_variance,
)
from dcvbench.measure.variance import Moments, draw_estimates
from dcvbench.problems.vae import VAE, NegativeELBO

F64 = torch.float64


def make_model(arch: str = "linear") -> VAE:
    mean = torch.full((784,), 0.3, dtype=F64)
    return VAE(latent=8, arch=arch, input_mean=mean, dtype=F64, generator=torch.Generator().manual_seed(0))


def binary_images(rows: int = 4) -> Tensor:
    generator = torch.Generator().manual_seed(1)
    return (torch.rand(rows, 784, generator=generator, dtype=F64) < 0.3).to(F64)


def encoder_gradients_by_backward(model: VAE, x: Tensor, grads: Tensor) -> Tensor:
    """The slow reference: one backward pass through the encoder per draw, ``[M, B, D] → [M, P]``."""
    rows = []
    for g in grads:
        model.zero_grad(set_to_none=True)
        model.encode(x).backward(g / x.shape[0])
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.encoder_parameters()]))
    model.zero_grad(set_to_none=True)
    return torch.stack(rows)


# -- EMA --------------------------------------------------------------------------------------


class _Param:
    """Stands in for a parameter: only ``.grad`` is read."""

    def __init__(self, grad: list[float]):
        self.grad = torch.tensor(grad, dtype=F64)


def test_ema_variance_matches_hand_computation():
    # Two steps, decay ½, parameters of sizes 2 and 1; g₁ = (1, 2 | 3), g₂ = (3, 0 | −1).
    # m₂ = ½(½ g₁) + ½ g₂ = (1.75, 0.5, 0.25);  v₂ = ½(½ g₁²) + ½ g₂² = (4.75, 1, 2.75)
    # v₂ − m₂² = (1.6875, 0.75, 2.6875), mean 41/24.
    ema = EMAVariance(decay=0.5)
    for step in ([[1.0, 2.0], [3.0]], [[3.0, 0.0], [-1.0]]):
        ema.update([_Param(g) for g in step])
    assert ema.value().dtype == F64
    assert float(ema.value()) == pytest.approx(41 / 24, rel=1e-12)
    # Bias-corrected: weights (¼, ½)/¾ = (⅓, ⅔) on (g₁, g₂), i.e. the weighted variance
    # (8/9, 8/9, 32/9), mean 16/9.
    ema.bias_correction = True
    assert float(ema.value()) == pytest.approx(16 / 9, rel=1e-12)


def test_ema_variance_state_round_trip():
    first, second = EMAVariance(decay=0.9), EMAVariance()
    first.update([_Param([1.0, -2.0])])
    second.load_state_dict(first.state_dict())
    for ema in (first, second):
        ema.update([_Param([0.5, 4.0])])
    assert float(second.value()) == float(first.value())
    assert second.decay == 0.9 and second.steps == 2


def test_ema_variance_refuses_missing_gradients():
    with pytest.raises(RuntimeError, match="no gradients"):
        EMAVariance().value()
    with pytest.raises(ValueError, match="no gradient"):
        EMAVariance().update([torch.zeros(2)])


# -- resample -----------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["linear", "nonlinear"])
def test_batched_encoder_vjp_equals_one_backward_per_draw(arch):
    model, x = make_model(arch), binary_images()
    grads = torch.randn(5, 4, 8, generator=torch.Generator().manual_seed(2), dtype=F64)  # [M, B, D]
    torch.testing.assert_close(encoder_vjp(model, x)(grads), encoder_gradients_by_backward(model, x, grads))


@pytest.mark.parametrize("arch", ["linear", "nonlinear"])
@pytest.mark.parametrize("name", ["rloo", "rloo-dcv", "disarm"])
def test_resample_variance_equals_the_backward_reference_on_the_same_draws(name, arch):
    model, x = make_model(arch), binary_images()
    estimator = get_estimator(name)
    k, draws, chunk = 2, 7, 3  # uneven chunks: 3 + 3 + 1
    result = resample_encoder_variance(
        model, estimator, x, k, draws, torch.Generator().manual_seed(3), chunk=chunk
    )
    with torch.no_grad():
        logits = model.encode(x)
    f = NegativeELBO(model, x, logits, generative_grads=False)
    chunks = draw_estimates(estimator, logits, f, k, draws, torch.Generator().manual_seed(3), chunk)
    grads = torch.cat([grads for grads, _ in chunks])  # [M, B, D]
    params = encoder_gradients_by_backward(model, x, grads)  # [M, P]
    assert result.draws == draws
    torch.testing.assert_close(result.param_moments.variance, Moments.of(params).variance)
    torch.testing.assert_close(result.param_moments.mean, params.mean(0))
    torch.testing.assert_close(result.logit_moments.variance, (grads / 4).var(0))
    assert result.param_variance == pytest.approx(float(params.var(0).mean()), rel=1e-10)
    assert result.logit_variance == pytest.approx(float((grads / 4).var(0).mean()), rel=1e-10)
    assert result.seconds > 0.0
    assert all(p.grad is None for p in model.parameters())  # measurement leaves no gradients


def test_measurement_leaves_the_estimators_state_alone():
    model, x = make_model(), binary_images()
    dcv, ema = get_estimator("rloo-dcv"), get_estimator("reinforce-ema")
    dcv.set_alpha(-0.3)
    ema.baseline.fill_(5.0)
    for estimator in (dcv, ema):
        resample_encoder_variance(model, estimator, x, 2, 6, torch.Generator().manual_seed(0))
    assert float(dcv.alpha.detach()) == pytest.approx(-0.3)
    assert float(ema.baseline) == 5.0


def test_variance_needs_two_draws():
    with pytest.raises(ValueError, match="at least 2 draws"):
        resample_encoder_variance(
            make_model(), get_estimator("rloo"), binary_images(), 2, 1, torch.Generator()
        )
