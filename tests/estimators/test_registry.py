"""The registry and the estimator contract: names, K rules, shapes, dtypes, finite output."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dcvbench.estimators import (
    Estimator,
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
from dcvbench.problems.toy import OBJECTIVES, make_objective

NAMES = estimator_names()
# The contract is checked on the toy; VAE-only estimators (vimco) are exercised in tests/problems.
TOY_NAMES = [name for name in NAMES if "toy" in estimator_info(name).problems]
DTYPES = [torch.float64, torch.float32]


def build(name: str, dim: int) -> Estimator:
    """The estimator as the jobs build it, for a toy of ``dim`` latents (estimators with networks
    need the shape)."""
    return build_estimator(name, EstimatorSettings(), ProblemShape(dim))


def _allowed_ks(name: str, ks=range(1, 7)) -> list[int]:
    info = estimator_info(name)
    return [k for k in ks if k >= info.min_k and not (info.even_k and k % 2)]


def test_names_are_unique_non_empty_and_match_their_info():
    assert NAMES and len(NAMES) == len(set(NAMES))
    for name in NAMES:
        info = estimator_info(name)
        assert name and name == name.strip() and info.name == name
        assert info.summary
        assert estimator_class(name).info is info


def test_the_estimators_of_the_design_are_registered():
    expected = {"reinforce", "reinforce-ema", "rloo", "rloo-dcv", "muprop", "exact-baseline"}
    expected |= {"arm", "disarm", "arms", "concrete", "st-concrete", "relax", "rebar"}
    assert expected <= set(NAMES)
    assert not estimator_info("concrete").unbiased and not estimator_info("st-concrete").unbiased


@pytest.mark.parametrize("name", NAMES)
def test_every_estimator_builds_from_the_shared_settings_for_each_problem_it_runs_on(name: str):
    # What the jobs do: one settings record, the problem's shape (the VAE's has a context, x).
    shapes = {"toy": ProblemShape(5), "vae": ProblemShape(5, context=12)}
    for problem in estimator_info(name).problems:
        estimator = build_estimator(name, EstimatorSettings(), shapes[problem])
        assert isinstance(estimator, Estimator) and estimator.info is estimator_info(name)


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(EstimatorError, match="unknown estimator 'no-such'") as caught:
        get_estimator("no-such")
    for name in NAMES:
        assert name in str(caught.value)


def test_a_name_cannot_be_registered_twice():
    with pytest.raises(RuntimeError, match="registered twice"):
        register(EstimatorInfo(name="rloo", summary="again", unbiased=True, needs_input_grad=False))(
            type("Again", (estimator_class("rloo"),), {})
        )
    assert estimator_info("rloo").summary != "again"


@pytest.mark.parametrize(
    ("name", "k", "message"),
    [
        ("rloo", 1, "K must be ≥ 2 for rloo, got 1"),
        ("rloo-dcv", 1, "K must be ≥ 2 for rloo-dcv, got 1"),
        ("arms", 1, "K must be ≥ 2 for arms, got 1"),
        ("disarm", 3, "K must be even for disarm, got 3"),
        ("arm", 5, "K must be even for arm, got 5"),
        ("reinforce", 0, "K must be ≥ 1 for reinforce, got 0"),
    ],
)
def test_k_rules_are_enforced_with_a_clear_message(name: str, k: int, message: str):
    with pytest.raises(EstimatorError) as caught:
        estimator_info(name).check_k(k)
    assert str(caught.value) == message
    logits, f = torch.zeros(2, 3, dtype=torch.float64), make_objective("sum-square", 3)
    with pytest.raises(EstimatorError, match=message):
        build(name, 3)(logits, f, k, torch.Generator().manual_seed(0))


def test_k_rule_in_words():
    assert estimator_info("disarm").k_rule() == "K ≥ 2, even"
    assert estimator_info("rloo").k_rule() == "K ≥ 2"


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("name", TOY_NAMES)
def test_output_shapes_and_dtype(name: str, dtype: torch.dtype):
    rows, dim = 3, 5
    logits = torch.randn(rows, dim, generator=torch.Generator().manual_seed(1), dtype=dtype)
    f = make_objective("quadratic-form", dim, dtype=dtype)
    for k in _allowed_ks(name, ks=(2, 4)):
        estimate = build(name, dim)(logits, f, k, torch.Generator().manual_seed(2))
        assert estimate.grad.shape == (rows, dim) and estimate.grad.dtype == dtype
        assert not estimate.grad.requires_grad  # no autograd graph attached
        # values: one per sample of q, the values a model trains f on. Evaluations elsewhere (MuProp's
        # at the mean θ, RELAX's and REBAR's at relaxed points) count in info.evals but are left out.
        assert estimate.values.shape == (k, rows)
        assert estimate.values.dtype == dtype
        if estimate.control is not None:
            assert estimate.control.shape == (rows, dim)
        for stat in estimate.stats.values():
            assert stat.dim() == 0 and not stat.requires_grad
        if estimate.learning is not None:
            assert estimate.learning.dim() == 0


def test_muprop_counts_its_extra_evaluation_but_returns_sampled_values():
    info = estimator_info("muprop")
    assert info.evals(3) == 4 and info.extra_evals == 1
    logits, f = torch.randn(2, 4, dtype=torch.float64), make_objective("sum-square", 4)
    calls: list[tuple[int, ...]] = []

    def counting(b: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(b.shape))
        return f(b)

    estimate = get_estimator("muprop")(logits, counting, 3, torch.Generator().manual_seed(0))
    assert sorted(calls) == [(1, 2, 4), (3, 2, 4)]  # K samples, and once at θ
    assert estimate.values.shape == (3, 2)
    # Every returned value is f at a binary vector: recompute from the same uniforms.
    noise = get_estimator("muprop").sample(logits, 3, torch.Generator().manual_seed(0))
    b = (noise < torch.sigmoid(logits)).to(logits.dtype)
    torch.testing.assert_close(estimate.values.detach(), f(b), rtol=1e-12, atol=1e-15)


def test_exact_baseline_needs_a_closed_form_expectation():
    logits = torch.zeros(2, 3, dtype=torch.float64)

    def no_expectation(b: torch.Tensor) -> torch.Tensor:
        return b.sum(-1)

    with pytest.raises(EstimatorError, match="closed-form expectation"):
        get_estimator("exact-baseline")(logits, no_expectation, 2, torch.Generator().manual_seed(0))


@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(data=st.data())
def test_any_finite_logits_give_a_finite_estimate(data):
    """Logits in [−30, 30] (θ within 1e-13 of 0 or 1, exactly 0 or 1 in float32), every K allowed."""
    rows = data.draw(st.integers(1, 3), label="B")
    dim = data.draw(st.integers(1, 5), label="D")
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    objective = data.draw(st.sampled_from(OBJECTIVES), label="objective")
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    values = data.draw(
        st.lists(st.floats(-30.0, 30.0, allow_nan=False), min_size=rows * dim, max_size=rows * dim),
        label="logits",
    )
    logits = torch.tensor(values, dtype=dtype).reshape(rows, dim)
    f = make_objective(objective, dim, dtype=dtype)
    for name in TOY_NAMES:
        k = data.draw(st.sampled_from(_allowed_ks(name, ks=range(2, 7))), label=f"K for {name}")
        estimate = build(name, dim)(logits, f, k, torch.Generator().manual_seed(seed))
        assert estimate.grad.shape == (rows, dim) and estimate.grad.dtype == dtype, name
        assert torch.isfinite(estimate.grad).all(), (name, k, estimate.grad)
        assert estimate.values.shape == (k, rows), name
        assert torch.isfinite(estimate.values).all(), name
        if estimate.learning is not None:  # a learned control's loss, from the same extreme logits
            assert torch.isfinite(estimate.learning), name
