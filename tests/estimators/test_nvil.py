"""NVIL: unbiased up to its scale before and after learning, a baseline that learns, its state in
checkpoints, and a short VAE run.

Threshold: ``|mean − exact/scale| / s.e.`` per coordinate, Bonferroni over every coordinate tested in
this file at a family-wise level of 1e-3 (the argument of ``tests/estimators/test_unbiased.py``).
``scale = max(1, σ̂)`` is read from the estimator after its updates: in eval mode (the variance
draws) nothing changes it.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import pytest
import torch
from scipy.stats import norm
from torch import Tensor

from dcvbench.checkpoints import load_checkpoint, write_checkpoint
from dcvbench.config import VaeConfig
from dcvbench.estimators import EstimatorError, build_estimator, default_settings, get_estimator
from dcvbench.estimators.nvil import NVIL
from dcvbench.jobs.vae import run_vae
from dcvbench.measure.variance import resample_variance
from dcvbench.objectives import ProblemShape
from dcvbench.problems.toy import exact_gradient, make_objective
from dcvbench.problems.vae import VAE, NegativeELBO
from dcvbench.results import read_trace
from tests.problems.test_enumerable import LATENT, PIXELS, exact_elbo, gradient_of, tiny_vae

F64 = torch.float64
DIM, DRAWS = 6, 40_000
TOY_SCALE = 40.0  # makes the toy's learning signal spread past 1, so max(1, σ̂) is not 1
FAMILY_ALPHA = 1e-3
# Coordinates tested: two toy states (3 rows × DIM) and the enumerable VAE (3 rows × LATENT).
Z_CRITICAL = float(norm.isf(FAMILY_ALPHA / (2 * (2 * 3 * DIM + 3 * LATENT))))

FAST = {**default_settings("vae"), "control_lr": 1e-2}  # the baseline network learns within a test


def toy_logits() -> Tensor:
    """``[3, DIM]`` float64: a spread of θ, θ = ½, and θ near 0 and 1."""
    spread = torch.logit(torch.linspace(0.1, 0.9, DIM, dtype=F64))
    extreme = torch.logit(torch.tensor([0.02, 0.98, 0.02, 0.98, 0.3, 0.7], dtype=F64))
    return torch.stack([spread, torch.zeros(DIM, dtype=F64), extreme])


@dataclass(frozen=True)
class Scaled:
    """``factor · f``: the toy objective with a larger spread."""

    objective: object
    factor: float

    def __call__(self, b: Tensor) -> Tensor:
        return self.factor * self.objective(b)


def train(estimator: NVIL, logits: Tensor, f, k: int, steps: int, seed: int) -> list[float]:
    """``steps`` estimates, each used and then learned from; the baseline's squared errors."""
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        estimate = estimator(logits, f, k, generator)
        if estimate.learning is not None:
            losses.append(float(estimate.learning.detach()))
        estimator.update(estimate)
    return losses


def max_bias_z(estimator: NVIL, logits: Tensor, f, k: int, exact: Tensor, seed: int) -> float:
    result = resample_variance(estimator, logits, f, k, DRAWS, torch.Generator().manual_seed(seed))
    scale = float(estimator.signal_scale)
    return float(result.bias_z(exact / scale).max())


@pytest.mark.parametrize("updates", [0, 30])
def test_unbiased_on_the_toy_up_to_its_scale(updates: int):
    objective = make_objective("quadratic-form", DIM, dtype=F64)
    f, logits = Scaled(objective, TOY_SCALE), toy_logits()
    estimator = get_estimator("nvil")
    assert estimator.network is None  # no context on the toy: the scalar baseline only
    train(estimator, logits, f, 2, updates, seed=1)
    if updates:
        assert float(estimator.baseline) != 0.0 and float(estimator.signal_scale) > 1.5
    else:
        assert float(estimator.baseline) == 0.0 and float(estimator.signal_scale) == 1.0
    exact = TOY_SCALE * exact_gradient(objective, logits)
    z = max_bias_z(estimator, logits, f, 2, exact, seed=10 + updates)
    assert z < Z_CRITICAL, f"after {updates} updates: max |z| = {z:.2f} ≥ {Z_CRITICAL:.2f}"


