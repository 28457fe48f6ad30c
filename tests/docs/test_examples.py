"""The worked examples of docs/examples.md run as they stand, through the library and the CLI."""

import functools
from pathlib import Path
from statistics import NormalDist

import pytest
import torch

import dcvbench
from dcvbench.cli import main
from dcvbench.jobs.user_training import train
from dcvbench.results import find_runs, read_trace
from dcvbench.user_code import load_callable

EXAMPLES = Path(__file__).parents[2] / "docs" / "examples"
BANDIT, BOTTLENECK = EXAMPLES / "bandit.py", EXAMPLES / "digit_bottleneck.py"


def example(path: Path, name: str):
    return load_callable(f"{path}:{name}", "test")


def test_bandit_exact_gradient_is_the_gradient_of_the_enumerated_expectation():
    objective, logits, exact = example(BANDIT, "make_problem")(contexts=6, actions=5)
    logits = logits.clone().requires_grad_()
    actions = torch.eye(5).reshape(5, 1, 1, 5).expand(5, 6, 1, 5)  # [C, B, 1, C]: every action
    expected = (logits.softmax(-1)[:, 0, :].T * objective(actions)).sum()  # Σ_b E_π[f_b]
    (autograd,) = torch.autograd.grad(expected, logits)
    torch.testing.assert_close(exact, autograd)


@pytest.mark.parametrize("estimator", ["rloo", "rloo-dcv", "indecater"])
def test_bandit_unbiased_estimators_bias_is_consistent_with_zero(estimator):
    """The largest |z| over the B·C coordinates stays under the two-sided normal bound at 1e-3 for
    all of them (Bonferroni); a biased estimator (gumbel-rao) exceeds it by far."""
    objective, logits, exact = example(BANDIT, "make_problem")(contexts=4, actions=5)
    table = dcvbench.compare(
        objective, logits, estimators=[estimator], k=2, draws=4000, exact_gradient=exact, seed=1
    )
    bound = NormalDist().inv_cdf(1 - 1e-3 / (2 * logits.numel()))
    assert table.set_index("estimator").loc[estimator, "bias_max_z"] < bound


def test_bandit_biased_relaxation_is_detected():
    objective, logits, exact = example(BANDIT, "make_problem")(contexts=4, actions=5)
    table = dcvbench.compare(
        objective, logits, estimators=["gumbel-rao"], k=2, draws=500, exact_gradient=exact
    )
    assert table.set_index("estimator").loc["gumbel-rao", "bias_max_z"] > 10


def test_bottleneck_problem_has_the_documented_shapes_and_no_exact_gradient():
    objective, logits = example(BOTTLENECK, "make_problem")(bits=6, rows=5)
    assert logits.shape == (5, 6)
    b = torch.bernoulli(
        torch.full((3, 5, 6), 0.5, dtype=logits.dtype), generator=torch.Generator().manual_seed(0)
    )
    values = objective(b)
    assert values.shape == (3, 5) and bool((values > 0).all())  # cross-entropies
    table = dcvbench.compare(objective, logits, estimators=["rloo", "rloo-dcv"], k=2, draws=50)
    assert set(table["estimator"]) == {"rloo", "rloo-dcv"}


@pytest.mark.parametrize("path", [BANDIT, BOTTLENECK])
def test_examples_train_at_tiny_sizes_and_improve_on_their_own_metric(path, tmp_path):
    make = functools.partial(example(path, "make_model"), batch_size=16)
    (summary,) = train(
        make, estimators=["rloo-dcv"], k=2, steps=40, log_every=20, eval_every=20, out=tmp_path
    )
    trace = read_trace(summary.path).set_index("step")
    metric = "eval_regret" if path == BANDIT else "eval_loss"
    assert summary.status == "finished"
    assert trace.loc[40, metric] < trace.loc[0, metric]


@pytest.mark.parametrize("path", [BANDIT, BOTTLENECK])
def test_examples_train_through_the_cli(path, tmp_path):
    args = ["--steps", "2", "--log-every", "1", "--eval-every", "2", "--out", str(tmp_path), "--quiet"]
    assert main(["train", "--objective", f"{path}:make_model", "--estimator", "rloo", *args]) == 0
    (run,) = find_runs(tmp_path)
    assert list(read_trace(run)["step"]) == [0, 1, 2]
