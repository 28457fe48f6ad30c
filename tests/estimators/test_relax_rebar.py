"""REBAR and RELAX (DESIGN §3.4): the conditional relaxed sample, the control, and its training.

Unbiasedness against the exact toy gradient — fresh, trained and randomised controls, and the power
check on the published bug — is in ``test_unbiased.py``.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
from scipy.stats import kstest

from dcvbench.estimators import (
    Estimator,
    EstimatorError,
    build_estimator,
    default_settings,
    estimator_info,
    measuring,
)
from dcvbench.latent.conditional import conditional_logistic
from dcvbench.latent.noise import logistic_from_uniform
from dcvbench.measure.variance import draw_estimates, resample_variance
from dcvbench.objectives import ProblemShape
from dcvbench.problems.toy import make_objective
from dcvbench.problems.vae import VAE, NegativeELBO
from dcvbench.training import train_step

NAMES = ("rebar", "relax")
DIM = 6


def build(name: str, dim: int = DIM, context: int = 0, **settings) -> Estimator:
    """As the jobs build it; float64 on the toy (``context == 0``), the VAE's float32 otherwise."""
    settings = {**default_settings("toy" if context == 0 else "vae"), **settings}
    estimator = build_estimator(name, settings, ProblemShape(dim, context=context))
    return estimator.double() if context == 0 else estimator


