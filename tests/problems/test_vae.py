"""The VAE: its layers and log-probabilities, its objective and the shared backward pass, the
relaxed objective (Concrete densities or the analytic KL), and its bounds.

Binary latents here (the categorical ones in ``test_vae_categorical.py``), and what is the same for
both latent families parametrised over them. Small models in float64 (tiny latent spaces allow exact
enumeration of log p(x)); tolerances of the statistical checks come from standard errors computed
exactly by enumeration. The training step that joins the model to an estimator is tested in
``tests/test_training.py``.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from scipy.stats import norm
from torch import Tensor
from torch.distributions import Bernoulli

from dcvbench.estimators import get_estimator
from dcvbench.latent import BINARY
from dcvbench.latent.noise import logistic_from_uniform, uniform_noise
from dcvbench.objectives import Evaluation, ProblemShape
from dcvbench.problems.vae import KL_VARIANTS, VAE, NegativeELBO, elbo, iwae_bound

F64 = torch.float64
# The latents of each family in the tests parametrised over both: 8 bits, or 4 variables of 3 classes.
LATENTS = {"binary": (8, None), "categorical": (4, 3)}


def make_model(seed: int = 0, **options) -> VAE:
    options = {"latent": 8, "dtype": F64, **options}
    return VAE(generator=torch.Generator().manual_seed(seed), **options)


def family_model(family: str, seed: int = 0, **options) -> VAE:
    """A small float64 model with the latents of ``family`` (:data:`LATENTS`), 16 pixels."""
    latent, classes = LATENTS[family]
    return make_model(seed, latent=latent, classes=classes, pixels=16, hidden=7, **options)


def binary_images(rows: int, pixels: int = 784, seed: int = 1) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(rows, pixels, generator=generator, dtype=F64) < 0.3).to(F64)  # [B, P]


def all_configurations(latent: int) -> Tensor:
    """Every binary vector of length ``latent``, ``[2^D, 1, D]`` (broadcasts over rows)."""
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=latent)), dtype=F64).unsqueeze(1)


# -- the model ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "widths"),
    [("linear", [(784, 8)]), ("nonlinear", [(784, 200), (200, 200), (200, 8)])],
)
def test_architectures_have_the_published_layers(arch, widths):
    model = make_model(arch=arch)
    linear = [m for m in model.encoder if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == widths
    decoder = [m for m in model.decoder if isinstance(m, torch.nn.Linear)]
    assert [(m.out_features, m.in_features) for m in decoder][::-1] == widths
    slopes = {m.negative_slope for m in model.modules() if isinstance(m, torch.nn.LeakyReLU)}
    assert slopes == (set() if arch == "linear" else {0.3})
    x = binary_images(4)
    assert model.encode(x).shape == (4, 8)
    assert model.decode(torch.zeros(3, 4, 8, dtype=F64)).shape == (3, 4, 784)


def test_bad_architecture_names_the_choices():
    with pytest.raises(ValueError, match="linear, nonlinear"):
        VAE(arch="deep")


def test_log_probabilities_match_torch_distributions():
    model = make_model(learn_prior=True)
    with torch.no_grad():
        model.prior_logits.normal_(generator=torch.Generator().manual_seed(3))
    x = binary_images(4)
    logits = model.encode(x)  # [B, D]
    b = Bernoulli(logits=logits).sample((5,))  # [K, B, D]
    pixel_logits = model.decode(b)  # [K, B, P]
    likelihood = Bernoulli(logits=pixel_logits).log_prob(x.expand_as(pixel_logits)).sum(-1)
    prior = Bernoulli(logits=model.prior_logits).log_prob(b).sum(-1)
    posterior = Bernoulli(logits=logits).log_prob(b).sum(-1)
    torch.testing.assert_close(model.log_likelihood(x, b), likelihood)
    torch.testing.assert_close(model.log_prior(b), prior)
    torch.testing.assert_close(model.log_joint(x, b), likelihood + prior)
    torch.testing.assert_close(model.log_posterior(b, logits), posterior)
    f = NegativeELBO(model, x, logits)
    torch.testing.assert_close(f(b), -(likelihood + prior - posterior))


def test_mean_centring_and_output_bias():
    mean = torch.linspace(0.0, 1.0, 784, dtype=F64)  # includes pixels always 0 and always 1
    model = make_model(input_mean=mean, output_bias_mean=mean)
    plain = make_model()  # same seed: same weights
    x = binary_images(4)
    torch.testing.assert_close(model.encode(x), plain.encoder(x - mean))
    bias = model.decoder[-1].bias
    torch.testing.assert_close(bias, torch.logit(mean.clamp(1e-3, 1 - 1e-3)))
    assert torch.isfinite(bias).all()


def test_mean_image_takes_the_models_dtype():
    mean = torch.full((784,), 0.25, dtype=F64)
    model = VAE(latent=4, input_mean=mean, output_bias_mean=mean, dtype=torch.float32)
    assert model.input_mean.dtype == torch.float32
    assert model.encode(binary_images(2).float()).dtype == torch.float32


def test_what_training_and_the_bounds_ask_of_the_model():
    model = make_model(arch="nonlinear")
    assert model.problem_shape == ProblemShape(8, context=784)
    x = binary_images(3)
    logits = model.encode(x)
    f = model.objective(x, logits, generative_grads=False, prior_temperature=0.3, kl="analytic")
    assert isinstance(f, NegativeELBO) and (f.generative_grads, f.prior_temperature, f.kl) == (
        False,
        0.3,
        "analytic",
    )
    # Posterior samples come from the bounds' stream as they always did: thresholded uniforms.
    b = model.sample_posterior(logits, 4, torch.Generator().manual_seed(2))
    noise = uniform_noise((4, *logits.shape), logits, torch.Generator().manual_seed(2))
    assert torch.equal(b, (noise < torch.sigmoid(logits)).to(F64))


def test_fixed_prior_is_a_buffer_and_learned_prior_a_parameter():
    fixed, learned = make_model(), make_model(learn_prior=True)
    assert not fixed.learn_prior and fixed.prior_parameters() == []
    assert torch.equal(fixed.prior_logits, torch.zeros(8, dtype=F64))
    assert learned.prior_parameters() == [learned.prior_logits]
    assert learned.generative_parameters()[-1] is learned.prior_logits


# -- the objective ------------------------------------------------------------------------------


def test_objective_never_reaches_the_encoder_and_accepts_relaxed_samples():
    model = make_model()
    x = binary_images(4)
    logits = model.encode(x)
    f = NegativeELBO(model, x, logits)
    relaxed = torch.rand(2, 4, 8, generator=torch.Generator().manual_seed(0), dtype=F64)  # real b
    values = f(relaxed)
    assert values.shape == (2, 4) and torch.isfinite(values).all()
    values.sum().backward()
    assert all(p.grad is None for p in model.encoder_parameters())
    assert all(p.grad is not None for p in model.decoder_parameters())


@pytest.mark.parametrize("family", LATENTS)
@pytest.mark.parametrize("arch", ["linear", "nonlinear"])
@pytest.mark.parametrize("learn_prior", [False, True])
def test_value_and_input_grad_equals_separate_autograd(family, arch, learn_prior):
    model = family_model(family, arch=arch, learn_prior=learn_prior)
    with torch.no_grad():
        model.prior_logits.normal_(generator=torch.Generator().manual_seed(3))
    x = binary_images(4, pixels=16)
    logits = model.encode(x)
    b = model.sample_posterior(logits.detach(), 3, torch.Generator().manual_seed(1))  # [K, B, *latent]
    params = model.generative_parameters()

    f = NegativeELBO(model, x, logits)
    evaluation = f.value_and_input_grad(b)
    assert isinstance(evaluation, Evaluation)

    b_leaf = b.clone().requires_grad_(True)
    expected = NegativeELBO(model, x, logits)(b_leaf)  # [K, B]
    (expected_input_grad,) = torch.autograd.grad(expected.sum(), b_leaf, retain_graph=True)
    expected_params = torch.autograd.grad(expected.mean(), params)

    torch.testing.assert_close(evaluation.values, expected.detach())
    assert not evaluation.values.requires_grad
    torch.testing.assert_close(evaluation.input_grad, expected_input_grad)
    # In the documented order: the objective's generative parameters, the model's decoder then prior.
    assert f.generative_parameters() == params
    assert len(evaluation.param_grads) == len(params) == len(expected_params)
    for got, want in zip(evaluation.param_grads, expected_params, strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("family", LATENTS)
def test_parameter_gradients_only_when_asked_for(family):
    model = family_model(family)
    x = binary_images(2, pixels=16)
    logits = model.encode(x)
    b = model.sample_posterior(logits.detach(), 2, torch.Generator().manual_seed(1))
    measuring = model.objective(x, logits, generative_grads=False).value_and_input_grad(b)
    training = model.objective(x, logits).value_and_input_grad(b)
    assert measuring.param_grads is None
    assert torch.equal(measuring.values, training.values)
    assert torch.equal(measuring.input_grad, training.input_grad)
    for param in model.decoder_parameters():
        param.requires_grad_(False)  # a frozen decoder: nothing to train, nothing computed
    assert model.objective(x, logits).value_and_input_grad(b).param_grads == ()


# -- the relaxed objective (Concrete) -----------------------------------------------------------

# (prior logit a, temperature λ): Bernoulli(½) at the posterior's default temperature, a skewed
# variable at the prior's, and a strongly skewed one hotter than both.
CONCRETE_CASES = [(0.0, 2.0 / 3.0), (1.5, 0.5), (-2.0, 1.0)]


def bin_concrete_log_density_in_probability_space(x: Tensor, a: float, temperature: float) -> Tensor:
    """Maddison et al. (2017): X ~ BinConcrete(α = e^a, λ) has density
    ``p(x) = λ α x^{−λ−1} (1−x)^{−λ−1} / (α x^{−λ} + (1−x)^{−λ})²``, here in logs."""
    alpha = math.exp(a)
    scale = math.log(temperature * alpha) - (temperature + 1) * (torch.log(x) + torch.log1p(-x))
    return scale - 2 * torch.log(alpha * x.pow(-temperature) + (1 - x).pow(-temperature))


@pytest.mark.parametrize(("a", "temperature"), CONCRETE_CASES)
def test_concrete_log_density_is_the_binary_concrete_density_in_logit_space(a, temperature):
    y = torch.linspace(-12.0, 12.0, 481, dtype=F64)  # [N]
    x = torch.sigmoid(y)
    # Change of variables y = logit(x): p_Y(y) = p_X(σ(y)) · σ(y)(1 − σ(y)).
    expected = bin_concrete_log_density_in_probability_space(x, a, temperature) + torch.log(x * (1 - x))
    logits = torch.tensor([a], dtype=F64)
    got = BINARY.relaxed_log_prob(y.unsqueeze(-1), logits, temperature)  # [N]
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-9)
    # Independent coordinates: the log-density of a vector is the sum over its last dimension.
    columns = torch.stack([y, y.flip(0), 0.5 * y], dim=-1)  # [N, 3]
    prior = torch.tensor([a, -a, 0.3], dtype=F64)
    per_column = [
        BINARY.relaxed_log_prob(columns[:, d : d + 1], prior[d : d + 1], temperature) for d in range(3)
    ]
    torch.testing.assert_close(BINARY.relaxed_log_prob(columns, prior, temperature), sum(per_column))


HISTOGRAM_SAMPLES = 200_000
HISTOGRAM_BINS = 40
SUBDIVISIONS = 100  # trapezoid intervals per bin for the expected bin probabilities
# Two-sided z per bin, Bonferroni over the bins of every case at a family-wise level of 1e-3.
HISTOGRAM_Z = float(norm.isf(1e-3 / (2 * HISTOGRAM_BINS * len(CONCRETE_CASES))))


@pytest.mark.parametrize(("a", "temperature"), CONCRETE_CASES)
def test_relaxed_samples_have_the_log_density(a, temperature):
    """The relaxed samples ``y = (a + L)/λ`` the concrete estimator draws against the density,
    integrated numerically over each bin; counts are binomial, so each bin's z uses the binomial s.e."""
    logits = torch.tensor([[a]], dtype=F64)  # [B = 1, D = 1]
    noise = uniform_noise((HISTOGRAM_SAMPLES, 1, 1), logits, torch.Generator().manual_seed(11))  # [N, 1, 1]
    y = BINARY.relax(logits, noise, temperature).flatten()  # [N]
    spread = math.log(99.0)  # the central 98% of the standard logistic
    grid = torch.linspace(
        (a - spread) / temperature, (a + spread) / temperature, HISTOGRAM_BINS * SUBDIVISIONS + 1, dtype=F64
    )
    density = BINARY.relaxed_log_prob(grid.unsqueeze(-1), logits[0], temperature).exp()
    mass = torch.cat([torch.zeros(1, dtype=F64), torch.cumulative_trapezoid(density, grid)])
    edges, probs = grid[::SUBDIVISIONS], mass[::SUBDIVISIONS].diff()  # [bins + 1], [bins]
    counts = torch.histogram(y, bins=edges).hist  # [bins]
    z = (counts - HISTOGRAM_SAMPLES * probs) / (HISTOGRAM_SAMPLES * probs * (1 - probs)).sqrt()
    assert z.abs().max() < HISTOGRAM_Z, z
    # And the density integrates to 1 over the line (the tails beyond ±40/λ hold < e^{−40}).
    line = torch.linspace((a - 40) / temperature, (a + 40) / temperature, 200_001, dtype=F64)
    total = torch.trapezoid(BINARY.relaxed_log_prob(line.unsqueeze(-1), logits[0], temperature).exp(), line)
    assert abs(float(total) - 1.0) < 1e-8


