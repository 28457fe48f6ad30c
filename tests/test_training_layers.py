"""Training a VAE with two stochastic layers: every estimator's step is unbiased for its bound.

The acceptance test of the multi-layer treatment (DESIGN §4.4). A VAE ``2H-3H-4V`` in float64 —
``q(b_1|x) q(b_2|b_1)``, ``p(b_2) p(b_1|b_2) p(x|b_1)`` with 3 bits ``b_1``, 2 bits ``b_2``, 4 pixels,
a learned prior and every parameter random (N(0, 1)), so that no gradient vanishes — has 32 chains
``(b_1, b_2)``. Enumerating them gives the exact mean negative ELBO of a fixed batch of 3 images,
``−(1/B) Σ_x Σ q(b_1|x) q(b_2|b_1) [log p(x, b_1, b_2) − log q(b_1, b_2|x)]``, as a function of every
parameter; autograd then gives its exact gradient, through ``q``'s probabilities of both layers.

One test case is (estimator, K). ``train_step`` runs ``STEPS`` times with SGD at learning rate 0 (the
parameters stay where the exact gradient was taken; an estimator's own state — rloo-dcv's α, NVIL's
baselines, RELAX's control — keeps learning, which keeps it unbiased) and a fresh generator; each
step's batch is the 3 images repeated ``REPLICAS`` times, so one step's ``.grad`` is the mean of
``REPLICAS`` independent estimates of the batch's gradient, and the steps are independent draws of
it. Every parameter's ``z = |mean − exact| / s.e.`` over the steps, s.e. from their spread.

Threshold (family-wise). Under the null hypothesis (the step is unbiased) each ``z`` is ``|t|`` with
``STEPS − 1`` degrees of freedom: a mean over ``STEPS`` draws that are themselves means of 3 × 300
independent estimates (close to normal), divided by its estimated standard error. Bonferroni over
``N_TESTS = (cases) × (parameters)`` two-sided tests at family-wise level ``FAMILY_ALPHA`` gives
``z* = t⁻¹(1 − FAMILY_ALPHA / (2·N_TESTS))``: the normal quantile's small-sample form, about 5.1
here (the normal's is 4.95). A correct library fails this file with probability at most 0.1 % over
seeds, and the seeds are fixed.

Cases: every estimator the registry marks unbiased that runs on the VAE with binary latents, at its
smallest K and one larger, trained layer by layer (``upper_estimators``), and rloo-dcv at a fixed
``α`` too; VIMCO against the exact
K-sample bound ``L_K`` of whole chains (enumerated over all 32^K K-tuples of chains), trained
through its ``chain_surrogate``. Power: the same machinery rejects two wrong treatments of the
layers (an objective whose ``b_2`` ignores ``b_1``; a second layer trained on an upstream sample that
is not the one its logits came from). ``concrete``, which trains the whole chain from one relaxed
estimate, is checked exactly at fixed noise.

Found here, and fixed: ``rebar`` and ``relax`` were biased for the first layer of this model while
their control completed the chain below with hard samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import t as student
from torch import Tensor

from dcvbench.estimators import (
    Estimate,
    Estimator,
    build_estimator,
    default_settings,
    estimator_info,
    estimator_names,
)
from dcvbench.latent import BINARY
from dcvbench.latent.noise import logistic_from_uniform, uniform_noise
from dcvbench.problems.vae import PRIOR_TEMPERATURE, VAE, NegativeELBO
from dcvbench.training import StepOutput, train_step

F64 = torch.float64
PIXELS, BITS_1, BITS_2 = 4, 3, 2
ARCH = f"{BITS_2}H-{BITS_1}H-{PIXELS}V"  # top layer first: b_2 (2 bits) → b_1 (3 bits) → x (4 pixels)
ROWS = 3  # distinct images of the batch
REPLICAS = 300  # copies of the batch in one step: one step's gradient averages 300 draws per image
STEPS = 200
FAMILY_ALPHA = 1e-3


def make_model(cls: type[VAE] = VAE) -> VAE:
    """The test's model: every weight, bias and prior logit N(0, 1) from a fixed seed."""
    model = cls(
        latent=BITS_1, arch=ARCH, pixels=PIXELS, learn_prior=True, dtype=F64,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(generator=generator)
    return model


def images() -> Tensor:
    """The fixed batch ``[ROWS, PIXELS]``: three distinct binary images."""
    return torch.tensor([[0, 1, 0, 0], [1, 0, 1, 1], [1, 1, 1, 1]], dtype=F64)


def bernoulli_log_prob(b: Tensor, logits: Tensor) -> Tensor:
    """``Σ_d b_d log σ(l_d) + (1 − b_d) log σ(−l_d)``, over the last dimension."""
    return (b * F.logsigmoid(logits) + (1.0 - b) * F.logsigmoid(-logits)).sum(-1)


def chain_table(model: VAE, x: Tensor) -> tuple[Tensor, Tensor]:
    """``log q(b_1, b_2 | x)`` and ``log w(b_1, b_2)`` of all 32 chains, ``[32, B]`` each.

    ``log w = log p(x|b_1) + log p(b_1|b_2) + log p(b_2) − log q(b_1|x) − log q(b_2|b_1)``, written out
    from the model's maps (not its objective), differentiable in every parameter.
    """
    first = BINARY.enumerate((BITS_1,), F64).repeat_interleave(2**BITS_2, 0)  # b_1 of each chain: [32, D1]
    second = BINARY.enumerate((BITS_2,), F64).repeat(2**BITS_1, 1)  # b_2: [32, D2]
    log_q_1 = bernoulli_log_prob(first.unsqueeze(1), model.encode(x))  # q(b_1|x): [32, B]
    log_q_2 = bernoulli_log_prob(second, model.upper_encoders[0](first))  # q(b_2|b_1): [32]
    log_prior = bernoulli_log_prob(second, model.prior_logits)  # p(b_2): [32]
    log_conditional = bernoulli_log_prob(first, model.upper_decoders[0](second))  # p(b_1|b_2): [32]
    log_likelihood = bernoulli_log_prob(x, model.decoder(first).unsqueeze(1))  # p(x|b_1): [32, B]
    log_q = log_q_1 + log_q_2.unsqueeze(1)
    log_p = log_likelihood + (log_conditional + log_prior).unsqueeze(1)
    return log_q, log_p - log_q  # [32, B] each


def exact_negative_elbo(model: VAE, x: Tensor) -> Tensor:
    """``−(1/B) Σ_x E_q[log w]``, 0-d, by enumeration."""
    log_q, log_w = chain_table(model, x)
    return -(log_q.exp() * log_w).sum(0).mean()


def exact_negative_bound(model: VAE, x: Tensor, k: int) -> Tensor:
    """``−(1/B) Σ_x L_K``, ``L_K = E log (1/K) Σ_k w_k`` over K independent chains, 0-d: every K-tuple
    of chains enumerated (32^K of them)."""
    log_q, log_w = chain_table(model, x)
    tuples = torch.cartesian_prod(*[torch.arange(log_q.shape[0])] * k).reshape(-1, k)  # [32^K, K]
    probability = log_q[tuples].sum(1).exp()  # [32^K, B]
    bound = torch.logsumexp(log_w[tuples], 1) - math.log(k)  # [32^K, B]
    return -(probability * bound).sum(0).mean()


def exact_gradient(model: VAE, loss: Tensor) -> Tensor:
    """``∇ loss`` for every parameter, in ``model.parameters()`` order, flattened: ``[P]``."""
    return torch.cat([grad.flatten() for grad in torch.autograd.grad(loss, list(model.parameters()))])


def parameter_groups(model: VAE) -> dict[str, slice]:
    """Where each module's parameters lie in the flattened gradient (``encoder``, ``upper_encoders``,
    ``decoder``, ``upper_decoders``, ``prior_logits``)."""
    groups: dict[str, list[int]] = {}
    start = 0
    for name, param in model.named_parameters():
        group = groups.setdefault(name.split(".")[0], [start, start])
        start += param.numel()
        group[1] = start
    return {name: slice(*bounds) for name, bounds in groups.items()}


def encoder_scale(estimate: Estimate) -> float:
    """The factor an estimate's logit gradient was divided by: NVIL's ``max(1, σ̂)``, fixed before its
    samples were drawn (:mod:`dcvbench.estimators.nvil`); 1 for every other estimator."""
    return float(estimate.stats.get("signal_scale", 1.0))


def frozen_optimizers(model: VAE) -> list[torch.optim.Optimizer]:
    """SGD at learning rate 0 for the encoder, decoder and prior: steps that leave ``.grad`` and
    the parameters where the exact gradient was taken."""
    groups = (model.encoder_parameters(), model.decoder_parameters(), model.prior_parameters())
    return [torch.optim.SGD(params, lr=0.0) for params in groups]


@dataclass(frozen=True)
class MeanGradient:
    """The mean over steps of every parameter's ``.grad`` (flattened, ``[P]``) and its standard error."""

    mean: Tensor
    standard_error: Tensor

    def z(self, exact: Tensor) -> Tensor:
        assert (self.standard_error > 0).all(), "a gradient that never varies: the check would be void"
        return (self.mean - exact).abs() / self.standard_error


def mean_step_gradient(
    model: VAE, name: str, k: int, seed: int, bound: str = "elbo", settings: dict | None = None
) -> MeanGradient:
    """``STEPS`` training steps of estimator ``name`` at learning rate 0 on the tiled batch."""
    settings = {**default_settings("vae"), **(settings or {})}
    chain = estimator_info(name, "binary").trains_chain
    estimator = build_estimator(name, settings, model.layer_shape(1)).to(F64)
    upper: list[Estimator] = (
        [] if chain else [build_estimator(name, settings, model.layer_shape(2)).to(F64)]
    )  # one per layer above the first, as the VAE job builds them
    optimizers = frozen_optimizers(model)
    x, groups = images().repeat(REPLICAS, 1), parameter_groups(model)
    generator = torch.Generator().manual_seed(seed)
    draws = []
    for _ in range(STEPS):
        out: StepOutput = train_step(
            model, estimator, x, k, generator, *optimizers, bound=bound, upper_estimators=upper
        )
        grad = torch.cat([param.grad.flatten() for param in model.parameters()])  # [P]
        grad[groups["encoder"]] *= encoder_scale(out.estimate)
        if not chain:
            grad[groups["upper_encoders"]] *= encoder_scale(out.upper_estimates[0])
        draws.append(grad)
    stacked = torch.stack(draws)  # [STEPS, P]
    return MeanGradient(stacked.mean(0), stacked.std(0) / math.sqrt(STEPS))


def _ks(name: str) -> tuple[int, int]:
    """The smallest K the estimator allows and the next one it allows above it."""
    info = estimator_info(name, "binary")
    larger = info.min_k + 1
    return info.min_k, larger + (larger % 2 if info.even_k else 0)


UNBIASED = [
    name
    for name in estimator_names("binary")
    if estimator_info(name, "binary").unbiased and "vae" in estimator_info(name, "binary").problems
]
# REBAR's and RELAX's control c(z) = s·f(σ(z/λ)) must be continuous in z: with a hard b_2 below it
# jumped where b_2 flipped, and this file measured their first layer's z at 40 to 70. The objective now
# completes the chain with relaxed samples for the control (HasSmoothCompletion); they are tested
# here like every other unbiased estimator.
CASES = [pytest.param(name, k, {}, id=f"{name}-K{k}") for name in UNBIASED for k in _ks(name)]
# rloo-dcv learns α from 0 and stays near it over these steps: its double control variate (whose
# Taylor terms use ∇_b f at the other samples, random here) is also tested at a fixed α.
CASES.append(pytest.param("rloo-dcv", 2, {"alpha": -0.5}, id="rloo-dcv-alpha-0.5-K2"))
VIMCO_KS = (2, 3)
PARAMETERS = sum(param.numel() for param in make_model().parameters())
N_TESTS = (len(CASES) + len(VIMCO_KS)) * PARAMETERS
Z_CRITICAL = float(student.isf(FAMILY_ALPHA / (2 * N_TESTS), STEPS - 1))


def _worst(z: Tensor, model: VAE) -> str:
    """The largest ``z`` of each parameter group, for failure messages."""
    return ", ".join(
        f"{group} {float(z[where].max()):.2f}" for group, where in parameter_groups(model).items()
    )


def test_the_model_is_a_fair_test():
    """Two stochastic layers, every parameter with a gradient, probabilities away from 0 and 1,
    and a threshold near five standard errors."""
    model, x = make_model(), images()
    assert model.depth == 2 and model.learn_prior
    groups = {"encoder", "upper_encoders", "decoder", "upper_decoders", "prior_logits"}
    assert set(parameter_groups(model)) == groups
    log_q, _ = chain_table(model, x)
    torch.testing.assert_close(log_q.exp().sum(0), torch.ones(ROWS, dtype=F64))  # q sums to 1 per image
    first = BINARY.enumerate((BITS_1,), F64)
    for logits in (model.encode(x), model.upper_encoders[0](first)):
        probs = torch.sigmoid(logits.detach())
        assert float(probs.min()) > 0.03 and float(probs.max()) < 0.97
    assert (exact_gradient(model, exact_negative_elbo(model, x)).abs() > 1e-3).all()
    assert {"rloo", "rloo-dcv", "arm", "disarm", "relax", "nvil"} <= set(UNBIASED)
    assert 5.0 < Z_CRITICAL < 5.7


@pytest.mark.parametrize(("name", "k", "settings"), CASES)
def test_layer_by_layer_steps_are_unbiased_for_every_parameter(name: str, k: int, settings: dict):
    model = make_model()
    exact = exact_gradient(model, exact_negative_elbo(model, images()))
    seed = 1000 + 10 * UNBIASED.index(name) + k + 5 * bool(settings)
    z = mean_step_gradient(model, name, k, seed, settings=settings).z(exact)
    message = f"{name} {settings} K={k}: max |z| by group: {_worst(z, model)}; z* = {Z_CRITICAL:.2f}"
    assert float(z.max()) < Z_CRITICAL, message


@pytest.mark.parametrize("k", VIMCO_KS)
def test_vimco_steps_are_unbiased_for_the_k_sample_bound_of_whole_chains(k: int):
    model = make_model()
    exact = exact_gradient(model, exact_negative_bound(model, images(), k))
    z = mean_step_gradient(model, "vimco", k, seed=2000 + k, bound="iwae").z(exact)
    message = f"vimco K={k}: max |z| by group: {_worst(z, model)}; z* = {Z_CRITICAL:.2f}"
    assert float(z.max()) < Z_CRITICAL, message


# -- power: two wrong treatments of the layers, rejected by the same check ------------------------


class DownstreamIgnoringB1(NegativeELBO):
    """Layer 1's objective with ``b_2`` drawn from ``q(b_2 | b_1')`` at an independent
    ``b_1' ~ q(b_1|x)``, not given ``b_1``: ``E[f | b_1]`` is then not ``E[−log w | b_1]``."""

    def __call__(self, b: Tensor) -> Tensor:
        family, model = self.family, self.model
        decoy = family.sample(self.logits, uniform_noise(b.shape, b, self.generator))  # b_1': [..., B, D1]
        eta = model.layer_logits(2, decoy)  # [..., B, D2]
        below = family.sample(eta, uniform_noise(eta.shape, eta, self.generator))  # b_2 ~ q(·|b_1')
        log_q = bernoulli_log_prob(b, self.logits) + bernoulli_log_prob(below, model.layer_logits(2, b))
        log_p = (
            model.log_likelihood(self.x, b)
            + bernoulli_log_prob(b, model.upper_decoders[0](below))
            + bernoulli_log_prob(below, model.prior_logits)
        )
        return log_q - log_p  # [..., B]


class MiswiredDownstream(VAE):
    """Its first layer's objective is :class:`DownstreamIgnoringB1`."""

    def objective(self, x, logits, *args, upstream=(), **options):
        if upstream:
            return super().objective(x, logits, *args, upstream=upstream, **options)
        return DownstreamIgnoringB1(self, x, logits, *args, upstream=upstream, **options)


class MiswiredUpstream(VAE):
    """Its second layer's objective sees an upstream ``b_1'`` drawn afresh from ``q(b_1|x)``, not the
    ``b_1`` that its logits ``η_2(b_1)`` were computed from."""

    def objective(self, x, logits, *args, generator=None, upstream=(), **options):
        if upstream:
            eta = self.encode(x).detach()
            upstream = (self.family.sample(eta, uniform_noise(eta.shape, eta, generator)),)
        return super().objective(x, logits, *args, generator=generator, upstream=upstream, **options)


@pytest.mark.parametrize(
    ("cls", "group"), [(MiswiredDownstream, "encoder"), (MiswiredUpstream, "upper_encoders")]
)
def test_check_rejects_a_wrong_treatment_of_the_layers(cls: type[VAE], group: str):
    model = make_model(cls)
    assert torch.equal(model.prior_logits, make_model().prior_logits)  # the same weights
    exact = exact_gradient(model, exact_negative_elbo(model, images()))
    z = mean_step_gradient(model, "rloo", 2, seed=3000).z(exact)[parameter_groups(model)[group]]
    message = f"{cls.__name__} not rejected: max |z| of {group} = {float(z.max()):.2f}"
    assert float(z.max()) > Z_CRITICAL, message


# -- concrete: one relaxed estimate trains the whole chain ---------------------------------------


def relaxed_chain_loss(
    model: VAE, x: Tensor, u1: Tensor, u2: Tensor, temperature: float, bound: str
) -> Tensor:
    """The Concrete paper's relaxed objective of both layers at fixed uniforms, mean over rows, 0-d.

    ``y_1 = (η_1(x) + L_1)/λ``, ``y_2 = (η_2(σ(y_1)) + L_2)/λ``; the relaxed ``log w̃ = log p(x|σ(y_1))
    + log p_λp(y_1; a_1(σ(y_2))) + log p_λp(y_2; a) − log q_λ(y_1; η_1) − log q_λ(y_2; η_2)``, at the
    prior's default temperature ``λp``; per row the mean of ``−log w̃`` over the K
    samples (``"elbo"``) or ``−log (1/K) Σ_k w̃_k`` (``"iwae"``).
    """
    density, logistic = BINARY.relaxed_log_prob, logistic_from_uniform
    eta_1 = model.encode(x)  # [B, D1]
    y_1 = (eta_1 + logistic(u1)) / temperature  # [K, B, D1]
    eta_2 = model.upper_encoders[0](torch.sigmoid(y_1))  # [K, B, D2]
    y_2 = (eta_2 + logistic(u2)) / temperature
    log_w = (
        model.log_likelihood(x, torch.sigmoid(y_1))
        + density(y_1, model.upper_decoders[0](torch.sigmoid(y_2)), PRIOR_TEMPERATURE)
        + density(y_2, model.prior_logits, PRIOR_TEMPERATURE)
        - density(y_1, eta_1, temperature)
        - density(y_2, eta_2, temperature)
    )  # [K, B]
    k = log_w.shape[0]
    per_row = -log_w.mean(0) if bound == "elbo" else -(torch.logsumexp(log_w, 0) - math.log(k))
    return per_row.mean()


@pytest.mark.parametrize("bound", ["elbo", "iwae"])
def test_concrete_trains_the_whole_chain_with_one_relaxed_estimate(bound: str):
    k, temperature, seed = 3, 0.7, 5
    model, x = make_model(), images()
    # The estimator draws the first layer's uniforms, then the objective the second's.
    generator = torch.Generator().manual_seed(seed)
    u1 = uniform_noise((k, ROWS, BITS_1), x, generator)
    u2 = uniform_noise((k, ROWS, BITS_2), x, generator)
    expected = exact_gradient(model, relaxed_chain_loss(model, x, u1, u2, temperature, bound))

    settings = {**default_settings("vae"), "temperature": temperature}
    estimator = build_estimator("concrete", settings, model.layer_shape(1))
    optimizers = frozen_optimizers(model)
    generator = torch.Generator().manual_seed(seed)
    out = train_step(model, estimator, x, k, generator, *optimizers, bound=bound)
    assert out.upper_estimates == ()
    got = torch.cat([param.grad.flatten() for param in model.parameters()])
    assert got[parameter_groups(model)["upper_encoders"]].abs().min() > 0  # the lower layer trains
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
