"""The toy objectives' closed forms, checked by exact enumeration of all 2^D binary vectors."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.testing import assert_close

from dcvbench.problems.toy import OBJECTIVES, QuadraticForm, exact_gradient, make_objective

DIM = 4


def _all_binary_vectors(dim: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product((0.0, 1.0), repeat=dim)), dtype=torch.float64)  # [2^D, D]


def _logits() -> torch.Tensor:
    """Rows of θ: non-uniform, ½, and near 0 and 1 — ``[3, DIM]`` float64 logits."""
    theta = torch.tensor(
        [[0.15, 0.4, 0.65, 0.9], [0.5, 0.5, 0.5, 0.5], [0.02, 0.98, 0.03, 0.97]], dtype=torch.float64
    )
    return torch.logit(theta)


def _enumerate(objective, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``E_q[f]`` ``[B]`` and ``∇_η E_q[f] = Σ_b q(b) f(b) (b − θ)`` ``[B, D]``, summing over all b."""
    probs = torch.sigmoid(logits)  # [B, D]
    b = _all_binary_vectors(logits.shape[-1])[:, None, :].expand(-1, logits.shape[0], -1)  # [2^D, B, D]
    q = torch.where(b == 1.0, probs, 1.0 - probs).prod(-1)  # [2^D, B]
    values = objective(b)  # [2^D, B]
    assert_close(q.sum(0), torch.ones(logits.shape[0], dtype=torch.float64), rtol=1e-14, atol=0)
    expectation = (q * values).sum(0)
    gradient = ((q * values).unsqueeze(-1) * (b - probs)).sum(0)  # score-function identity, exact
    return expectation, gradient


@pytest.mark.parametrize("target", [0.499, 0.2])
@pytest.mark.parametrize("name", OBJECTIVES)
def test_closed_form_expectation_and_gradient_match_enumeration(name: str, target: float):
    objective = make_objective(name, DIM, target=target, seed=3)
    logits = _logits()
    expectation, gradient = _enumerate(objective, logits)
    assert_close(objective.expectation(torch.sigmoid(logits)), expectation, rtol=1e-12, atol=1e-15)
    assert_close(exact_gradient(objective, logits), gradient, rtol=1e-10, atol=1e-15)


def test_published_toy_gradient_in_closed_form():
    # DESIGN §4.1: ∂E[f]/∂η_d = θ_d(1−θ_d)((1−t)² − t²)/D.
    t = 0.499
    logits = _logits()
    theta = torch.sigmoid(logits)
    expected = theta * (1.0 - theta) * ((1.0 - t) ** 2 - t**2) / DIM
    assert_close(exact_gradient(make_objective("separable", DIM, target=t), logits), expected)


@pytest.mark.parametrize("name", OBJECTIVES)
def test_objective_shapes(name: str):
    objective = make_objective(name, DIM)
    b = torch.randint(0, 2, (3, 2, DIM), generator=torch.Generator().manual_seed(0)).to(torch.float64)
    assert objective(b).shape == (3, 2)
    assert objective.expectation(torch.full((2, DIM), 0.3, dtype=torch.float64)).shape == (2,)
    assert exact_gradient(objective, torch.zeros(2, DIM, dtype=torch.float64)).shape == (2, DIM)


def test_quadratic_form_weights_are_seeded():
    first, again = (
        make_objective("quadratic-form", DIM, seed=5),
        make_objective("quadratic-form", DIM, seed=5),
    )
    other = make_objective("quadratic-form", DIM, seed=6)
    scaled = make_objective("quadratic-form", DIM, seed=5, w_scale=0.5)
    assert isinstance(first, QuadraticForm)
    assert torch.equal(first.weights, again.weights)
    assert not torch.equal(first.weights, other.weights)
    assert_close(scaled.weights, 0.5 * first.weights, rtol=0, atol=0)
    assert make_objective("quadratic-form", DIM, dtype=torch.float32).weights.dtype == torch.float32


def test_unknown_objective_lists_the_valid_ones():
    with pytest.raises(ValueError, match="separable, sum-square, quadratic-form"):
        make_objective("cubic", DIM)


@pytest.mark.parametrize("name", OBJECTIVES)
def test_closed_form_input_gradient_matches_autograd(name: str):
    """``value_and_input_grad`` (used by rloo-dcv, muprop, the relaxations) equals autograd, at real b."""
    objective = make_objective(name, DIM, target=0.3, seed=2)
    b = torch.rand(3, 2, DIM, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    evaluation = objective.value_and_input_grad(b)
    values, grad = evaluation.values, evaluation.input_grad
    assert evaluation.param_grads is None  # a toy has no parameters of its own
    b_leaf = b.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(objective(b_leaf).sum(), b_leaf)
    assert_close(values, objective(b))
    assert_close(grad, expected)
