"""Latent families: what an estimator or a model needs to know about its discrete latents.

Two families, one interface (:class:`LatentFamily`):

- :data:`BINARY`: factorised Bernoulli, logits ``η [B, D]``, ``θ = σ(η)``, samples ``b ∈ {0,1}^D``
  (one logit per bit: bits are *not* a two-class categorical, which would double the work);
- :data:`CATEGORICAL`: N independent categoricals with C classes, logits ``η [B, N, C]``,
  ``π = softmax(η)`` over the classes, one-hot samples ``b [.., N, C]``, drawn by Gumbel-max.

"Event" means one row's latents, ``(D,)`` or ``(N, C)``; every method works over any leading
dimensions (samples K, rows B). In both families the score is ``∇_η log q(b) = b − p`` (``p`` the
probabilities) and its covariance acts on a vector ``v`` as ``θ(1−θ) ⊙ v`` or, per variable,
``π ⊙ v − π ⟨π, v⟩`` (:meth:`LatentFamily.covariance_product`, what the double control variate's
correction and every straight-through Jacobian needs).

Relaxations (Maddison, Mnih & Teh 2017) live in a base space where their densities are stable:
logit space for bits (``y = (η + L)/λ``, ``z = σ(y)``), the log-simplex for classes
(``y = log_softmax((η + G)/λ)``, ``z = exp(y)``).

What torch.distributions is used for, and what is written here instead:

- sampling is by hand, from uniforms the caller draws with its own generator: torch's
  ``sample``/``rsample`` draw from the global generator, which would break paired comparisons;
- the categorical relaxed density and KL are torch's (``ExpRelaxedCategorical``, ``kl_divergence``);
- the Binary Concrete density is written here as ``log λ − λy + a − 2·softplus(a − λy)``: torch's
  ``LogitRelaxedBernoulli.log_prob`` computes ``2·log1p(exp(a − λy))``, which overflows to ``−inf``
  in float32 once ``a − λy`` passes ~88 (measured: ``y = −200``, ``a = 0``, ``λ = 2/3`` gives
  ``−inf`` against the finite −133.74), a value a clamped logistic sample can reach;
- the Bernoulli KL is written here: torch's ``kl_divergence(Bernoulli, Bernoulli)`` refuses a prior
  ``[D]`` broadcast against posteriors ``[B, D]`` (its masked assignment needs equal shapes).
"""

from __future__ import annotations

import itertools
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Categorical, kl_divergence
from torch.distributions.relaxed_categorical import ExpRelaxedCategorical

from dcvbench.latent.noise import gumbel_from_uniform, logistic_from_uniform, one_hot_argmax


@dataclass(frozen=True)
class Neighbours:
    """Every sample one variable away from each of ``K`` samples ``b`` (the one-variable changes).

    ``M`` changes per sample: ``D`` bit flips, or ``N(C−1)`` class changes (each variable set to each
    of its other classes). They are what a Gibbs kernel that resamples one variable moves to (RODEO's
    Stein operator) and what a local expectation enumerates (IndeCateR).

    Attributes:
        points: ``[M, K, B, *event]`` the changed samples; change ``m`` of sample ``k`` is ``points[m, k]``.
        probs: ``[M, K, B]`` the probability ``q_n(c)`` of the new value ``c`` of the changed variable
            ``n`` (``θ_d`` or ``1 − θ_d`` for a flipped bit).
        changed: ``[M, *event]`` 1 on the entries of the variable that change ``m`` changes, 0 elsewhere.
    """

    points: Tensor
    probs: Tensor
    changed: Tensor


