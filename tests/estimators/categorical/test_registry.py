"""The categorical registry: the same names and metadata as the binary estimators, its own lookup,
clear errors, and the estimator contract (shapes, dtypes, finite output) on categorical logits."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dcvbench.estimators import (
    EstimatorError,
    EstimatorInfo,
    EstimatorSettings,
    ProblemShape,
    build_estimator,
    estimator_class,
    estimator_info,
    estimator_names,
    get_estimator,
)
from dcvbench.estimators.registry import register
from dcvbench.problems.categorical_toy import (
    CATEGORICAL_OBJECTIVES,
    make_categorical_objective,
    random_categorical_logits,
)

NAMES = estimator_names("categorical")
DTYPES = [torch.float64, torch.float32]


def _allowed_ks(name: str, ks=range(1, 7)) -> list[int]:
    info = estimator_info(name, "categorical")
    return [k for k in ks if k >= info.min_k and not (info.even_k and k % 2)]


def test_the_issue_s_estimators_are_registered_for_categorical_latents():
    assert NAMES == ["reinforce", "rloo", "rloo-dcv", "exact-baseline", "concrete", "st-concrete"]


@pytest.mark.parametrize("name", NAMES)
def test_categorical_metadata_is_that_of_the_binary_namesake(name: str):
    binary, categorical = estimator_info(name), estimator_info(name, "categorical")
    assert estimator_class(name, "categorical") is not estimator_class(name)  # its own class
    assert estimator_class(name, "categorical").info is categorical and categorical.name == name
    # Everything but the summary (which speaks of π instead of θ) is the binary estimator's.
    differing = {
        field.name
        for field in dataclasses.fields(EstimatorInfo)
        if getattr(binary, field.name) != getattr(categorical, field.name)
    }
    assert differing <= {"summary"}


def test_binary_lookups_are_unchanged_by_default():
    assert "arm" in estimator_names() and "arm" not in NAMES
    assert estimator_names() == estimator_names("binary")
    assert estimator_class("rloo-dcv") is estimator_class("rloo-dcv", "binary")


def test_unknown_name_lists_the_valid_ones_of_its_latent_type():
    with pytest.raises(EstimatorError) as caught:
        get_estimator("arm", latent="categorical")
    message = str(caught.value)
    assert message.startswith("unknown estimator 'arm' for categorical latents; choose from: ")
    assert message.endswith(", ".join(NAMES))
    assert "\n" not in message


def test_unknown_latent_type_is_an_error_naming_the_types():
    with pytest.raises(
        EstimatorError, match="unknown latent type 'ternary'; choose from: binary, categorical"
    ):
        estimator_names("ternary")


def test_a_name_cannot_be_registered_twice_for_one_latent_type():
    with pytest.raises(RuntimeError, match="registered twice for categorical latents"):
        register(
            EstimatorInfo(name="rloo", summary="again", unbiased=True, needs_input_grad=False),
            latent="categorical",
        )(type("Again", (estimator_class("rloo", "categorical"),), {}))
    assert estimator_info("rloo", "categorical").summary != "again"


def test_build_estimator_chooses_by_the_number_of_classes():
    settings = EstimatorSettings(alpha=-0.25, temperature=0.3)
    binary = build_estimator("rloo-dcv", settings, ProblemShape(5))
    categorical = build_estimator("rloo-dcv", settings, ProblemShape(5, classes=4))
    assert type(binary) is estimator_class("rloo-dcv")
    assert type(categorical) is estimator_class("rloo-dcv", "categorical")
    assert float(categorical.alpha) == -0.25  # the binary class's settings, inherited
    assert build_estimator("concrete", settings, ProblemShape(5, classes=2)).temperature == 0.3
    assert ProblemShape(5).latent_type == "binary" and ProblemShape(5, classes=2).latent_type == "categorical"


def test_fewer_than_two_classes_is_an_error():
    with pytest.raises(EstimatorError, match="at least 2 classes, got 1"):
        ProblemShape(5, classes=1)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("name", NAMES)
def test_output_shapes_and_dtype(name: str, dtype: torch.dtype):
    rows, variables, classes = 3, 4, 5
    info = estimator_info(name, "categorical")
    logits = random_categorical_logits(variables, classes, seed=1, rows=rows, dtype=dtype)
    f = make_categorical_objective("quadratic-form", variables, classes, dtype=dtype)
    for k in _allowed_ks(name, ks=(2, 4)):
        estimate = get_estimator(name, latent="categorical")(logits, f, k, torch.Generator().manual_seed(2))
        assert estimate.grad.shape == (rows, variables, classes) and estimate.grad.dtype == dtype
        assert not estimate.grad.requires_grad
        assert estimate.values.shape == (info.evals(k), rows) and estimate.values.dtype == dtype
        if estimate.control is not None:
            assert estimate.control.shape == (rows, variables, classes)
        # A score-function estimate per variable sums to zero over the classes (Σ_c (b − π)_c = 0);
        # so does the softmax Jacobian of the relaxations, (diag z − zzᵀ) 1 = 0.
        scale = float(estimate.grad.abs().max())
        assert estimate.grad.sum(-1).abs().max() <= 16 * torch.finfo(dtype).eps * max(scale, 1.0)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("objective", CATEGORICAL_OBJECTIVES)
def test_extreme_logits_give_a_finite_estimate(name: str, objective: str):
    # Class probabilities within 1e-26 of 0 or 1 (exactly 0 or 1 in float32), and ties.
    for dtype in DTYPES:
        logits = torch.tensor([[[30.0, -30.0, 0.0], [0.0, 0.0, 0.0], [-30.0, -30.0, 30.0]]], dtype=dtype)
        f = make_categorical_objective(objective, 3, 3, dtype=dtype)
        for k in _allowed_ks(name, ks=(2, 3)):
            estimate = get_estimator(name, latent="categorical")(
                logits, f, k, torch.Generator().manual_seed(k)
            )
            assert torch.isfinite(estimate.grad).all() and torch.isfinite(estimate.values).all(), (name, k)


def test_exact_baseline_needs_a_closed_form_expectation():
    logits = torch.zeros(2, 3, 4, dtype=torch.float64)
    with pytest.raises(EstimatorError, match="closed-form expectation"):
        get_estimator("exact-baseline", latent="categorical")(
            logits, lambda b: b.sum((-2, -1)), 2, torch.Generator().manual_seed(0)
        )
