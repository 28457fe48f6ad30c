"""Gapped straight-through (``gst``), for bits and for classes, both gap variants.

The reference is the authors' construction (``chijames/GST``, ``gst_mover``) written here another
way: ``m = η + move − move₂`` with ``move = (max η − η)·D`` and ``move₂ = max(0, η − max η + γ)·(1 − D)``
from detached logits, and ``z = softmax(m/τ)``; bits as the two-class case with logits ``[η, 0]``.
Checked at each sample by autograd through ``f(D + z − stop_gradient(z))`` (float64, same noise), so
the bits' closed form is checked against the two-class construction too; in expectation, the
estimator's mean against the expression's expectation enumerated over every code (``|z|`` per
coordinate below a Bonferroni threshold over every coordinate of the file, family-wise level 1e-3).
"""

from __future__ import annotations

import pytest
import torch
from scipy.stats import norm
from torch.testing import assert_close

from dcvbench.estimators import EstimatorError, check_settings, estimator_info, get_estimator
from dcvbench.estimators.gst import gapped_classes
from dcvbench.latent import CATEGORICAL, family_named
from dcvbench.latent.noise import one_hot_argmax
from dcvbench.measure.variance import resample_variance
from dcvbench.problems.categorical_toy import (
    random_categorical_logits,
)
from tests.estimators.straight_through import CASES, COORDINATES, DRAWS, case, enumerated_expectation

GAPS = ("1", "p")
FAMILY_ALPHA = 1e-3
Z_CRITICAL = float(
    norm.isf(FAMILY_ALPHA / (2 * len(GAPS) * sum(COORDINATES.values())))
)  # one case per family, gap


def _as_classes(latent: str, logits, b, f):
    """Categorical logits, one-hot samples and objective: bits as two classes ``[η, 0]``, ``[b, 1 − b]``."""
    if latent == "categorical":
        return logits, b, f
    return (
        torch.stack([logits, torch.zeros_like(logits)], -1),
        torch.stack([b, 1.0 - b], -1),
        lambda d: f(d[..., 0]),
    )


def authors_gapped_logits(logits: torch.Tensor, one_hot: torch.Tensor, gap: str) -> torch.Tensor:
    """``η + move − move₂`` of the authors' ``gst_mover``, shifts from ``logits`` (treated as fixed)."""
    probs = torch.softmax(logits, -1)
    top = logits.max(-1, keepdim=True).values
    move = (top - logits) * one_hot
    chosen = (probs * one_hot).sum(-1, keepdim=True)
    gamma = -torch.log(1.0 - chosen) / chosen if gap == "p" else 1.0
    move2 = (logits - top + gamma).clamp(min=0.0) * (1.0 - one_hot)
    return move - move2  # the shift: add to the (attached) logits


def gst_by_autograd(latent: str, logits, b, f, temperature: float, gap: str) -> torch.Tensor:
    """Autograd through the authors' trick, per sample mean over K: ``[B, *event]``."""
    class_logits, one_hot, on_classes = _as_classes(latent, logits, b, f)
    eta = class_logits.clone().requires_grad_(True)
    z = torch.softmax((eta + authors_gapped_logits(class_logits, one_hot, gap)) / temperature, -1)
    (grad,) = torch.autograd.grad(on_classes(one_hot + z - z.detach()).mean(0).sum(), eta)
    return grad if latent == "categorical" else grad[..., 0]


def gst_expression(latent: str, logits, b, g, temperature: float, gap: str) -> torch.Tensor:
    """``J(z)ᵀ g / τ`` with the matrix written out, ``z = softmax(m/τ)``, per sample."""
    class_logits, one_hot, _ = _as_classes(latent, logits, b, None)
    class_g = g if latent == "categorical" else torch.stack([g, torch.zeros_like(g)], -1)
    z = torch.softmax((class_logits + authors_gapped_logits(class_logits, one_hot, gap)) / temperature, -1)
    jacobian = torch.diag_embed(z) - z.unsqueeze(-1) * z.unsqueeze(-2)  # [..., C, C]
    product = torch.einsum("...ij,...j->...i", jacobian, class_g) / temperature
    return product if latent == "categorical" else product[..., 0]