class LatentFamily(ABC):
    """The operations every estimator and model needs on one kind of discrete latent.

    Shapes: ``logits``/``probs`` ``[B, *event]``; samples and relaxed samples ``[..., B, *event]``;
    reductions over the event give ``[..., B]``.
    """

    name: str  # "binary" or "categorical": the CLI's --latent
    event_dims: int  # trailing dimensions of one row's latents: 1 for (D,), 2 for (N, C)

    def event_shape(self, latent: int, classes: int | None) -> tuple[int, ...]:
        """One row's latents: ``(D,)`` for bits, ``(N, C)`` for categorical variables."""
        return (latent,) if classes is None else (latent, classes)

    def reduce(self, x: Tensor) -> Tensor:
        """Sum over the event dimensions: ``[..., *event]`` → ``[...]``."""
        return x.sum(-1) if self.event_dims == 1 else x.sum((-2, -1))

    @abstractmethod
    def probs(self, logits: Tensor) -> Tensor:
        """``θ = σ(η)`` or ``π = softmax(η)``: ``[B, *event]``."""

    @abstractmethod
    def sample(self, logits: Tensor, u: Tensor) -> Tensor:
        """Exact samples of ``q_η`` from uniforms ``u [K, B, *event]``, in ``u``'s dtype."""

    def score(self, b: Tensor, probs: Tensor) -> Tensor:
        """``∇_η log q(b) = b − p``: ``b [K, B, *event]``, ``probs [B, *event]``."""
        return b - probs

    @abstractmethod
    def covariance_product(self, probs: Tensor, v: Tensor) -> Tensor:
        """``Cov(score) · v`` = ``∂p/∂η`` applied to ``v`` (the Jacobian is symmetric):
        ``θ(1−θ) ⊙ v`` or ``π ⊙ v − π⟨π, v⟩``; ``probs`` broadcasts against ``v``."""

    @abstractmethod
    def neighbours(self, b: Tensor, probs: Tensor) -> Neighbours:
        """The one-variable changes of samples ``b [K, B, *event]``, with ``probs [B, *event]``."""

    @abstractmethod
    def neighbour_count(self, event: tuple[int, ...]) -> int:
        """``M``, the one-variable changes of one sample: ``D`` or ``N(C−1)``."""

    def variable_count(self, event: tuple[int, ...]) -> int:
        """The independent variables of one row: ``D`` bits or ``N`` categorical variables."""
        return event[0]

    @abstractmethod
    def log_prob(self, b: Tensor, logits: Tensor) -> Tensor:
        """``log q(b)`` summed over the event, ``[..., B]``; linear in ``b``, so defined for real ``b``."""

    @abstractmethod
    def natural(self, logits: Tensor) -> Tensor:
        """The natural parameters ``n(η)`` of ``log q(b) = ⟨b, n(η)⟩ − A(η)``: ``η`` itself for bits,
        ``log softmax(η)`` for classes (normalised, so that ``A = 0``). ``[..., *event]``."""

    @abstractmethod
    def normaliser(self, logits: Tensor) -> Tensor:
        """The log-normaliser ``A(η)`` of :meth:`natural`, summed over the event: ``Σ_d softplus(η_d)``
        for bits, 0 for classes. ``[..., *event]`` → ``[...]``."""

    @abstractmethod
    def kl(self, logits: Tensor, prior_logits: Tensor) -> Tensor:
        """``KL(q_η ‖ p_a)`` summed over the event: ``[..., *event]`` → ``[...]``."""

    # -- relaxations ----------------------------------------------------------------------------

    @abstractmethod
    def relax(self, logits: Tensor, u: Tensor, temperature: float | Tensor) -> Tensor:
        """Relaxed samples ``y`` in the base space from uniforms ``u [K, B, *event]``."""

    @abstractmethod
    def relaxed_point(self, y: Tensor) -> Tensor:
        """The relaxed sample itself, ``z = σ(y)`` in ``[0, 1]^D`` or ``exp(y)`` on the simplex."""

    @abstractmethod
    def harden(self, y: Tensor) -> Tensor:
        """The discrete sample a relaxed one rounds to: ``1[y > 0]`` or ``one_hot(argmax y)``.

        For ``y = relax(η, u, λ)`` this is an exact sample of ``q_η`` at any temperature.
        """

    @abstractmethod
    def relaxed_log_prob(self, y: Tensor, logits: Tensor, temperature: float) -> Tensor:
        """Log-density of the relaxed variable in its base space, summed over the event: ``[..., B]``."""

    # -- exact tests ----------------------------------------------------------------------------

    @abstractmethod
    def enumerate(self, event: tuple[int, ...], dtype: torch.dtype, device=None) -> Tensor:
        """Every value of one row's latents, ``[M, *event]`` (``2^D`` or ``C^N`` of them)."""

    def __repr__(self) -> str:
        return f"<latent family {self.name}>"