def test_posterior_density_at_its_own_reparameterised_sample_does_not_depend_on_eta():
    """At ``y = (η + L)/λ``, ``log q_λ(y; η) = log λ − L − 2·softplus(−L)``: the logistic noise's
    log-density and the Jacobian. So the relaxed KL reaches η only through the prior's density at y —
    and the pathwise gradient must differentiate both arguments of log q for that to hold."""
    generator = torch.Generator().manual_seed(4)
    eta = (2 * torch.randn(3, 5, generator=generator, dtype=F64)).requires_grad_(True)
    noise = logistic_from_uniform(uniform_noise((4, 3, 5), eta, generator))  # L: [K, B, D]
    temperature = 0.6
    log_q = BINARY.relaxed_log_prob((eta + noise) / temperature, eta, temperature)  # [K, B]
    expected = (math.log(temperature) - noise - 2 * torch.nn.functional.softplus(-noise)).sum(-1)
    torch.testing.assert_close(log_q, expected, rtol=1e-12, atol=1e-12)
    (grad,) = torch.autograd.grad(log_q.sum(), eta)
    torch.testing.assert_close(grad, torch.zeros_like(grad), rtol=0.0, atol=1e-12)


def test_analytic_kl_is_the_sum_over_both_states():
    generator = torch.Generator().manual_seed(8)
    eta = 3 * torch.randn(4, 6, generator=generator, dtype=F64)
    eta[0] = torch.tensor([20.0, -20.0, 0.0, 35.0, -35.0, 1e-3])  # near-certain bits stay finite
    prior = torch.randn(6, generator=generator, dtype=F64)
    states = torch.tensor([0.0, 1.0], dtype=F64).view(2, 1, 1)  # each bit's two values
    log_q = Bernoulli(logits=eta).log_prob(states)  # [2, B, D]
    log_p = Bernoulli(logits=prior).log_prob(states)  # [2, 1, D]
    expected = (log_q.exp() * (log_q - log_p)).sum(0).sum(-1)  # Σ_d Σ_{b ∈ {0,1}} q(b)(log q − log p)
    torch.testing.assert_close(BINARY.kl(eta, prior), expected, rtol=1e-12, atol=1e-12)
    assert (BINARY.kl(eta, prior) >= 0).all()


