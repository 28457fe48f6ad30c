"""Exact gradients on a VAE small enough to enumerate: VIMCO's K-sample bound and every unbiased
estimator's ELBO gradient.

The model has D = 3 latents (8 configurations) and 6 pixels, in float64, on 3 data rows. Every
expectation over ``q`` is then a finite sum, and its gradient with respect to the posterior logits
``η`` (or the decoder) follows by autograd through the sum — ``η`` enters through the probability
of each configuration and through ``log q`` inside the importance weights. For VIMCO the sum runs
over all ``8^K`` tuples ``(b_1..b_K)``.

Threshold (as in ``tests/estimators/test_unbiased.py``): under the null hypothesis each
coordinate's ``|mean − exact| / s.e.`` is approximately ``|N(0, 1)|`` (means of tens of thousands of
draws); Bonferroni over every coordinate tested in this file at a family-wise level of 1e-3. The
decoder check estimates its standard errors from group means, so it uses Student's t with the
groups' degrees of freedom at the same per-test level.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from scipy.stats import norm, t
from torch import Tensor

from dcvbench.estimators import (
    build_estimator,
    default_settings,
    estimator_info,
    estimator_names,
    get_estimator,
)
from dcvbench.measure.variance import resample_variance
from dcvbench.objectives import ProblemShape
from dcvbench.problems.vae import VAE, NegativeELBO

F64 = torch.float64
LATENT, PIXELS, ROWS = 3, 6, 3
DRAWS = 40_000
VIMCO_KS = (2, 3)
DECODER_GROUPS, GROUP_DRAWS = 100, 400
FAMILY_ALPHA = 1e-3


def tiny_vae() -> tuple[VAE, Tensor, Tensor]:
    """The model, its data ``x [ROWS, PIXELS]`` and posterior logits ``η [ROWS, LATENT]`` (detached)."""
    model = VAE(latent=LATENT, pixels=PIXELS, generator=torch.Generator().manual_seed(11), dtype=F64)
    with torch.no_grad():  # a decoder strong enough that the weights differ a lot between configurations
        model.decoder[0].weight.mul_(3.0)
    x = torch.tensor([[1, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1], [1, 1, 0, 1, 0, 1]], dtype=F64)
    return model, x, model.encode(x).detach()


def configurations() -> Tensor:
    """All ``2^D`` binary vectors, ``[2^D, 1, D]`` (broadcasts over rows)."""
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=LATENT)), dtype=F64).unsqueeze(1)


def log_weights(model: VAE, x: Tensor, logits: Tensor) -> tuple[Tensor, Tensor]:
    """``log q(b|x)`` and ``log w(b) = log p(x, b) − log q(b|x)`` for every configuration, ``[2^D, B]``
    each; ``logits`` is *not* detached, so both carry ``η``'s dependence."""
    b = configurations().expand(-1, x.shape[0], -1)  # [2^D, B, D]
    log_q = model.log_posterior(b, logits)
    return log_q, model.log_joint(x, b) - log_q


def exact_k_sample_bound(model: VAE, x: Tensor, logits: Tensor, k: int) -> Tensor:
    """``E_{b_1..b_K ~ q}[log (1/K) Σ_k w_k]`` per row, ``[B]``, by summing over all ``8^K`` tuples."""
    log_q, log_w = log_weights(model, x, logits)  # [2^D, B]
    tuples = torch.tensor(list(itertools.product(range(log_q.shape[0]), repeat=k)))  # [T, K]
    tuple_log_q = log_q[tuples].sum(1)  # log Π_k q(b_k): [T, B]
    bound = torch.logsumexp(log_w[tuples], dim=1) - math.log(k)  # [T, B]
    return (tuple_log_q.exp() * bound).sum(0)


def exact_elbo(model: VAE, x: Tensor, logits: Tensor) -> Tensor:
    """``E_q[log w]`` per row, ``[B]`` (= −E_q[f])."""
    log_q, log_w = log_weights(model, x, logits)
    return (log_q.exp() * log_w).sum(0)


def gradient_of(function, logits: Tensor) -> Tensor:
    """``∇_η Σ_rows function(η)``: per-row gradients ``[B, D]`` (rows do not interact)."""
    logits = logits.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(function(logits).sum(), logits)
    return grad


def estimators_checked_against_the_elbo() -> list[str]:
    """Every registered unbiased estimator that runs on the VAE (VIMCO targets another bound)."""
    return [
        name
        for name in estimator_names("binary")  # the tiny VAE's latents are bits
        if estimator_info(name).unbiased and "vae" in estimator_info(name).problems and name != "vimco"
    ]


def elbo_ks(name: str) -> list[int]:
    """K = 2 and the next K the estimator allows (4 for the pairwise ones)."""
    info = estimator_info(name)
    allowed = [k for k in range(max(2, info.min_k), 6) if not (info.even_k and k % 2)]
    return allowed[:2]


ELBO_CASES = [(name, k) for name in estimators_checked_against_the_elbo() for k in elbo_ks(name)]
DECODER_COORDS = sum(p.numel() for p in tiny_vae()[0].decoder_parameters())
N_TESTS = (len(ELBO_CASES) + len(VIMCO_KS)) * ROWS * LATENT + len(VIMCO_KS) * DECODER_COORDS
PER_TEST_ALPHA = FAMILY_ALPHA / N_TESTS
Z_CRITICAL = float(norm.isf(PER_TEST_ALPHA / 2))
T_CRITICAL = float(t.isf(PER_TEST_ALPHA / 2, df=DECODER_GROUPS - 1))


