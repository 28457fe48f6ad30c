"""The exact encoder-logit gradient of an enumerable VAE: against an independent reference, against
unbiased estimators' means, against the Concrete relaxation's (which it must tell apart), and its
refusals.

Models: 8 bits (256 codes) and 3 variables × 4 classes (64 codes), a nonlinear encoder and decoder of
16 hidden units over 64 pixels, on 3 random binary images.

Threshold (as in ``tests/problems/test_enumerable.py``): under the null hypothesis each coordinate's
``|mean − exact| / s.e.`` over ``DRAWS`` estimates is approximately ``|N(0, 1)|``; Bonferroni over
every coordinate of every case tested against it in this file, at a family-wise level of 1e-3.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import norm
from torch import Tensor

from dcvbench.estimators import get_estimator
from dcvbench.measure.exact import (
    MAX_CODES,
    check_enumerable,
    code_count,
    enumerate_codes,
    exact_logit_gradient,
)
from dcvbench.measure.variance import resample_variance
from dcvbench.problems.vae import VAE
from dcvbench.runtime import ConfigError

F64 = torch.float64
ROWS, PIXELS, HIDDEN = 3, 64, 16
BITS = 8
VARIABLES, CLASSES = 3, 4
# The training defaults: the relaxed prior's temperature and KL change only what `concrete` trains.
SETTINGS = {"prior_temperature": 0.5, "kl": "relaxed", "bound": "elbo"}
DRAWS, K = 20_000, 2
FAMILY_ALPHA = 1e-3
# (estimator, latent classes, model dtype, options): float32 is what a checkpoint holds; rloo-dcv at
# α = 0 would be rloo itself.
UNBIASED_CASES = [
    ("rloo", None, torch.float32, {}),
    ("rloo", CLASSES, F64, {}),
    ("reinforce", CLASSES, F64, {}),
    ("rloo-dcv", None, F64, {"alpha": -0.5}),
    ("rloo-dcv", CLASSES, F64, {"alpha": -0.5}),
]
N_TESTS = sum(ROWS * (BITS if case[1] is None else VARIABLES * CLASSES) for case in UNBIASED_CASES)
Z_CRITICAL = float(norm.isf(FAMILY_ALPHA / N_TESTS / 2))


def make_model(classes: int | None, dtype: torch.dtype = F64) -> VAE:
    latent = BITS if classes is None else VARIABLES
    return VAE(
        latent,
        classes,
        arch="nonlinear",
        pixels=PIXELS,
        hidden=HIDDEN,
        dtype=dtype,
        generator=torch.Generator().manual_seed(3),
    )


def images(dtype: torch.dtype = F64) -> Tensor:
    generator = torch.Generator().manual_seed(5)
    return (torch.rand(ROWS, PIXELS, generator=generator) < 0.3).to(dtype)  # [B, P]


def reference_gradient(model: VAE, x: Tensor) -> Tensor:
    """``∇_η`` of the negative ELBO ``Σ_b q_η(b) (log q_η(b) − log p(x, b))``, every code of
    ``LatentFamily.enumerate`` at once and ``η`` inside ``log q`` too, by ``torch.func.grad``."""
    with torch.no_grad():
        logits = model.encode(x)  # [B, *latent]
    event = logits.shape[1:]
    codes = model.family.enumerate(tuple(event), F64).unsqueeze(1).expand(-1, ROWS, *event)  # [M, B, *latent]
    log_joint = model.log_joint(x, codes).detach()  # [M, B]

    def negative_elbo(eta: Tensor) -> Tensor:
        log_q = model.log_posterior(codes, eta)  # [M, B]
        return (log_q.exp() * (log_q - log_joint)).sum()  # rows are independent: Σ over rows

    return torch.func.grad(negative_elbo)(logits)


def max_bias_z(name: str, classes: int | None, dtype: torch.dtype, seed: int, **options) -> float:
    model, x = make_model(classes, dtype), images(dtype)
    exact = exact_logit_gradient(model, x, **SETTINGS)
    with torch.no_grad():
        logits = model.encode(x)
    generator = torch.Generator().manual_seed(seed)
    f = model.objective(x, logits, generative_grads=False, generator=generator, **SETTINGS)
    latent = "binary" if classes is None else "categorical"
    estimator = get_estimator(name, latent, **options)
    result = resample_variance(estimator, logits, f, K, DRAWS, generator)
    return float(result.bias_z(exact).max())


# -- the enumeration ----------------------------------------------------------------------------


@pytest.mark.parametrize("classes", [None, CLASSES], ids=["binary", "categorical"])
def test_codes_are_the_family_enumeration_in_any_range(classes: int | None):
    model = make_model(classes)
    event = tuple(model.prior_logits.shape)
    everything = model.family.enumerate(event, F64)
    like = torch.zeros((), dtype=F64)
    assert code_count(model) == everything.shape[0]
    assert torch.equal(enumerate_codes(model.family, event, 0, code_count(model), like), everything)
    assert torch.equal(enumerate_codes(model.family, event, 5, 12, like), everything[5:12])


# -- the exact gradient -------------------------------------------------------------------------


@pytest.mark.parametrize("classes", [None, CLASSES], ids=["binary", "categorical"])
def test_exact_gradient_is_the_negative_elbo_gradient(classes: int | None):
    model, x = make_model(classes), images()
    exact = exact_logit_gradient(model, x, **SETTINGS)
    reference = reference_gradient(model, x)
    assert exact.dtype == F64 and exact.shape == reference.shape
    assert reference.abs().max() > 1e-2  # a gradient worth comparing
    torch.testing.assert_close(exact, reference, rtol=1e-10, atol=1e-10)


def test_exact_gradient_does_not_depend_on_chunks_or_relaxation_settings():
    model, x = make_model(CLASSES), images()
    exact = exact_logit_gradient(model, x, **SETTINGS)
    chunked = exact_logit_gradient(model, x, **SETTINGS, chunk=7)  # 64 codes: 9 uneven chunks
    analytic = exact_logit_gradient(model, x, prior_temperature=1.0, kl="analytic", bound="elbo")
    torch.testing.assert_close(chunked, exact, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(analytic, exact, rtol=0, atol=0)


def test_exact_gradient_of_a_float32_model_agrees_with_its_float64_copy():
    model32, x = make_model(None, torch.float32), images()
    exact32 = exact_logit_gradient(model32, x.float(), **SETTINGS)
    exact64 = exact_logit_gradient(model32.to(F64), x, **SETTINGS)
    # The sums are float64, so only f's own float32 rounding remains: |f| < 50 nats here, rounded to
    # < 3e-6, and |Σ_b q(b) ε(b) (b − p)| ≤ max |ε| per coordinate.
    torch.testing.assert_close(exact32, exact64, rtol=0, atol=1e-5)


# -- unbiased estimators agree, the relaxation does not -----------------------------------------


def test_threshold_is_a_sensible_family_wise_bound():
    assert 4.0 < Z_CRITICAL < 5.5


@pytest.mark.parametrize(
    ("name", "classes", "dtype", "options"),
    UNBIASED_CASES,
    ids=[f"{case[0]}-{'binary' if case[1] is None else 'categorical'}" for case in UNBIASED_CASES],
)
def test_unbiased_estimators_mean_is_the_exact_gradient(
    name: str, classes: int | None, dtype: torch.dtype, options: dict
):
    z = max_bias_z(name, classes, dtype, seed=11, **options)
    assert z < Z_CRITICAL, f"{name}: max |z| = {z:.2f} ≥ {Z_CRITICAL:.2f}"


@pytest.mark.parametrize("classes", [None, CLASSES], ids=["binary", "categorical"])
def test_concrete_mean_is_told_apart_from_the_exact_gradient(classes: int | None):
    # Power: the relaxation's bias at λ = 2/3 is resolved by the same number of draws.
    z = max_bias_z("concrete", classes, F64, seed=13, temperature=2 / 3)
    assert z > Z_CRITICAL, f"concrete not told apart from the exact gradient: max |z| = {z:.2f}"


# -- refusals -----------------------------------------------------------------------------------


def refusal(model: VAE) -> str:
    with pytest.raises(ConfigError) as error:
        check_enumerable(model)
    message = str(error.value)
    assert "\n" not in message
    return message


def test_check_enumerable_refuses_too_many_codes():
    check_enumerable(VAE(16, pixels=4))  # exactly MAX_CODES
    assert code_count(VAE(16, pixels=4)) == MAX_CODES
    assert refusal(VAE(17, pixels=4)) == (
        "--exact enumerates every code: 17 bits is 131,072 codes, more than 65,536; "
        "use a model with fewer latents (e.g. --latent-vars 12)"
    )
    assert refusal(VAE(10, 8, pixels=4)) == (
        "--exact enumerates every code: 10 variables × 8 classes is 1,073,741,824 codes, more than "
        "65,536; use a model with fewer latents (e.g. --latent-vars 4 --classes 8)"
    )
    assert "200 bits is 2^200 codes" in refusal(VAE(200, pixels=4))
    assert math.log10(code_count(VAE(200, pixels=4))) > 60  # not spelt out


def test_check_enumerable_refuses_several_stochastic_layers():
    assert "one stochastic layer" in refusal(VAE(3, arch="4H-3H-20V", pixels=20))


def test_exact_gradient_refuses_the_k_sample_bound():
    model, x = make_model(None), images()
    with pytest.raises(ConfigError, match="ELBO's gradient"):
        exact_logit_gradient(model, x, prior_temperature=0.5, kl="relaxed", bound="iwae")