def test_first_estimate_centres_each_value_by_the_mean_of_the_others():
    # Before any update c is undefined; replayed on the same samples, with scale 1.
    f, logits = make_objective("quadratic-form", DIM, dtype=F64), toy_logits()
    estimator = get_estimator("nvil")
    estimate = estimator(logits, f, 3, torch.Generator().manual_seed(0))
    noise = estimator.sample(logits, 3, torch.Generator().manual_seed(0))
    probs = torch.sigmoid(logits)
    b = (noise < probs).to(F64)  # [K, B, D]
    values = f(b)  # [K, B]
    others_mean = (values.sum() - values) / (values.numel() - 1)
    expected = ((values - others_mean).unsqueeze(-1) * (b - probs)).mean(0)
    torch.testing.assert_close(estimate.grad, expected, rtol=1e-12, atol=1e-14)


def test_unbiased_on_a_vae_with_a_learned_baseline_network():
    model, x, logits = tiny_vae()
    estimator = build_estimator("nvil", FAST, ProblemShape(LATENT, PIXELS))
    train(estimator, logits, NegativeELBO(model, x, logits), 3, 200, seed=2)
    with torch.no_grad():
        prediction = estimator.network(x.float()).squeeze(-1)
    assert prediction.std() > 0.1  # the network's baseline differs between the rows
    exact = gradient_of(lambda eta: -exact_elbo(model, x, eta), logits)
    f = NegativeELBO(model, x, logits, generative_grads=False)
    z = max_bias_z(estimator, logits, f, 3, exact, seed=20)
    assert z < Z_CRITICAL, f"max |z| = {z:.2f} ≥ {Z_CRITICAL:.2f}"