@pytest.mark.parametrize(("latent", "objective"), CASES)
@pytest.mark.parametrize("gap", GAPS)
@pytest.mark.parametrize("temperature", [0.5, 1.0])
def test_gst_is_the_authors_gapped_straight_through(
    latent: str, objective: str, gap: str, temperature: float
):
    logits, f = case(latent, objective)
    estimator = get_estimator("gst", latent=latent, temperature=temperature, gst_gap=gap)
    noise = estimator.sample(logits, 4, torch.Generator().manual_seed(3))  # [K, B, *event]
    estimate = estimator.estimate(logits, f, noise)
    b = family_named(latent).sample(logits, noise)
    assert_close(
        estimate.grad, gst_by_autograd(latent, logits, b, f, temperature, gap), rtol=1e-12, atol=1e-14
    )
    assert_close(estimate.values.detach(), f(b))
    assert float(estimate.stats["temperature"]) == temperature


@pytest.mark.parametrize("gap", GAPS)
def test_the_sample_leads_the_gapped_logits_by_the_gap(gap: str):
    logits = random_categorical_logits(5, 4, scale=3.0, seed=2, rows=3)  # [B, N, C]
    b = CATEGORICAL.sample(logits, torch.rand(6, *logits.shape, generator=torch.Generator().manual_seed(4)))
    gapped = gapped_classes(logits, b, gap)  # [K, B, N, C]
    assert torch.equal(one_hot_argmax(gapped), b)
    probs = torch.softmax(logits, -1)
    chosen = (probs * b).sum(-1)  # π_b
    gamma = -torch.log1p(-chosen) / chosen if gap == "p" else torch.ones_like(chosen)
    lead = (gapped * b).sum(-1) - torch.where(b > 0, -torch.inf, gapped).amax(-1)
    assert (lead >= gamma - 1e-12).all()
    # Where a class already trails by more than the gap, it keeps its logit.
    top = logits.amax(-1, keepdim=True)
    untouched = (b == 0) & (logits <= top - gamma.unsqueeze(-1))
    assert torch.equal(gapped[untouched], logits.expand_as(gapped)[untouched])


def test_the_p_gap_is_accurate_where_float32_rounds_the_probability_to_one():
    logits = torch.tensor([[[30.0, -30.0, 0.0]]], dtype=torch.float64)  # π ≈ (1, e^{−60}, e^{−30})
    b = torch.eye(3, dtype=torch.float64).reshape(3, 1, 1, 3)  # each class in turn: [K, 1, 1, 3]
    in_double = gapped_classes(logits, b, "p")
    in_single = gapped_classes(logits.float(), b.float(), "p")
    assert torch.isfinite(in_single).all()
    assert_close(in_single.double(), in_double, rtol=1e-6, atol=1e-5)
    # Sample the first class: γ = −log(1 − π)/π = 30 + O(e^{−30}), so the third class moves to 30 − γ ≈ 0.
    assert float(in_single[0, 0, 0, 2]) == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("latent", ["binary", "categorical"])
@pytest.mark.parametrize("gap", GAPS)
def test_mean_is_the_enumerated_expectation_of_the_gapped_expression(latent: str, gap: str):
    temperature = 0.7
    logits, f = case(latent, "quadratic-form")
    target = enumerated_expectation(
        latent, logits, f, lambda codes, g: gst_expression(latent, logits, codes, g, temperature, gap)
    )
    estimator = get_estimator("gst", latent=latent, temperature=temperature, gst_gap=gap)
    measured = resample_variance(estimator, logits, f, 1, DRAWS, torch.Generator().manual_seed(11))
    z = float(measured.bias_z(target).max())
    assert z < Z_CRITICAL, f"{latent} gap {gap}: max |z| = {z:.2f}"


def test_options_defaults_and_refusals():
    info = estimator_info("gst")
    assert not info.unbiased and info.relaxation == "straight-through" and info.evals(3) == 3
    estimator = get_estimator("gst", latent="categorical")
    assert estimator.gst_gap == "1" and estimator.temperature == 1.0
    with pytest.raises(EstimatorError, match="--gst-gap must be 1 or p, got 'q'"):
        check_settings({"gst_gap": "q"})
    with pytest.raises(EstimatorError, match=r"--gst-gap must be 1 or p, got '0\.5'"):
        get_estimator("gst", gst_gap="0.5")