class BinaryFamily(LatentFamily):
    """Factorised Bernoulli latents with one logit per bit."""

    name = "binary"
    event_dims = 1

    def probs(self, logits: Tensor) -> Tensor:
        return torch.sigmoid(logits)

    def sample(self, logits: Tensor, u: Tensor) -> Tensor:
        """``b = 1[u < θ]``."""
        return (u < torch.sigmoid(logits)).to(u.dtype)

    def covariance_product(self, probs: Tensor, v: Tensor) -> Tensor:
        return v * probs * (1.0 - probs)

    def neighbours(self, b: Tensor, probs: Tensor) -> Neighbours:
        """Bit ``d`` of every sample flipped, ``M = D``; its new value has probability
        ``θ_d`` where ``b_d = 0`` and ``1 − θ_d`` where ``b_d = 1``."""
        bits = b.shape[-1]
        eye = torch.eye(bits, dtype=b.dtype, device=b.device)  # [D, D]
        flips = 1.0 - 2.0 * b  # [K, B, D]: +1 turns a 0 on, −1 turns a 1 off
        points = b.unsqueeze(0) + eye[:, None, None, :] * flips.unsqueeze(0)  # [D, K, B, D]
        new_probs = probs + b * (1.0 - 2.0 * probs)  # [K, B, D]: q_d(1 − b_d)
        return Neighbours(points=points, probs=new_probs.movedim(-1, 0), changed=eye)

    def neighbour_count(self, event: tuple[int, ...]) -> int:
        return self.variable_count(event)

    def log_prob(self, b: Tensor, logits: Tensor) -> Tensor:
        """``Σ_d b_d a_d − softplus(a_d)``."""
        return (b * logits).sum(-1) - F.softplus(logits).sum(-1)

    def natural(self, logits: Tensor) -> Tensor:
        return logits

    def normaliser(self, logits: Tensor) -> Tensor:
        return F.softplus(logits).sum(-1)

    def kl(self, logits: Tensor, prior_logits: Tensor) -> Tensor:
        """Both log-probabilities are linear in ``b``, so the KL is theirs at ``b = θ``:
        ``Σ_d θ_d (η_d − a_d) − softplus(η_d) + softplus(a_d)``."""
        probs = torch.sigmoid(logits)  # θ: [..., D]
        return (probs * (logits - prior_logits) - F.softplus(logits) + F.softplus(prior_logits)).sum(-1)

    def relax(self, logits: Tensor, u: Tensor, temperature: float | Tensor) -> Tensor:
        """``y = (η + L)/λ``, ``L`` standard logistic."""
        return (logits + logistic_from_uniform(u)) / temperature

    def relaxed_point(self, y: Tensor) -> Tensor:
        return torch.sigmoid(y)

    def harden(self, y: Tensor) -> Tensor:
        return (y > 0).to(y.dtype)

    def relaxed_log_prob(self, y: Tensor, logits: Tensor, temperature: float) -> Tensor:
        """Binary Concrete in logit space: ``log λ − λy + a − 2·softplus(a − λy)`` summed over bits.

        ``σ(Y)`` is Maddison et al.'s ``BinConcrete(e^a, λ)``; its density in probability space
        carries ``x^{−λ−1}`` and ``(1−x)^{−λ−1}``, which overflow near 0 and 1 where this stays finite.
        """
        scaled = temperature * y  # λy = a + L at a sample of this distribution
        return (math.log(temperature) - scaled + logits - 2.0 * F.softplus(logits - scaled)).sum(-1)

    def enumerate(self, event: tuple[int, ...], dtype: torch.dtype, device=None) -> Tensor:
        (bits,) = event
        return torch.tensor(list(itertools.product((0.0, 1.0), repeat=bits)), dtype=dtype, device=device)