def toy_logits(rows: int = 3, dim: int = DIM, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.logit(0.05 + 0.9 * torch.rand(rows, dim, generator=generator, dtype=torch.float64))


def design_conditional(logits: torch.Tensor, b: torch.Tensor, v: torch.Tensor, through_theta: bool = True):
    """DESIGN §3.4 as written: ``v' = b(vθ + 1 − θ) + (1 − b)v(1 − θ)``, ``z̃ = η + log v' − log(1 − v')``;
    ``through_theta=False`` detaches ``θ`` inside ``v'`` (the published bug)."""
    probs = torch.sigmoid(logits) if through_theta else torch.sigmoid(logits).detach()
    noise = b * (v * probs + 1.0 - probs) + (1.0 - b) * v * (1.0 - probs)
    return logits + torch.log(noise) - torch.log1p(-noise)


def tiny_vae(latent: int = 5, pixels: int = 12) -> tuple[VAE, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    model = VAE(latent=latent, arch="nonlinear", pixels=pixels, hidden=8, generator=generator)
    x = (torch.rand(4, pixels, generator=generator) < 0.5).float()  # [B, P]
    return model, x


# -- the conditional relaxed sample ---------------------------------------------------------------


def test_conditional_sample_is_the_design_formula_in_value_and_in_its_gradient():
    logits = toy_logits(4, 5).requires_grad_(True)  # [4, 5]
    generator = torch.Generator().manual_seed(1)
    v = torch.rand(3, 4, 5, generator=generator, dtype=torch.float64)  # [K, B, D]
    b = (torch.rand(3, 4, 5, generator=generator, dtype=torch.float64) < 0.5).double()
    ours, design = conditional_logistic(logits, b, v), design_conditional(logits, b, v)
    torch.testing.assert_close(ours, design, rtol=1e-12, atol=1e-12)
    # The whole derivative in η, the part through θ = σ(η) inside v' included.
    (ours_grad,) = torch.autograd.grad(ours.sum(), logits)
    (design_grad,) = torch.autograd.grad(design.sum(), logits)
    torch.testing.assert_close(ours_grad, design_grad, rtol=1e-10, atol=1e-12)
    # ... which is far from the direct part alone: the dependence through θ is not negligible.
    (direct_grad,) = torch.autograd.grad(design_conditional(logits, b, v, through_theta=False).sum(), logits)
    assert (ours_grad - direct_grad).abs().max() > 0.5


def test_conditional_sample_lies_on_the_side_of_b_and_is_finite_at_the_extremes():
    for dtype in (torch.float64, torch.float32):
        finfo = torch.finfo(dtype)
        logits = torch.tensor([[-40.0, -17.0, -1.0, 0.0, 1.0, 17.0, 40.0]], dtype=dtype, requires_grad=True)
        v = torch.tensor([finfo.tiny, 1e-4, 0.5, 1.0 - finfo.eps], dtype=dtype).reshape(4, 1, 1)  # [4, 1, 1]
        v = v.expand(4, 1, 7)
        for bit in (0.0, 1.0):
            b = torch.full((4, 1, 7), bit, dtype=dtype)
            z_tilde = conditional_logistic(logits, b, v)
            (grad,) = torch.autograd.grad(z_tilde.sum(), logits)
            assert torch.isfinite(z_tilde).all() and torch.isfinite(grad).all(), (dtype, bit)
            assert ((z_tilde > 0) == (b > 0)).all(), (dtype, bit, z_tilde)


@pytest.mark.parametrize("bit", [0, 1])
def test_conditional_sample_has_the_logistic_law_truncated_to_the_side_of_b(bit: int):
    # Given b, z̃ must follow z = η + L conditioned on H(z) = b: the logistic CDF σ(t − η) truncated
    # to t > 0 (b = 1) or t < 0 (b = 0), renormalised. Kolmogorov–Smirnov at a fixed seed.
    eta, n = 0.8, 20_000
    theta = torch.sigmoid(torch.tensor(eta, dtype=torch.float64))
    v = torch.rand(n, 1, 1, generator=torch.Generator().manual_seed(bit), dtype=torch.float64)
    b = torch.full_like(v, float(bit))
    z_tilde = conditional_logistic(torch.tensor([[eta]], dtype=torch.float64), b, v).flatten().numpy()

    def cdf(t):
        below = torch.sigmoid(torch.as_tensor(t, dtype=torch.float64) - eta)
        mass = (below - (1 - theta)) / theta if bit else below / (1 - theta)
        return mass.clamp(0.0, 1.0).numpy()

    assert kstest(z_tilde, cdf).pvalue > 1e-3


# -- the estimate ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_info_counts_three_evaluations_per_sample(name: str):
    info = estimator_info(name)
    assert info.unbiased and info.min_k == 1 and info.evals(4) == 12 and info.evals_rule() == "3K"
    assert info.problems == ("toy", "vae", "predict", "user")


@pytest.mark.parametrize("name", NAMES)
def test_k_samples_average_k_independent_single_sample_estimates(name: str):
    logits, f = toy_logits(), make_objective("quadratic-form", DIM)
    estimator = build(name).eval()
    noise = estimator.sample(logits, 4, torch.Generator().manual_seed(5))  # [2, K, B, D]
    joint = estimator.estimate(logits, f, noise)
    singles = [estimator.estimate(logits, f, noise[:, k : k + 1]) for k in range(4)]
    torch.testing.assert_close(
        joint.grad, torch.stack([s.grad for s in singles]).mean(0), rtol=1e-12, atol=1e-14
    )
    torch.testing.assert_close(joint.values, torch.cat([s.values for s in singles]), rtol=0, atol=0)


def test_values_are_f_at_the_hard_samples_and_z_is_concretes():
    logits, f = toy_logits(), make_objective("sum-square", DIM)
    estimator = build("rebar")
    noise = estimator.sample(logits, 3, torch.Generator().manual_seed(2))
    estimate = estimator.estimate(logits, f, noise)
    b = (logits + logistic_from_uniform(noise[0]) > 0).double()  # H(z), z = η + L(u)
    torch.testing.assert_close(estimate.values.detach(), f(b), rtol=0, atol=0)


def test_a_fresh_relax_has_exactly_rebars_control():
    # r_ψ's output layer starts at zero: same noise, same estimate, on the toy and on a VAE (with x).
    logits, f = toy_logits(), make_objective("quadratic-form", DIM)
    noise = build("rebar").sample(logits, 2, torch.Generator().manual_seed(4))
    torch.testing.assert_close(
        build("relax").estimate(logits, f, noise).grad, build("rebar").estimate(logits, f, noise).grad
    )
    model, x = tiny_vae()
    with torch.no_grad():
        vae_logits = model.encode(x)
    vae_f = NegativeELBO(model, x, vae_logits)
    noise = build("rebar", 5, 12).sample(vae_logits, 2, torch.Generator().manual_seed(4))
    relax, rebar = build("relax", 5, 12), build("rebar", 5, 12)
    torch.testing.assert_close(
        relax.estimate(vae_logits, vae_f, noise).grad, rebar.estimate(vae_logits, vae_f, noise).grad
    )


@pytest.mark.parametrize("name", NAMES)
def test_training_mode_changes_nothing_but_the_learning_loss(name: str):
    logits, f = toy_logits(), make_objective("separable", DIM)
    estimator = build(name)
    noise = estimator.sample(logits, 2, torch.Generator().manual_seed(6))
    trained = estimator.estimate(logits, f, noise)
    measured = estimator.eval().estimate(logits, f, noise)
    assert measured.learning is None
    torch.testing.assert_close(trained.grad, measured.grad, rtol=1e-13, atol=1e-16)
    assert not trained.grad.requires_grad
    # learning's value is mean_B ‖g‖²; its graph reaches the estimator's parameters only.
    torch.testing.assert_close(trained.learning.detach(), trained.grad.pow(2).sum(-1).mean())
    for stat in ("control_temperature", "control_scale"):
        assert trained.stats[stat].dim() == 0 and not trained.stats[stat].requires_grad
    assert float(trained.stats["control_temperature"]) == pytest.approx(0.5)
    assert float(trained.stats["control_scale"]) == 1.0
    assert estimator.state_stats() == {"control_temperature": pytest.approx(0.5), "control_scale": 1.0}


@pytest.mark.parametrize("name", NAMES)
def test_learning_gradient_is_the_derivative_of_the_squared_estimate(name: str):
    # Central finite differences of mean_B ‖g‖² at fixed noise, in float64, for λ, s and (relax)
    # weights of r_ψ given non-zero values so that every path of the second-order graph is exercised.
    logits, f = toy_logits(), make_objective("quadratic-form", DIM)
    estimator = build(name)
    with torch.no_grad():
        estimator.log_temperature.fill_(-0.3)
        estimator.scale.fill_(0.8)
        if estimator.network is not None:
            generator = torch.Generator().manual_seed(9)
            for param in estimator.network.parameters():
                param.copy_(0.5 * torch.randn(param.shape, generator=generator, dtype=param.dtype))
    noise = estimator.sample(logits, 2, torch.Generator().manual_seed(8))
    learning = estimator.estimate(logits, f, noise).learning
    params = list(estimator.parameters())
    analytic = torch.autograd.grad(learning, params)

    def squared(est: Estimator) -> float:
        with measuring(est):
            grad = est.estimate(logits, f, noise).grad
        return float(grad.pow(2).sum(-1).mean())

    step = 1e-6
    for param, gradient in zip(params, analytic, strict=True):
        for index in list(range(param.numel()))[:3]:
            with torch.no_grad():
                param.view(-1)[index] += step
            plus = squared(estimator)
            with torch.no_grad():
                param.view(-1)[index] -= 2 * step
            minus = squared(estimator)
            with torch.no_grad():
                param.view(-1)[index] += step
            numeric = (plus - minus) / (2 * step)
            assert float(gradient.view(-1)[index]) == pytest.approx(numeric, rel=1e-5, abs=1e-9), (
                param.shape,
                index,
            )


def test_context_of_the_wrong_width_is_a_clear_error():
    with pytest.raises(
        EstimatorError, match="relax was built for a context of width 12; the objective has none"
    ):
        build("relax", DIM, 12).double()(toy_logits(), make_objective("separable", DIM), 1, torch.Generator())
    model, x = tiny_vae()
    with torch.no_grad():
        logits = model.encode(x)
    with pytest.raises(EstimatorError, match="width 0; the objective has width 12"):
        build("relax", 5, 0).float()(logits, NegativeELBO(model, x, logits), 1, torch.Generator())


# -- training --------------------------------------------------------------------------------------


def variance_and_standard_error(
    estimator: Estimator, logits, f, draws: int, seed: int
) -> tuple[float, float]:
    """``resample_variance``'s number and its standard error from the same draws (per-draw squared
    deviations averaged over coordinates: their mean is the variance, their spread its s.e.)."""
    generator = torch.Generator().manual_seed(seed)
    grads = torch.cat([g for g, _ in draw_estimates(estimator, logits, f, 1, draws, generator)])  # [M, 1, D]
    squares = (grads - grads.mean(0)).pow(2).mean((1, 2)) * draws / (draws - 1)  # [M]
    variance = resample_variance(estimator, logits, f, 1, draws, torch.Generator().manual_seed(seed)).variance
    assert variance == pytest.approx(float(squares.mean()), rel=1e-9)
    return variance, float(squares.std() / draws**0.5)


@pytest.mark.parametrize("name", NAMES)
def test_training_the_control_lowers_the_variance_at_a_fixed_point(name: str):
    dim = 10
    logits, f = toy_logits(1, dim, seed=5), make_objective("separable", dim)
    estimator = build(name, dim, control_lr=1e-2)
    before, before_se = variance_and_standard_error(estimator, logits, f, 20_000, seed=1)
    generator = torch.Generator().manual_seed(2)
    for _ in range(300):  # 16 independent rows per step: a less noisy ‖g‖² gradient
        estimator.update(estimator(logits.repeat(16, 1), f, 1, generator))
    after, after_se = variance_and_standard_error(estimator, logits, f, 20_000, seed=1)
    margin = 5 * (before_se**2 + after_se**2) ** 0.5
    assert after < before - margin, (before, after, margin)
    # Measured: about 5× lower for rebar (λ → 0.30, s → 1.42), over 100× for relax.
    assert after < 0.5 * before


@pytest.mark.parametrize("name", NAMES)
def test_state_round_trips_through_a_weights_only_checkpoint(name: str):
    logits, f = toy_logits(), make_objective("sum-square", DIM)
    estimator = build(name, control_lr=1e-2)
    generator = torch.Generator().manual_seed(3)
    for _ in range(5):
        estimator.update(estimator(logits, f, 2, generator))
    buffer = io.BytesIO()
    torch.save(estimator.state_dict(), buffer)
    buffer.seek(0)
    restored = build(name, control_lr=1e-2)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.optimizer.state_dict()["state"]  # Adam's moments came back, not only the weights
    state = generator.get_state()

    def continue_training(est: Estimator) -> list[torch.Tensor]:
        generator.set_state(state)
        grads = []
        for _ in range(3):
            estimate = est(logits, f, 2, generator)
            est.update(estimate)
            grads.append(estimate.grad)
        return grads

    for a, b in zip(continue_training(estimator), continue_training(restored), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(estimator.parameters(), restored.parameters(), strict=True):
        assert torch.equal(a, b)


# -- in a VAE --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_update_steps_the_control_only_after_the_model_changed_in_place(name: str):
    # A training step updates the decoder in place before estimator.update(); the estimator's
    # learning must still work, and change nothing of the model.
    model, x = tiny_vae()
    estimator = build(name, 5, 12, control_lr=1e-2)
    logits = model.encode(x)
    f = NegativeELBO(model, x, logits)
    estimate = estimator(logits, f, 2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        for param in model.decoder_parameters():
            param.add_(0.1)
    snapshot = copy.deepcopy(model.state_dict())
    control = [p.detach().clone() for p in estimator.parameters()]
    estimator.update(estimate)
    for key, value in model.state_dict().items():
        assert torch.equal(value, snapshot[key]), key
    assert all(p.grad is None for p in model.parameters())
    assert any(not torch.equal(p, q) for p, q in zip(estimator.parameters(), control, strict=True))


@pytest.mark.parametrize("name", NAMES)
def test_train_step_trains_the_decoder_on_the_hard_samples_only(name: str):
    model, x = tiny_vae()
    reference = copy.deepcopy(model)
    estimator = build(name, 5, 12)
    encoder = torch.optim.Adam(model.encoder_parameters(), lr=1e-3)
    decoder = torch.optim.Adam(model.decoder_parameters(), lr=1e-3)
    output = train_step(model, estimator, x, 3, torch.Generator().manual_seed(4), encoder, decoder)
    # The same samples by hand: b = H(η + L(u)) from the same generator; ∇ mean f(b) only.
    logits = reference.encode(x).detach()
    noise = estimator.sample(logits, 3, torch.Generator().manual_seed(4))
    b = (logits + logistic_from_uniform(noise[0]) > 0).float()
    NegativeELBO(reference, x, logits)(b).mean().backward()
    for trained, expected in zip(model.decoder_parameters(), reference.decoder_parameters(), strict=True):
        torch.testing.assert_close(trained.grad, expected.grad)
    assert torch.isfinite(output.train_elbo) and set(output.estimate.stats) == {
        "control_temperature",
        "control_scale",
    }