def relaxed_problem(seed: int = 2) -> tuple[VAE, Tensor, Tensor]:
    """A small float64 VAE with a learned, non-uniform prior, images and posterior logits ``[3, 5]``."""
    model = make_model(latent=5, learn_prior=True, seed=seed)
    with torch.no_grad():
        model.prior_logits.normal_(generator=torch.Generator().manual_seed(seed))
    x = binary_images(3)
    return model, x, model.encode(x).detach()


@pytest.mark.parametrize("kl", KL_VARIANTS)
def test_concrete_gradient_is_the_finite_difference_of_the_relaxed_objective(kl):
    """``g = ∇_η (1/K) Σ_k f̃((η + L_k)/λ; η)`` with the noise fixed, through ``y`` and the density
    (or KL) alike: checked by central differences of the relaxed objective written out here."""
    model, x, eta = relaxed_problem()
    temperature, prior_temperature = 0.7, 0.4
    f = NegativeELBO(model, x, eta, prior_temperature=prior_temperature, kl=kl)
    estimator = get_estimator("concrete", temperature=temperature)
    noise = estimator.sample(eta, 4, torch.Generator().manual_seed(3))  # [K, B, D]
    estimate = estimator.estimate(eta, f, noise)

    @torch.no_grad()
    def relaxed_values(logits: Tensor) -> Tensor:  # [K, B]
        y = (logits + logistic_from_uniform(noise)) / temperature  # [K, B, D]
        reconstruction = model.log_likelihood(x, torch.sigmoid(y))
        if kl == "analytic":
            return BINARY.kl(logits, model.prior_logits) - reconstruction
        log_prior = BINARY.relaxed_log_prob(y, model.prior_logits, prior_temperature)
        return -(reconstruction + log_prior - BINARY.relaxed_log_prob(y, logits, temperature))

    torch.testing.assert_close(estimate.values.detach(), relaxed_values(eta), rtol=1e-12, atol=1e-12)
    step = 1e-6
    columns = []
    for d in range(eta.shape[1]):  # rows are independent: shift one coordinate of every row at once
        shift = torch.zeros_like(eta)
        shift[:, d] = step
        difference = relaxed_values(eta + shift) - relaxed_values(eta - shift)  # [K, B]
        columns.append(difference.mean(0) / (2 * step))
    torch.testing.assert_close(estimate.grad, torch.stack(columns, dim=1), rtol=1e-6, atol=1e-6)