class CategoricalFamily(LatentFamily):
    """N independent categorical latents of C classes, one-hot."""

    name = "categorical"
    event_dims = 2

    def probs(self, logits: Tensor) -> Tensor:
        return torch.softmax(logits, -1)

    def sample(self, logits: Tensor, u: Tensor) -> Tensor:
        """Gumbel-max: ``one_hot(argmax(η + G))``."""
        return one_hot_argmax(logits + gumbel_from_uniform(u))

    def covariance_product(self, probs: Tensor, v: Tensor) -> Tensor:
        # (diag(π) − ππᵀ) v per variable, without forming the C × C matrix.
        return probs * (v - (probs * v).sum(-1, keepdim=True))

    def neighbours(self, b: Tensor, probs: Tensor) -> Neighbours:
        """Variable ``n`` of every sample set to each of its other classes, ``M = N(C−1)``, in the
        order ``(n, r)``: class ``(c_n + r) mod C`` for ``r = 1 … C−1``, ``c_n`` the sampled class."""
        variables, classes = b.shape[-2:]
        shifts = torch.arange(1, classes, device=b.device).view(-1, 1, 1, 1)  # [C−1, 1, 1, 1]
        new_class = (b.argmax(-1).unsqueeze(0) + shifts) % classes  # [C−1, K, B, N]
        new_one_hot = F.one_hot(new_class, classes).to(b.dtype)  # [C−1, K, B, N, C]
        eye = torch.eye(variables, dtype=torch.bool, device=b.device)  # [N, N]
        # Change (n, r) takes variable n from the r-th new class, every other variable from b.
        points = torch.where(eye[:, None, None, None, :, None], new_one_hot, b)  # [N, C−1, K, B, N, C]
        new_probs = probs.expand(*new_one_hot.shape[:-1], classes).gather(-1, new_class.unsqueeze(-1))
        new_probs = new_probs.squeeze(-1).movedim(-1, 0)  # [N, C−1, K, B]
        changed = eye.to(b.dtype)[:, None, :, None].expand(variables, classes - 1, variables, classes)
        changes = variables * (classes - 1)
        return Neighbours(
            points=points.reshape(changes, *b.shape),
            probs=new_probs.reshape(changes, *b.shape[:-2]),
            changed=changed.reshape(changes, variables, classes),
        )

    def neighbour_count(self, event: tuple[int, ...]) -> int:
        variables, classes = event
        return variables * (classes - 1)

    def log_prob(self, b: Tensor, logits: Tensor) -> Tensor:
        """``Σ_n ⟨b_n, log softmax(a_n)⟩``."""
        return (b * torch.log_softmax(logits, -1)).sum((-2, -1))

    def natural(self, logits: Tensor) -> Tensor:
        return torch.log_softmax(logits, -1)

    def normaliser(self, logits: Tensor) -> Tensor:
        return logits.new_zeros(logits.shape[:-2])

    def kl(self, logits: Tensor, prior_logits: Tensor) -> Tensor:
        shape = torch.broadcast_shapes(logits.shape, prior_logits.shape)
        posterior = Categorical(logits=logits.expand(shape), validate_args=False)
        prior = Categorical(logits=prior_logits.expand(shape), validate_args=False)
        return kl_divergence(posterior, prior).sum(-1)

    def relax(self, logits: Tensor, u: Tensor, temperature: float | Tensor) -> Tensor:
        """``y = log_softmax((η + G)/λ)`` on the log-simplex."""
        return torch.log_softmax((logits + gumbel_from_uniform(u)) / temperature, -1)

    def relaxed_point(self, y: Tensor) -> Tensor:
        return torch.exp(y)

    def harden(self, y: Tensor) -> Tensor:
        return one_hot_argmax(y)

    def relaxed_log_prob(self, y: Tensor, logits: Tensor, temperature: float) -> Tensor:
        """ExpConcrete log-density (Maddison et al. 2017, appendix C), summed over the variables.

        Base measure: the Lebesgue measure of the log-ratios ``(y_1 − y_C, …, y_{C−1} − y_C)``; it
        depends on no parameter, so it cancels from every ratio of two such densities.
        """
        shape = torch.broadcast_shapes(y.shape, logits.shape)
        lam = torch.tensor(temperature, dtype=y.dtype, device=y.device)
        relaxed = ExpRelaxedCategorical(lam, logits=logits.expand(shape), validate_args=False)
        return relaxed.log_prob(y).sum(-1)

    def enumerate(self, event: tuple[int, ...], dtype: torch.dtype, device=None) -> Tensor:
        variables, classes = event
        eye = torch.eye(classes, dtype=dtype, device=device)
        codes = list(itertools.product(range(classes), repeat=variables))
        return eye[torch.tensor(codes, device=device)].reshape(len(codes), variables, classes)


BINARY = BinaryFamily()
CATEGORICAL = CategoricalFamily()
FAMILIES = {family.name: family for family in (BINARY, CATEGORICAL)}
LATENT_TYPES = tuple(FAMILIES)


def family_named(name: str) -> LatentFamily:
    """The family called ``name`` (``binary`` or ``categorical``), or a ValueError listing them."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown latent type {name!r}; choose from: {', '.join(LATENT_TYPES)}") from None
