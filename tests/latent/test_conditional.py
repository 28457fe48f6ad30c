"""The conditional Gumbel sampler (top-down): its maximum is at the class it is given, given a class it
is the Gumbel perturbation conditioned by rejection, and with the class drawn by Gumbel-max it is the
unconditional Gumbel perturbation.

Distribution tests are two-sample Kolmogorov–Smirnov tests, one per coordinate ``x_i = η_i + G_i``
and per within-variable difference ``x_i − x_j`` (the differences see the joint law, which the
softmax of Gumbel-Rao depends on), Bonferroni over every test of the file at a family-wise level of
1e-3. Fixed seeds, float64.
"""

from __future__ import annotations

import itertools

import torch
from scipy.stats import ks_2samp

from dcvbench.latent import CATEGORICAL
from dcvbench.latent.conditional import conditional_gumbel
from dcvbench.latent.noise import gumbel_from_uniform, one_hot_argmax, uniform_noise

FAMILY_ALPHA = 1e-3
CLASSES = 4
DRAWS = 40_000
# One variable with a dominant class, one nearly uniform; every class drawn often enough to test.
LOGITS = torch.tensor([[[1.5, 0.0, -1.0, 0.5], [0.2, -0.1, 0.0, 0.1]]], dtype=torch.float64)  # [1, 2, C]
PAIRS = list(itertools.combinations(range(CLASSES), 2))
STATISTICS_PER_VARIABLE = CLASSES + len(PAIRS)
# Marginal test: every statistic of both variables; conditional test: the same for each class of the
# first variable.
TESTS = 2 * STATISTICS_PER_VARIABLE + CLASSES * STATISTICS_PER_VARIABLE


def _uniforms(seed: int, draws: int = DRAWS) -> torch.Tensor:
    return uniform_noise((draws, *LOGITS.shape), LOGITS, torch.Generator().manual_seed(seed))  # [M, 1, 2, C]


def _statistics(x: torch.Tensor) -> list[torch.Tensor]:
    """Each coordinate and each within-variable difference of draws ``x [M, C]``."""
    return [x[:, i] for i in range(CLASSES)] + [x[:, i] - x[:, j] for i, j in PAIRS]


def _assert_same_law(sample: torch.Tensor, reference: torch.Tensor, what: str) -> None:
    for index, (a, b) in enumerate(zip(_statistics(sample), _statistics(reference), strict=True)):
        p_value = ks_2samp(a.numpy(), b.numpy()).pvalue
        assert p_value > FAMILY_ALPHA / TESTS, f"{what}, statistic {index}: KS p = {p_value:.2e}"


def test_the_maximum_is_at_the_given_class():
    u = _uniforms(1, 2_000)  # [M, 1, 2, C]
    b = CATEGORICAL.sample(LOGITS, _uniforms(2, 2_000))  # [M, 1, 2, C], any classes
    x = conditional_gumbel(LOGITS, b, u)
    assert torch.equal(one_hot_argmax(x), b)


def test_with_the_class_drawn_by_gumbel_max_it_is_the_unconditional_perturbation():
    b = CATEGORICAL.sample(LOGITS, _uniforms(3))  # D ~ softmax(η): [M, 1, 2, C]
    conditional = conditional_gumbel(LOGITS, b, _uniforms(4))  # [M, 1, 2, C]
    unconditional = LOGITS + gumbel_from_uniform(_uniforms(5))  # η + G: [M, 1, 2, C]
    for variable in range(2):
        _assert_same_law(
            conditional[:, 0, variable], unconditional[:, 0, variable], f"marginal, variable {variable}"
        )


def test_given_a_class_it_is_the_perturbation_conditioned_by_rejection():
    # Reference: unconditional draws of the first variable, kept where their argmax is the class.
    unconditional = (LOGITS + gumbel_from_uniform(_uniforms(6, 8 * DRAWS)))[:, 0, 0]  # [8M, C]
    winners = unconditional.argmax(-1)  # [8M]
    for c in range(CLASSES):
        kept = unconditional[winners == c]
        assert len(kept) > 2_000  # the least likely class (p ≈ 0.07) still gives a sample to test
        b = torch.zeros_like(LOGITS)
        b[..., c] = 1.0  # every variable given class c: [1, 2, C]
        conditional = conditional_gumbel(LOGITS, b, _uniforms(7 + c))[:, 0, 0]  # [M, C]
        _assert_same_law(conditional, kept, f"class {c}")