def test_relaxation_settings_are_checked_and_survive_tiling():
    model, x, eta = relaxed_problem()
    with pytest.raises(ValueError, match=r"prior_temperature must be > 0, got 0\.0"):
        NegativeELBO(model, x, eta, prior_temperature=0.0)
    with pytest.raises(ValueError, match="unknown kl 'exact'; choose from: relaxed, analytic"):
        NegativeELBO(model, x, eta, kl="exact")
    for kl in KL_VARIANTS:
        f = NegativeELBO(model, x, eta, prior_temperature=0.3, kl=kl)
        tiled = f.tile(2)
        assert (tiled.prior_temperature, tiled.kl) == (0.3, kl)
        y = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(0), dtype=F64)  # [K, B, D]
        with torch.no_grad():
            torch.testing.assert_close(
                tiled.relaxed(y.repeat(1, 2, 1), eta.repeat(2, 1), 0.5), f.relaxed(y, eta, 0.5).repeat(1, 2)
            )


def test_bounds_never_use_the_relaxed_objective(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("evaluation reached the relaxed objective")

    monkeypatch.setattr(NegativeELBO, "relaxed", refuse)
    model, x, _ = tiny_problem()
    assert torch.isfinite(iwae_bound(model, x, torch.Generator().manual_seed(0), samples=4)).all()
    assert torch.isfinite(elbo(model, x, torch.Generator().manual_seed(0))).all()


# -- bounds -------------------------------------------------------------------------------------


def tiny_problem(rows: int = 4) -> tuple[VAE, Tensor, Tensor]:
    """D = 3 latents (8 configurations), 16 pixels: exact log p(x) by enumeration."""
    model = make_model(latent=3, pixels=16, seed=5)
    x = binary_images(rows, pixels=16, seed=6)
    return model, x, model.encode(x).detach()


def exact_quantities(model: VAE, x: Tensor, logits: Tensor) -> dict[str, Tensor]:
    """log p(x), the ELBO, Var_q[log w] and χ² = Var_q[w / p(x)], per row, by enumeration."""
    b = all_configurations(model.latent).expand(-1, x.shape[0], -1)  # [8, B, D]
    log_q = model.log_posterior(b, logits)  # [8, B]
    log_w = model.log_joint(x, b) - log_q  # [8, B]
    q = log_q.exp()
    log_px = torch.logsumexp(log_q + log_w, 0)  # log Σ_b p(x, b): [B]
    mean = (q * log_w).sum(0)
    return {
        "log_px": log_px,
        "elbo": mean,
        "log_w_var": (q * (log_w - mean) ** 2).sum(0),
        "chi2": (q * (log_w - log_px).exp() ** 2).sum(0) - 1.0,
    }


@torch.no_grad()
def test_iwae_converges_to_exact_log_likelihood():
    model, x, logits = tiny_problem()
    exact = exact_quantities(model, x, logits)
    samples = 40_000
    bound = iwae_bound(model, x, torch.Generator().manual_seed(0), samples=samples, chunk=3_000)
    # log of a mean of S weights: s.d. ≈ √(χ²/S), bias ≈ −χ²/(2S) (delta method).
    tolerance = 5 * (exact["chi2"] / samples).sqrt() + exact["chi2"] / samples
    assert ((bound - exact["log_px"]).abs() <= tolerance).all(), (bound, exact["log_px"], tolerance)


@torch.no_grad()
def test_iwae_with_one_sample_is_the_elbo_in_expectation():
    model, x, logits = tiny_problem()
    exact = exact_quantities(model, x, logits)
    repeats = 5_000
    tiled = x.repeat(repeats, 1)  # row r belongs to row r mod B
    standard_error = (exact["log_w_var"] / repeats).sqrt()
    for draw in (
        lambda g: iwae_bound(model, tiled, g, samples=1),
        lambda g: elbo(model, tiled, g),
    ):
        per_row = draw(torch.Generator().manual_seed(1)).reshape(repeats, -1).mean(0)  # [B]
        assert ((per_row - exact["elbo"]).abs() <= 5 * standard_error).all()


@torch.no_grad()
def test_iwae_increases_with_samples_and_stays_below_log_likelihood():
    model, x, logits = tiny_problem()
    exact = exact_quantities(model, x, logits)
    repeats = 2_000
    tiled = x.repeat(repeats, 1)
    means, errors = [], []
    for seed, samples in enumerate((1, 5, 50)):
        per_draw = iwae_bound(model, tiled, torch.Generator().manual_seed(seed), samples=samples)
        per_draw = per_draw.reshape(repeats, -1)  # [repeats, B]
        means.append(per_draw.mean(0))
        errors.append(per_draw.std(0) / math.sqrt(repeats))
    for lower in range(2):
        # Independent draws: the difference's s.e. is the root sum of squares.
        gap = means[lower + 1] - means[lower]
        assert (gap >= -4 * (errors[lower] ** 2 + errors[lower + 1] ** 2).sqrt()).all()
    assert (means[-1] <= exact["log_px"] + 4 * errors[-1]).all()
    assert (means[-1] - means[0]).mean() > 0  # a real increase, not a tie within the noise


@torch.no_grad()
def test_iwae_chunking_does_not_change_the_bound():
    # On CPU the generator's stream is consumed in order, so chunks see the same draws.
    model, x, _ = tiny_problem()
    whole = iwae_bound(model, x, torch.Generator().manual_seed(2), samples=100, chunk=100)
    chunked = iwae_bound(model, x, torch.Generator().manual_seed(2), samples=100, chunk=7)
    torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=1e-12)