def vae_batch(pixels: int = 64, rows: int = 16) -> tuple[VAE, Tensor, Tensor]:
    """A fixed model and batch whose expected ``f`` differs a lot between rows: images from 10% to
    90% ink, and a decoder that predicts mostly blank pixels."""
    model = VAE(latent=6, pixels=pixels, dtype=F64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model.decoder[-1].bias.fill_(-2.0)
    ink = torch.linspace(0.1, 0.9, rows, dtype=F64).unsqueeze(1)
    x = (torch.rand(rows, pixels, generator=torch.Generator().manual_seed(2), dtype=F64) < ink).to(F64)
    return model, x, model.encode(x).detach()


def test_the_baseline_network_learns_what_the_input_explains():
    """Squared error of ``b_ψ(x)`` to ``f`` minus the batch mean: it starts at the between-row plus
    the within-row variance of ``f`` and must fall close to the within-row part, the least any
    baseline of ``x`` can reach."""
    model, x, logits = vae_batch()
    f = NegativeELBO(model, x, logits)
    estimator = build_estimator("nvil", FAST, ProblemShape(6, context=64))
    losses = train(estimator, logits, f, 4, 300, seed=3)
    with torch.no_grad():
        b = (torch.rand(4000, *logits.shape, generator=torch.Generator().manual_seed(4), dtype=F64)
             < torch.sigmoid(logits)).to(F64)  # fmt: skip
        values = f(b)  # [S, B]
    within, between = values.var(0).mean(), values.mean(0).var(correction=0)
    assert between > 100 * within  # the rows' inputs explain almost all of f's spread
    first, last = statistics.mean(losses[:10]), statistics.mean(losses[-50:])
    assert first > 0.8 * float(between)
    assert last < float(within) + 0.01 * float(between), (first, last, float(within), float(between))


def test_estimates_use_the_state_from_before_their_update():
    model, x, logits = vae_batch()
    f = NegativeELBO(model, x, logits)
    estimator = build_estimator("nvil", default_settings("vae"), ProblemShape(6, context=64))
    first = estimator(logits, f, 2, torch.Generator().manual_seed(0))
    assert float(first.stats["baseline"]) == 0.0 and float(first.stats["signal_scale"]) == 1.0
    estimator.update(first)
    # The first update sets c and σ̂² to the first batch's statistics.
    assert float(estimator.baseline) == pytest.approx(float(first.values.detach().mean()))
    assert float(estimator.signal_variance) == pytest.approx(float(first.stats["signal_variance"]))
    second = estimator(logits, f, 2, torch.Generator().manual_seed(1))
    assert float(second.stats["baseline"]) == float(estimator.baseline)
    assert float(second.stats["signal_scale"]) == pytest.approx(
        max(1.0, float(first.stats["signal_variance"]) ** 0.5)
    )
    estimator.eval()
    assert estimator(logits, f, 2, torch.Generator().manual_seed(1)).learning is None  # no loss to learn from


def test_the_baseline_network_needs_the_context_it_was_built_for():
    estimator = build_estimator("nvil", default_settings("vae"), ProblemShape(DIM, context=5))
    logits = toy_logits()
    with pytest.raises(EstimatorError, match="context of width 5; the objective has none"):
        estimator(logits, make_objective("sum-square", DIM), 2, torch.Generator().manual_seed(0))


def assert_same_state(a: NVIL, b: NVIL) -> None:
    """Parameters, buffers (c, σ̂², the flag) and the network's Adam state are equal."""
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for name, value in state_a.items():
        if isinstance(value, Tensor):
            assert torch.equal(state_b[name], value), name
    adam_a, adam_b = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    assert adam_a.keys() == adam_b.keys()
    for index, moments in adam_a.items():
        for name, value in moments.items():
            assert torch.equal(adam_b[index][name], value), (index, name)


def test_state_round_trips_through_a_checkpoint(tmp_path):
    model, x, logits = vae_batch()
    f = NegativeELBO(model, x, logits)
    shape, settings = ProblemShape(6, context=64), default_settings("vae")
    estimator = build_estimator("nvil", settings, shape)
    train(estimator, logits, f, 2, 5, seed=5)
    write_checkpoint(tmp_path / "checkpoint.pt", {"step": 5, "estimator": estimator.state_dict()})
    restored = build_estimator("nvil", settings, shape)
    restored.load_state_dict(load_checkpoint(tmp_path / "checkpoint.pt", torch.device("cpu"))["estimator"])
    assert_same_state(estimator, restored)
    assert int(restored.optimizer.state_dict()["state"][0]["step"]) == 5
    # The two continue identically: the same losses, the same learned state.
    assert train(estimator, logits, f, 2, 3, seed=6) == train(restored, logits, f, 2, 3, seed=6)
    assert_same_state(estimator, restored)


def test_vae_run_with_nvil(tmp_path):
    config = VaeConfig.for_protocol(
        "dcv", estimators=("nvil",), latent_vars=8, batch_size=20, steps=40, log_every=10, var_every=20,
        eval_every=20, checkpoint_every=20, var_samples=8, eval_samples=5, device="cpu", out=str(tmp_path),
    )  # fmt: skip
    (summary,) = run_vae(config)
    assert summary.status == "finished"
    trace = read_trace(summary.path)
    evaluated = trace["test_bound"].dropna()
    assert len(evaluated) == 3 and evaluated.map(math.isfinite).all() and (evaluated < 0).all()
    assert trace["train_elbo"].iloc[1:].map(math.isfinite).all()
    assert trace["grad_var_resample"].dropna().gt(0).all()
    assert "train_bound" not in trace  # vimco's stat only
    assert trace["baseline"].iloc[1:].notna().all() and trace["signal_scale"].iloc[1:].ge(1.0).all()
    state = load_checkpoint(summary.path / "checkpoint.pt", torch.device("cpu"))["estimator"]
    assert float(state["baseline"]) > 100  # c follows f: hundreds of nats over 784 pixels
    assert state["network.2.weight"].abs().sum() > 0  # the network's output layer left zero
    assert state["_extra_state"]["optimizer"]["state"]  # and its Adam state is saved