def max_bias_z(estimator, k: int, exact: Tensor, seed: int) -> float:
    model, x, logits = tiny_vae()
    f = NegativeELBO(model, x, logits, generative_grads=False)
    result = resample_variance(estimator, logits, f, k, DRAWS, torch.Generator().manual_seed(seed))
    return float(result.bias_z(exact).max())


# -- the enumeration itself ---------------------------------------------------------------------


def test_enumeration_agrees_with_known_bounds():
    model, x, logits = tiny_vae()
    log_q, log_w = log_weights(model, x, logits)
    log_px = torch.logsumexp(log_q + log_w, 0)  # [B]
    torch.testing.assert_close(log_q.exp().sum(0), torch.ones(ROWS, dtype=F64))
    # L_1 is the ELBO; L_K grows with K and stays below log p(x) (Burda et al. 2016, Theorem 1).
    bounds = [exact_k_sample_bound(model, x, logits, k) for k in (1, 2, 3)]
    torch.testing.assert_close(bounds[0], exact_elbo(model, x, logits), rtol=1e-12, atol=1e-12)
    assert (bounds[0] < bounds[1]).all() and (bounds[1] < bounds[2]).all() and (bounds[2] < log_px).all()
    # The K-sample bound's gradient is not the ELBO's: the VIMCO checks below can tell them apart.
    elbo_grad = gradient_of(lambda eta: exact_elbo(model, x, eta), logits)
    bound_grad = gradient_of(lambda eta: exact_k_sample_bound(model, x, eta, 2), logits)
    assert (elbo_grad - bound_grad).abs().max() > 0.05


def test_threshold_is_a_sensible_family_wise_bound():
    assert {"rloo", "rloo-dcv", "muprop", "nvil"} <= {name for name, _ in ELBO_CASES}
    assert 4.0 < Z_CRITICAL < 5.5 and Z_CRITICAL < T_CRITICAL < 6.5


# -- VIMCO ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", VIMCO_KS)
def test_vimco_is_unbiased_for_the_k_sample_bound(k: int):
    model, x, logits = tiny_vae()
    exact = gradient_of(lambda eta: -exact_k_sample_bound(model, x, eta, k), logits)
    z = max_bias_z(get_estimator("vimco"), k, exact, seed=100 + k)
    assert z < Z_CRITICAL, f"vimco K={k}: max |z| = {z:.2f} ≥ {Z_CRITICAL:.2f}"


@pytest.mark.parametrize("k", VIMCO_KS)
def test_vimco_is_not_an_estimate_of_the_elbo_gradient(k: int):
    # Power: the same check against the ELBO's gradient rejects, so the test above is not vacuous.
    model, x, logits = tiny_vae()
    elbo_grad = gradient_of(lambda eta: -exact_elbo(model, x, eta), logits)
    z = max_bias_z(get_estimator("vimco"), k, elbo_grad, seed=100 + k)
    assert z > Z_CRITICAL, f"vimco K={k} not told apart from the ELBO gradient: max |z| = {z:.2f}"


@pytest.mark.parametrize("k", VIMCO_KS)
def test_vimco_surrogate_trains_the_decoder_on_the_k_sample_bound(k: int):
    """The surrogate's decoder gradient, averaged over draws, is ``−∇_θ mean_rows E[L_K]``."""
    model, x, logits = tiny_vae()
    params = model.decoder_parameters()
    exact = torch.autograd.grad(-exact_k_sample_bound(model, x, logits, k).mean(), params)
    exact = torch.cat([g.flatten() for g in exact])  # [P]
    estimator = get_estimator("vimco")
    generator = torch.Generator().manual_seed(200 + k)
    f = NegativeELBO(model, x.repeat(GROUP_DRAWS, 1), logits.repeat(GROUP_DRAWS, 1))
    group_means = []
    for _ in range(DECODER_GROUPS):
        # The surrogate averages its rows, so one call on GROUP_DRAWS tiled copies is a group mean.
        estimate = estimator(logits.repeat(GROUP_DRAWS, 1), f, k, generator)
        grads = torch.autograd.grad(estimate.surrogate, params)
        group_means.append(torch.cat([g.flatten() for g in grads]))
    group_means = torch.stack(group_means)  # [G, P]
    standard_error = group_means.std(0) / math.sqrt(DECODER_GROUPS)
    z = ((group_means.mean(0) - exact).abs() / standard_error).max()
    assert z < T_CRITICAL, f"vimco K={k} decoder gradient: max |t| = {float(z):.2f} ≥ {T_CRITICAL:.2f}"


# -- every unbiased estimator against the exact ELBO gradient ------------------------------------


@pytest.mark.parametrize(("name", "k"), ELBO_CASES, ids=[f"{name}-K{k}" for name, k in ELBO_CASES])
def test_unbiased_estimators_match_the_exact_elbo_gradient(name: str, k: int):
    model, x, logits = tiny_vae()
    exact = gradient_of(lambda eta: -exact_elbo(model, x, eta), logits)  # ∇_η E_q[f]
    estimator = build_estimator(name, default_settings("vae"), ProblemShape(LATENT, context=PIXELS))
    z = max_bias_z(estimator, k, exact, seed=300 + k)
    assert z < Z_CRITICAL, f"{name} K={k}: max |z| = {z:.2f} ≥ {Z_CRITICAL:.2f}"
