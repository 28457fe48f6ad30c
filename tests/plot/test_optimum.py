"""The toy optimum drawn on the objective figure: the best E_q[f] over every deterministic latent."""

import itertools

import pytest
import torch

from dcvbench.config import ToyProblem
from dcvbench.jobs.toy import make_toy
from dcvbench.plot.optimum import toy_optimum

PROBLEMS = [
    {"objective": "separable", "dim": 3, "target": 0.499},
    {"objective": "separable", "dim": 3, "target": 0.8},
    {"objective": "sum-square", "dim": 5, "target": 0.3},
    {"objective": "separable", "dim": 3, "latent": "categorical", "classes": 3, "w_seed": 4},
]


def brute_force(problem: dict, maximize: bool) -> float:
    """E_q[f] is multilinear in the probabilities, so its extremes are at one-hot (deterministic)
    points: enumerate them all, through the problem's own closed-form expectation."""
    toy = make_toy(ToyProblem(**problem), torch.device("cpu"), torch.float64)
    if toy.problem.latent == "binary":
        points = [
            torch.tensor([bits], dtype=torch.float64)
            for bits in itertools.product((0, 1), repeat=problem["dim"])
        ]
    else:
        eye = torch.eye(problem["classes"], dtype=torch.float64)
        points = [
            eye[list(classes)][None]
            for classes in itertools.product(range(problem["classes"]), repeat=problem["dim"])
        ]
    values = [float(toy.objective.expectation(point)) for point in points]
    return max(values) if maximize else min(values)


@pytest.mark.parametrize("maximize", [True, False])
@pytest.mark.parametrize("problem", PROBLEMS)
def test_the_optimum_is_the_best_deterministic_point(problem, maximize):
    expected = brute_force(problem, maximize)
    assert toy_optimum({"problem": problem, "maximize": maximize}) == pytest.approx(expected, rel=1e-12)


def test_the_published_toy_and_what_has_no_closed_form():
    assert toy_optimum({"problem": {"objective": "separable", "dim": 200, "target": 0.499}}) == pytest.approx(
        0.501**2
    )  # maximised unless the config says otherwise, as the toy job does
    assert toy_optimum({"problem": {"objective": "quadratic-form", "dim": 8}}) is None  # NP-hard in general
    assert toy_optimum({"problem": {"objective": "no-such-objective", "dim": 8}}) is None
    assert toy_optimum({"problem": {"objective": "separable", "dim": 8, "unknown_field": 1}}) is None
