"""The exact encoder-logit gradient of a small VAE, by enumerating every code of its latent space.

What every unbiased estimator estimates at a VAE snapshot (DESIGN §3.9), computed without noise so
that an estimator's bias, mean squared error and cosine can be measured against it. With
``η = encode(x)`` the posterior logits of one row and ``f`` the objective the estimators see
(:class:`~dcvbench.problems.vae.NegativeELBO`, whose ``log q`` is taken at the *detached* logits
``η̄``), the target is, per row::

    ∇ = ∇_η Σ_b q_η(b) f_η̄(b) |_{η̄ = η}  =  Σ_b q_η(b) f(b) (b − p),      p = σ(η) or softmax(η)

the sum running over every code ``b`` (``2^D`` bit vectors, or ``C^N`` one-hot tuples). It is also
the gradient of the negative ELBO itself, ``∇_η E_q[−log p(x, b) + log q_η(b)]``: ``log q``'s
direct dependence on ``η`` adds ``E_q[∇_η log q] = 0``. The score ``b − p`` is
:meth:`~dcvbench.latent.LatentFamily.score` in both families, so no autograd is needed.

``f`` is the estimators' own objective, evaluated in the model's dtype exactly as they evaluate it;
``q``, the score and the sums are float64. The objective's relaxation settings (``prior_temperature``,
``kl``) change only the relaxed model the ``concrete`` estimator trains, never ``f``: the exact
gradient is the same for all of them, and ``concrete``'s expected estimate differs from it by the
relaxation's bias. The K-sample bound (``bound="iwae"``) has another gradient, one that would need
every K-tuple of codes, and is refused.

The sum itself, :func:`enumerated_gradient`, takes any objective of discrete latents: the user's
own (:mod:`dcvbench.problems.user`), when its latent space has at most :data:`USER_MAX_CODES` codes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dcvbench.latent import LatentFamily
from dcvbench.measure.variance import CHUNK_ELEMENTS
from dcvbench.objectives import Objective
from dcvbench.problems.vae import VAE
from dcvbench.runtime import ConfigError

# The most codes --exact enumerates: 4 variables × 8 classes (4,096 codes, the ReinMax paper's
# diagnostic VAE) and 12 to 16 bits fit; each code costs one decoder pass per row of the minibatch.
MAX_CODES = 2**16
# The most codes a user's problem is enumerated over without being asked (for its exact gradient, when
# none is given): 12 bits, or 6 variables × 4 classes; a few thousand evaluations of f per row.
USER_MAX_CODES = 2**12


def code_count(model: VAE) -> int:
    """The number of codes of the model's first stochastic layer: ``2^D`` or ``C^N``."""
    return (model.classes or 2) ** model.latent


def check_enumerable(model: VAE) -> None:
    """Refuse, with one line, a model whose exact gradient this module cannot compute: more than
    :data:`MAX_CODES` codes, or several stochastic layers."""
    if model.depth > 1:
        raise ConfigError(
            f"--exact enumerates one stochastic layer; architecture {model.arch} has {model.depth}"
        )
    count = code_count(model)
    if count <= MAX_CODES:
        return
    if model.classes is None:
        latents, example = f"{model.latent} bits", "--latent-vars 12"
    else:
        latents, example = (
            f"{model.latent} variables × {model.classes} classes",
            "--latent-vars 4 --classes 8",
        )
    # 2^200 written out is 61 digits: the power says as much.
    size = f"{count:,}" if count < 10**15 else f"{model.classes or 2}^{model.latent}"
    raise ConfigError(
        f"--exact enumerates every code: {latents} is {size} codes, more than {MAX_CODES:,}; "
        f"use a model with fewer latents (e.g. {example})"
    )


