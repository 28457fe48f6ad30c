"""The categorical toy objectives: closed-form expectations against enumeration, exact gradients against
the score-function identity, input gradients against autograd, and seeded parameters."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.testing import assert_close

from dcvbench.problems.categorical_toy import (
    CATEGORICAL_OBJECTIVES,
    make_categorical_objective,
    random_categorical_logits,
)
from dcvbench.problems.toy import exact_gradient

VARIABLES, CLASSES = 3, 3


def _enumerate(probs: torch.Tensor):
    """Every one-hot configuration ``[N, C]`` of one row with its probability under ``probs [N, C]``."""
    for classes in itertools.product(range(CLASSES), repeat=VARIABLES):
        b = torch.nn.functional.one_hot(torch.tensor(classes), CLASSES).to(probs.dtype)  # [N, C]
        yield b, (probs * b).sum(-1).prod()


@pytest.mark.parametrize("objective", CATEGORICAL_OBJECTIVES)
def test_expectation_and_gradient_match_enumeration(objective: str):
    f = make_categorical_objective(objective, VARIABLES, CLASSES, seed=4)
    logits = random_categorical_logits(VARIABLES, CLASSES, scale=2.0, seed=5, rows=2)  # [B, N, C]
    probs = torch.softmax(logits, -1)
    for row in range(2):
        expectation = torch.zeros((), dtype=torch.float64)
        gradient = torch.zeros(VARIABLES, CLASSES, dtype=torch.float64)
        for b, probability in _enumerate(probs[row]):
            value = f(b[None, None])[0, 0]
            expectation += probability * value
            gradient += probability * value * (b - probs[row])  # ∇_η q(b) = q(b)(b − π)
        assert_close(f.expectation(probs)[row], expectation, rtol=1e-12, atol=1e-14)
        assert_close(exact_gradient(f, logits)[row], gradient, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("objective", CATEGORICAL_OBJECTIVES)
def test_input_gradient_is_autograd_s_at_real_points(objective: str, dtype: torch.dtype):
    f = make_categorical_objective(objective, VARIABLES, CLASSES, dtype=dtype)
    b = torch.rand(4, 2, VARIABLES, CLASSES, generator=torch.Generator().manual_seed(0), dtype=dtype)
    evaluation = f.value_and_input_grad(b)
    values, grad = evaluation.values, evaluation.input_grad
    leaf = b.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(f(leaf).sum(), leaf)
    assert values.shape == (4, 2) and values.dtype == dtype
    assert_close(values, f(b))
    assert_close(grad, expected)


def test_separable_targets_are_seeded_points_of_the_simplex():
    f = make_categorical_objective("separable", 50, 4, seed=7)
    targets = f.targets
    assert targets.shape == (50, 4) and (targets > 0).all()
    assert_close(targets.sum(-1), torch.ones(50, dtype=torch.float64))
    assert torch.equal(make_categorical_objective("separable", 50, 4, seed=7).targets, targets)
    assert not torch.equal(make_categorical_objective("separable", 50, 4, seed=8).targets, targets)
    # Uniform on the simplex (flat Dirichlet): each coordinate has mean 1/C.
    assert abs(float(targets.mean()) - 0.25) < 0.05


def test_separable_expectation_is_the_closed_form_of_the_issue():
    f = make_categorical_objective("separable", 5, 4, seed=1)
    probs = torch.softmax(random_categorical_logits(5, 4, seed=2, rows=3), -1)
    t = f.targets
    expected = (1.0 - 2.0 * (probs * t).sum(-1) + (t * t).sum(-1)).mean(-1)  # (1/N) Σ_n (1 − 2⟨π,t⟩ + ‖t‖²)
    assert_close(f.expectation(probs), expected)


def test_random_logits_are_seeded_bounded_and_away_from_uniform():
    logits = random_categorical_logits(1000, 4, seed=0)
    assert logits.shape == (1, 1000, 4) and logits.abs().max() <= 3.0
    assert torch.equal(logits, random_categorical_logits(1000, 4, seed=0))
    probs = torch.softmax(logits, -1)
    assert float(probs.min()) >= math.exp(-6.0) / 4  # every class can be drawn
    largest = probs.max(-1).values
    assert 0.6 < float(largest.mean()) < 0.7 and float(largest.max()) > 0.95  # as documented


@pytest.mark.parametrize(
    ("name", "variables", "classes", "message"),
    [
        ("nope", 3, 3, "unknown categorical toy objective 'nope'; choose from: separable, quadratic-form"),
        ("separable", 3, 1, "need variables ≥ 1 and classes ≥ 2, got 3 and 1"),
    ],
)
def test_bad_arguments_are_named(name: str, variables: int, classes: int, message: str):
    with pytest.raises(ValueError, match=message):
        make_categorical_objective(name, variables, classes)
