"""The registry and the estimator contract, for every latent family: names, families, listing order,
options, K rules, shapes, dtypes, finite output."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dcvbench.estimators import (
    Estimator,
    EstimatorError,
    EstimatorInfo,
    build_estimator,
    check_settings,
    default_settings,
    estimator_class,
    estimator_info,
    estimator_names,
    estimator_options,
    get_estimator,
    start_temperature,
)
from dcvbench.estimators.options import JOBS, Option
from dcvbench.estimators.registry import check_objective, option_users, register
from dcvbench.latent import BINARY, CATEGORICAL, LATENT_TYPES
from dcvbench.objectives import ProblemShape
from dcvbench.problems.categorical_toy import (
    CATEGORICAL_OBJECTIVES,
    make_categorical_objective,
    random_categorical_logits,
)
from dcvbench.problems.toy import OBJECTIVES, make_objective

NAMES = estimator_names()
# The contract is checked on the toy; VAE-only estimators (vimco) are exercised in tests/problems.
TOY_NAMES = [name for name in NAMES if "toy" in estimator_info(name).problems]
BINARY_NAMES = estimator_names("binary")
BINARY_TOY_NAMES = [name for name in TOY_NAMES if name in BINARY_NAMES]
CATEGORICAL_NAMES = estimator_names("categorical")
DTYPES = [torch.float64, torch.float32]
# The listing before the core's rebuild, in order (the order of `dcvbench estimators` and of the CLI's
# choices): estimators added since take their own places in it.
LISTING = [
    "reinforce", "reinforce-ema", "rloo", "rloo-dcv", "muprop", "exact-baseline", "arm", "disarm",
    "arms", "concrete", "st-concrete", "rebar", "relax", "vimco", "nvil",
]  # fmt: skip


def build(name: str, dim: int) -> Estimator:
    """The estimator as the jobs build it, for a toy of ``dim`` bits (estimators with networks need
    the shape)."""
    return build_estimator(name, default_settings("toy"), ProblemShape(dim))


def _allowed_ks(name: str, ks=range(1, 7)) -> list[int]:
    info = estimator_info(name)
    return [k for k in ks if k >= info.min_k and not (info.even_k and k % 2)]


# -- names, families, order -----------------------------------------------------------------------


def test_names_are_unique_non_empty_and_match_their_info():
    assert NAMES and len(NAMES) == len(set(NAMES))
    for name in NAMES:
        info = estimator_info(name)
        assert name and name == name.strip() and info.name == name
        assert info.summary and info.families and set(info.families) <= set(LATENT_TYPES)
        assert estimator_class(name, info.families[0]).info is info


def test_the_listing_keeps_its_order():
    assert [name for name in NAMES if name in LISTING] == LISTING
    assert [name for name in NAMES if "binary" in estimator_info(name).families] == BINARY_NAMES
    assert [name for name in NAMES if "categorical" in estimator_info(name).families] == CATEGORICAL_NAMES


def test_the_estimators_of_the_design_are_registered_for_their_families():
    assert {"reinforce", "rloo", "rloo-dcv", "exact-baseline", "concrete", "st-concrete"} <= set(
        CATEGORICAL_NAMES
    )
    # Antithetic pairs, copulas and conditional logistic relaxations are about bits.
    assert not {"arm", "disarm", "arms", "relax", "rebar"} & set(CATEGORICAL_NAMES)
    assert not estimator_info("concrete").unbiased and not estimator_info("st-concrete").unbiased
    assert estimator_info("concrete").relaxation == "relaxed"
    assert estimator_info("st-concrete").relaxation == "straight-through"
    # An estimator relaxes exactly when it has a temperature (its own default when none is given).
    assert all(
        (estimator_info(name).relaxation is None) == (start_temperature(name, {}) is None) for name in NAMES
    )


@pytest.mark.parametrize("latent", LATENT_TYPES)
def test_one_class_serves_every_family_it_is_registered_for(latent: str):
    family = {"binary": BINARY, "categorical": CATEGORICAL}[latent]
    shape = ProblemShape(3, context=4, classes=None if latent == "binary" else 2)
    for name in estimator_names(latent):
        first = estimator_info(name).families[0]
        assert estimator_class(name, latent) is estimator_class(name, first)
        assert build_estimator(name, default_settings("vae"), shape).family is family
        if name != "relax":  # relax needs its network's sizes, which only the shape gives
            assert get_estimator(name, latent=latent).family is family


def test_estimator_modules_are_discovered_and_named_after_their_estimator():
    for name in NAMES:
        module = estimator_class(name, estimator_info(name).families[0]).__module__.rsplit(".", 1)[-1]
        assert module == name.replace("-", "_") or (module == "relax_rebar" and name in ("relax", "rebar"))


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(EstimatorError, match="unknown estimator 'no-such'") as caught:
        get_estimator("no-such")
    for name in BINARY_NAMES:
        assert name in str(caught.value)


def test_unknown_name_for_a_latent_type_lists_that_type_s_names_on_one_line():
    with pytest.raises(EstimatorError) as caught:
        get_estimator("disarm", latent="categorical")  # no near miss ('arm' is one for 'carms')
    message = str(caught.value)
    assert message.startswith("unknown estimator 'disarm' for categorical latents; choose from: ")
    assert message.endswith(", ".join(CATEGORICAL_NAMES))
    assert "\n" not in message


def test_unknown_latent_type_is_an_error_naming_the_types():
    with pytest.raises(
        EstimatorError, match="unknown latent type 'ternary'; choose from: binary, categorical"
    ):
        estimator_names("ternary")
    with pytest.raises(EstimatorError, match="unknown latent type 'ternary'"):
        register(
            EstimatorInfo(
                name="new", summary="s", unbiased=True, needs_input_grad=False, families=("ternary",)
            )
        )


def test_a_name_cannot_be_registered_twice():
    with pytest.raises(RuntimeError, match="registered twice"):
        register(EstimatorInfo(name="rloo", summary="again", unbiased=True, needs_input_grad=False))(
            type("Again", (estimator_class("rloo"),), {})
        )
    assert estimator_info("rloo").summary != "again"


def test_build_estimator_chooses_the_family_by_the_number_of_classes():
    settings = {**default_settings("toy"), "alpha": -0.25, "temperature": 0.3}
    binary = build_estimator("rloo-dcv", settings, ProblemShape(5))
    categorical = build_estimator("rloo-dcv", settings, ProblemShape(5, classes=4))
    assert binary.family is BINARY and categorical.family is CATEGORICAL
    assert float(categorical.alpha) == -0.25
    assert build_estimator("concrete", settings, ProblemShape(5, classes=2)).temperature == 0.3
    with pytest.raises(EstimatorError, match="unknown estimator 'arm' for categorical latents"):
        build_estimator("arm", settings, ProblemShape(5, classes=3))


# -- options --------------------------------------------------------------------------------------


def test_options_are_declared_once_and_shared_by_object():
    # The options of the first wave, in listing order; an estimator added since brings its own.
    first_wave = ["baseline_decay", "alpha", "alpha_learning", "alpha_optimizer", "alpha_lr", "temperature"]
    options = estimator_options()
    assert [name for name in options if name in first_wave] == first_wave and "control_lr" in options
    for name in NAMES:
        for option in estimator_class(name, estimator_info(name).families[0]).options:
            assert options[option.name] is option
    assert option_users("temperature")[:2] == ["concrete", "st-concrete"]
    assert option_users("baseline_decay")[:2] == ["reinforce-ema", "nvil"]
    assert option_users("control_lr")[:4] == ["rodeo", "rebar", "relax", "nvil"]
    assert option_users("alpha_lr")[:1] == ["rloo-dcv"]


def test_defaults_per_job_are_today_s():
    # The first wave's options; one added since takes its own default. The temperature is each
    # estimator's own unless given (None).
    common = {"alpha": None, "temperature": None, "baseline_decay": 0.9}
    learning = {"alpha_learning": "sgd", "control_lr": 1e-3}
    # The published toy tuned α with RMSprop at 5e-4, the VAE with Adam at 1e-3; a variance study
    # trains nothing, so it has no learning options (α is set to its optimum there).
    toy, vae, predict, variance = (default_settings(job) for job in ("toy", "vae", "predict", "variance"))
    assert toy.items() >= {**common, **learning, "alpha_optimizer": "rmsprop", "alpha_lr": 5e-4}.items()
    assert vae.items() >= {**common, **learning, "alpha_optimizer": "adam", "alpha_lr": 1e-3}.items()
    assert predict == vae  # structured prediction trains as the VAE does
    assert variance.items() >= common.items()
    assert not set(variance) & {*learning, "alpha_optimizer", "alpha_lr"}
    assert set(JOBS) == {"toy", "vae", "predict", "variance"}
    with pytest.raises(EstimatorError, match="unknown job 'train'"):
        default_settings("train")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"temperature": 0.0}, "--temperature must be positive, got 0.0"),
        ({"temperature": float("inf")}, "--temperature must be positive, got inf"),
        ({"alpha": float("nan")}, "--alpha must be finite, got nan"),
        ({"alpha_learning": "newton"}, "--alpha-learning must be sgd or optimal, got 'newton'"),
        ({"alpha_optimizer": "lbfgs"}, "--alpha-optimizer must be adam, rmsprop or sgd, got 'lbfgs'"),
        ({"alpha_lr": -1.0}, "--alpha-lr must be positive, got -1.0"),
        ({"control_lr": 0.0}, "--control-lr must be positive, got 0.0"),
        ({"baseline_decay": 1.0}, "--baseline-decay must be in [0, 1), got 1.0"),
        ({"baseline_decay": float("nan")}, "--baseline-decay must be in [0, 1), got nan"),
        ({"alpha_learning": None}, "--alpha-learning needs a value"),
        ({"no_such": 1}, "unknown estimator option 'no_such'; choose from: baseline_decay, alpha"),
    ],
)
def test_bad_settings_get_the_option_s_one_line_message(settings: dict, message: str):
    with pytest.raises(EstimatorError) as caught:
        check_settings(settings)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_good_settings_pass():
    for job in JOBS:
        check_settings(default_settings(job))
    check_settings({"alpha": -0.5, "alpha_learning": "optimal", "temperature": 0.1})


def test_from_settings_reads_only_the_class_s_options():
    class Tuned(Estimator):
        options = (Option("gain", 1.0, "a gain"),)

        def __init__(self, family=BINARY, gain: float = 1.0):
            super().__init__(family)
            self.gain = gain

    built = Tuned.from_settings({"gain": 2.5, "temperature": 9.0}, ProblemShape(3, classes=4))
    assert built.gain == 2.5 and built.family is CATEGORICAL


@pytest.mark.parametrize("name", NAMES)
def test_every_estimator_builds_from_the_shared_settings_for_each_problem_and_family(name: str):
    # What the jobs do: one settings record, the problem's shape (the VAE's has a context, x).
    info = estimator_info(name)
    for latent in info.families:
        classes = None if latent == "binary" else 3
        # The job whose settings build it there: the user's objective is measured by a variance study.
        built_by = {
            "toy": ("toy", ProblemShape(5, classes=classes)),
            "vae": ("vae", ProblemShape(5, context=12, classes=classes)),
            "predict": ("predict", ProblemShape(5, context=12, classes=classes)),
            "user": ("variance", ProblemShape(5, classes=classes)),
        }
        for problem in info.problems:
            job, shape = built_by[problem]
            estimator = build_estimator(name, default_settings(job), shape)
            assert isinstance(estimator, Estimator) and estimator.info is info
            assert estimator.family.name == latent


@pytest.mark.parametrize("name", NAMES)
def test_what_an_estimator_requires_of_a_users_objective_the_built_in_problems_it_lists_give(name: str):
    # requires names protocols of dcvbench.objectives; on "user" they are checked, on the toy they hold.
    info = estimator_info(name)
    assert all(protocol.__module__ == "dcvbench.objectives" for protocol in info.requires)
    if "toy" in info.problems:
        assert info.missing_hooks(make_objective("separable", 4)) == ()


def test_check_objective_names_the_missing_hook_in_one_line():
    def bare(b):
        return b.sum(-1)

    with pytest.raises(EstimatorError, match=r"^exact-baseline needs the objective's expectation \(dcvbench"):
        check_objective("exact-baseline", bare)
    with pytest.raises(EstimatorError, match="vimco needs the objective's proposal_in_weight"):
        check_objective("vimco", bare)
    check_objective("rloo", bare)  # f alone suffices
    check_objective("exact-baseline", make_objective("separable", 4))


# -- stats ----------------------------------------------------------------------------------------


def test_declared_stats():
    declared = {name: [(stat.name, stat.reduce) for stat in estimator_info(name).stats] for name in NAMES}
    assert declared["rloo-dcv"] == [("alpha", "last")]
    assert declared["vimco"] == [("train_bound", "mean")]
    assert declared["concrete"] == declared["st-concrete"] == [("temperature", "last")]
    assert declared["reinforce-ema"] == [("baseline", "last")]
    assert declared["nvil"][:2] == [("baseline", "last"), ("signal_scale", "last")]
    assert (
        declared["relax"] == declared["rebar"] == [("control_temperature", "last"), ("control_scale", "last")]
    )
    assert declared["rloo"] == declared["disarm"] == []


@pytest.mark.parametrize("name", BINARY_TOY_NAMES)
def test_estimates_report_exactly_the_declared_stats_and_state_stats_the_last_ones(name: str):
    dim = 4
    logits = torch.randn(2, dim, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    estimator = build(name, dim)
    before = estimator.state_stats()
    estimate = estimator(logits, make_objective("quadratic-form", dim), 2, torch.Generator().manual_seed(4))
    info = estimator_info(name)
    assert set(estimate.stats) == {stat.name for stat in info.stats}
    last = {stat.name for stat in info.stats if stat.reduce == "last"}
    assert set(before) == last
    for key in last:  # the state before an update is what the next estimate uses
        assert float(estimate.stats[key]) == pytest.approx(before[key], rel=1e-6)


# -- K rules --------------------------------------------------------------------------------------


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


# -- the contract on binary latents ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("name", BINARY_TOY_NAMES)
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


@pytest.mark.parametrize("latent", LATENT_TYPES)
def test_exact_baseline_needs_a_closed_form_expectation(latent: str):
    logits = torch.zeros(2, 3, dtype=torch.float64) if latent == "binary" else torch.zeros(2, 3, 4)

    def no_expectation(b: torch.Tensor) -> torch.Tensor:
        return b.flatten(2).sum(-1)

    with pytest.raises(EstimatorError, match="closed-form expectation"):
        get_estimator("exact-baseline", latent)(logits, no_expectation, 2, torch.Generator().manual_seed(0))


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
    for name in BINARY_TOY_NAMES:
        k = data.draw(st.sampled_from(_allowed_ks(name, ks=range(2, 7))), label=f"K for {name}")
        estimate = build(name, dim)(logits, f, k, torch.Generator().manual_seed(seed))
        assert estimate.grad.shape == (rows, dim) and estimate.grad.dtype == dtype, name
        assert torch.isfinite(estimate.grad).all(), (name, k, estimate.grad)
        assert estimate.values.shape == (k, rows), name
        assert torch.isfinite(estimate.values).all(), name
        if estimate.learning is not None:  # a learned control's loss, from the same extreme logits
            assert torch.isfinite(estimate.learning), name


# -- the contract on categorical latents ----------------------------------------------------------


def _build_categorical(name: str, variables: int, classes: int) -> Estimator:
    return build_estimator(name, default_settings("toy"), ProblemShape(variables, classes=classes))


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("name", [name for name in CATEGORICAL_NAMES if name in TOY_NAMES])
def test_categorical_output_shapes_and_dtype(name: str, dtype: torch.dtype):
    rows, variables, classes = 3, 4, 5
    logits = random_categorical_logits(variables, classes, seed=1, rows=rows, dtype=dtype)
    f = make_categorical_objective("quadratic-form", variables, classes, dtype=dtype)
    for k in _allowed_ks(name, ks=(2, 4)):
        estimate = _build_categorical(name, variables, classes)(
            logits, f, k, torch.Generator().manual_seed(2)
        )
        assert estimate.grad.shape == (rows, variables, classes) and estimate.grad.dtype == dtype
        assert not estimate.grad.requires_grad
        assert estimate.values.shape == (k, rows) and estimate.values.dtype == dtype  # one per sample
        if estimate.control is not None:
            assert estimate.control.shape == (rows, variables, classes)
        # A score-function estimate per variable sums to zero over the classes (Σ_c (b − π)_c = 0);
        # so does the softmax Jacobian of the relaxations, (diag z − zzᵀ) 1 = 0.
        scale = float(estimate.grad.abs().max())
        assert estimate.grad.sum(-1).abs().max() <= 16 * torch.finfo(dtype).eps * max(scale, 1.0)


@pytest.mark.parametrize("name", [name for name in CATEGORICAL_NAMES if name in TOY_NAMES])
@pytest.mark.parametrize("objective", CATEGORICAL_OBJECTIVES)
def test_extreme_categorical_logits_give_a_finite_estimate(name: str, objective: str):
    # Class probabilities within 1e-26 of 0 or 1 (exactly 0 or 1 in float32), and ties.
    for dtype in DTYPES:
        logits = torch.tensor([[[30.0, -30.0, 0.0], [0.0, 0.0, 0.0], [-30.0, -30.0, 30.0]]], dtype=dtype)
        f = make_categorical_objective(objective, 3, 3, dtype=dtype)
        for k in _allowed_ks(name, ks=(2, 3)):
            estimate = _build_categorical(name, 3, 3)(logits, f, k, torch.Generator().manual_seed(k))
            assert torch.isfinite(estimate.grad).all() and torch.isfinite(estimate.values).all(), (name, k)


# Costs of every kind the registry holds, and one that grows with the latent space (IndeCateR's).
COST_KINDS = [
    EstimatorInfo("per-sample", "", unbiased=True, needs_input_grad=False),
    EstimatorInfo("pairs", "", unbiased=True, needs_input_grad=False, min_k=2, even_k=True),
    EstimatorInfo("plus-one", "", unbiased=True, needs_input_grad=False, extra_evals=1),
    EstimatorInfo("three-each", "", unbiased=True, needs_input_grad=False, evals_per_sample=3),
    EstimatorInfo("neighbours", "", unbiased=True, needs_input_grad=False, neighbour_evals=True),
]
SHAPES = [ProblemShape(5), ProblemShape(3, classes=4)]


def test_neighbour_evaluations_count_the_one_variable_changes():
    info = COST_KINDS[-1]
    assert info.evals(2, ProblemShape(5)) == 2 * (1 + 5)
    assert info.evals(3, ProblemShape(3, classes=4)) == 3 * (1 + 3 * 3)
    assert info.evals_rule() == "K(1+M)"
    with pytest.raises(ValueError, match="depend on the latent shape"):
        info.evals(2)


@settings(max_examples=200, deadline=None)
@given(
    kind=st.sampled_from(COST_KINDS),
    shape=st.sampled_from(SHAPES),
    budget=st.integers(min_value=1, max_value=500),
)
def test_the_k_for_a_budget_is_the_largest_allowed_k_that_fits(kind, shape, budget):
    k = kind.k_for_budget(budget, shape)
    allowed = [k for k in range(kind.min_k, budget + 2) if not (kind.even_k and k % 2)]
    fitting = [k for k in allowed if kind.evals(k, shape) <= budget]
    assert k == (max(fitting) if fitting else None)