def exact_logit_gradient(
    model: VAE,
    x: Tensor,
    *,
    prior_temperature: float,
    kl: str,
    bound: str,
    chunk: int | None = None,
) -> Tensor:
    """The exact ``∇_η E_{b~q(·|x)}[f(b)]`` per row of ``x [B, P]``, ``[B, *latent]`` in float64.

    ``η = model.encode(x)``; ``f = model.objective(x, η, …)`` with these settings, the objective
    whose gradient the estimators' ``grad`` estimates (module docstring for the target and why the
    settings do not change it). Codes are enumerated ``chunk`` at a time (default: about
    :data:`~dcvbench.measure.variance.CHUNK_ELEMENTS` pixel logits or code entries per chunk), so
    memory does not grow with the number of codes. Refuses (:class:`~dcvbench.runtime.ConfigError`) what
    :func:`check_enumerable` refuses, and the K-sample bound.
    """
    check_enumerable(model)
    with torch.no_grad():
        logits = model.encode(x)  # [B, *latent]
    f = model.objective(
        x, logits, generative_grads=False, prior_temperature=prior_temperature, kl=kl, bound=bound
    )
    if bound != "elbo":
        raise ConfigError(
            f"--exact computes the ELBO's gradient; the {bound} bound's needs every K-tuple of codes, "
            "which is not enumerated"
        )
    family, event = model.family, tuple(logits.shape[1:])
    # The decoder's output [c, B, P] is the largest tensor of a chunk, unless the codes are wider.
    chunk = chunk or max(1, CHUNK_ELEMENTS // (x.shape[0] * max(model.pixels, math.prod(event))))
    return enumerated_gradient(f, logits, family, chunk)


def enumerated_gradient(
    f: Objective, logits: Tensor, family: LatentFamily, chunk: int | None = None
) -> Tensor:
    """``∇_η E_{q_η}[f] = Σ_b q_η(b) f(b) (b − p)`` per row of ``logits [B, *event]``, in float64, by
    evaluating ``f`` ``[c, B, *event] → [c, B]`` at every code (module docstring), ``chunk`` codes
    per call (default: about :data:`~dcvbench.measure.variance.CHUNK_ELEMENTS` code entries)."""
    rows, event = logits.shape[0], tuple(logits.shape[1:])
    chunk = chunk or max(1, CHUNK_ELEMENTS // (rows * math.prod(event)))
    logits64 = logits.detach().to(torch.float64)
    probs = family.probs(logits64)  # [B, *event]
    weighted_codes = torch.zeros_like(logits64)  # Σ_b q(b) f(b) b: [B, *event]
    weighted_values = logits64.new_zeros(rows)  # Σ_b q(b) f(b): [B]
    total = family_code_count(family, event)
    for start in range(0, total, chunk):
        codes = enumerate_codes(family, event, start, min(start + chunk, total), logits)  # [c, *event]
        b = codes.unsqueeze(1).expand(-1, rows, *event)  # [c, B, *event]
        with torch.no_grad():
            values = f(b).to(torch.float64)  # [c, B]
        codes64 = codes.to(torch.float64)
        weights = family.log_prob(codes64.unsqueeze(1), logits64).exp() * values  # q f: [c, B]
        weighted_codes += torch.einsum("cb,c...->b...", weights, codes64)
        weighted_values += weights.sum(0)
    # Σ_b q f (b − p), with p outside the sum: one product per code instead of one per code and row.
    return weighted_codes - weighted_values.reshape(rows, *[1] * len(event)) * probs


def family_code_count(family: LatentFamily, event: tuple[int, ...]) -> int:
    """The number of codes of one row's latents ``event``: ``2^D`` bits, or ``C^N`` one-hot tuples."""
    if family.event_dims == 1:
        return 2 ** event[0]
    variables, classes = event
    return classes**variables


def enumerate_codes(
    family: LatentFamily, event: tuple[int, ...], start: int, stop: int, like: Tensor
) -> Tensor:
    """Codes ``start … stop − 1`` of one row's latents, ``[stop − start, *event]`` in ``like``'s dtype
    and device, in the order of :meth:`~dcvbench.latent.LatentFamily.enumerate` (the first latent
    most significant), without building the others."""
    index = torch.arange(start, stop, device=like.device)  # [c]
    if family.event_dims == 1:
        (bits,) = event
        shifts = torch.arange(bits - 1, -1, -1, device=like.device)  # [D]
        return ((index.unsqueeze(1) >> shifts) & 1).to(like.dtype)  # [c, D]
    variables, classes = event
    places = classes ** torch.arange(variables - 1, -1, -1, device=like.device)  # [N]
    digits = index.unsqueeze(1) // places % classes  # [c, N]
    return torch.nn.functional.one_hot(digits, classes).to(like.dtype)  # [c, N, C]
