"""The user's own problem: an objective ``f`` of discrete latents and the logits ``η`` to measure at.

What ``dcvbench.compare`` and ``dcvbench variance --objective FILE.py:NAME`` measure, in place of a
toy or a VAE checkpoint. ``make_problem()`` (or the caller of ``compare``) gives

- ``objective``: ``f`` mapping samples ``b`` ``[K, B, D]`` in {0, 1} (binary latents) or one-hot
  ``[K, B, N, C]`` (categorical) to values ``[K, B]``, differentiable in ``b`` for the estimators
  that use ``∇_b f``; it may also implement the optional protocols of :mod:`dcvbench.objectives`
  (``value_and_input_grad``, ``relaxed``, ``context``, ``expectation``, …), which estimators use as
  they use the built-in problems';
- ``logits``: ``η`` ``[B, D]`` (bits) or ``[B, N, C]`` (categorical: 3-d logits), the point;
- ``exact_gradient`` (optional): ``∇_η E_{q_η}[f]`` per row, shaped like ``logits``, the truth that
  bias, MSE and cosine are measured against.

as a :class:`UserProblem`, or a tuple ``(objective, logits[, exact_gradient])``, or a dict with those
keys. :func:`user_problem` checks it with one trial call of ``f`` at ``K = 2`` and refuses, in one
line (:class:`~dcvbench.runtime.ConfigError`), what the estimators could not use.

The variance measurement stacks many draws into one call by tiling the rows (c copies of the B
rows, :mod:`dcvbench.measure.variance`); ``f`` may depend on the row (a context, an image), so
:class:`RowFolded` hands it those copies folded into its sample dimension instead: ``f`` only ever
sees ``[K', B, *event]``, its own B rows. An objective with optional hooks is used as it is, as
the toys are, unless it tiles itself (``tile(times)``, :class:`~dcvbench.measure.variance.Tileable`):
a hook's arguments (a context, the logits of a relaxation) cannot be folded for it. Whether its
values then depend on the row is checked (:func:`row_tiled`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from dcvbench.failures import describe
from dcvbench.objectives import (
    HasBound,
    HasContext,
    HasExpectation,
    HasImportanceWeight,
    HasInputGrad,
    HasRelaxation,
    HasSmoothCompletion,
    ProblemShape,
)
from dcvbench.runtime import ConfigError, dtype_name

TRIAL_K = 2  # samples of the trial call that checks the objective's shapes
TRIAL_SEED = 0  # its draws: fixed, and apart from every measured stream
# The optional protocols of dcvbench.objectives: an objective with any of them tiles its rows itself.
HOOKS = {
    "value_and_input_grad": HasInputGrad,
    "relaxed": HasRelaxation,
    "context": HasContext,
    "expectation": HasExpectation,
    "bound": HasBound,
    "proposal_in_weight": HasImportanceWeight,
    "smooth": HasSmoothCompletion,
}


@dataclass(frozen=True)
class UserProblem:
    """An objective ``f`` ``[K, B, *event] → [K, B]``, the logits ``[B, *event]`` to measure at, and
    optionally the exact gradient ``∇_η E_q[f]`` ``[B, *event]``."""

    objective: Callable[[Tensor], Tensor]
    logits: Tensor
    exact_gradient: Tensor | None = None

    @property
    def shape(self) -> ProblemShape:
        """Bits ``[B, D]`` or ``N`` categorical variables of ``C`` classes ``[B, N, C]``; the width of
        the objective's per-row input when it has one (:class:`~dcvbench.objectives.HasContext`)."""
        context = self.objective.context.shape[-1] if isinstance(self.objective, HasContext) else 0
        classes = self.logits.shape[2] if self.logits.dim() == 3 else None
        return ProblemShape(latent=self.logits.shape[1], context=context, classes=classes)


class RowFolded:
    """``f`` over ``times`` stacked copies of its ``B`` rows: samples ``[*lead, times·B, *event]``
    (row ``r`` a copy of row ``r mod B``) are folded to ``[Π lead · times, B, *event]`` for ``f``, and
    its values ``[Π lead · times, B]`` unfolded to ``[*lead, times·B]``. Exact for any ``f`` that
    evaluates each sample on its own, as an objective does."""

    def __init__(self, objective: Callable[[Tensor], Tensor], event_dims: int, times: int = 1):
        self.objective = objective
        self.event_dims = event_dims  # 1 for bits [D], 2 for one-hot [N, C]
        self.times = times

    def tile(self, times: int) -> RowFolded:
        return RowFolded(self.objective, self.event_dims, self.times * times)

    def __call__(self, b: Tensor) -> Tensor:
        row_dim = b.dim() - 1 - self.event_dims
        lead, rows, event = b.shape[:row_dim], b.shape[row_dim], b.shape[row_dim + 1 :]
        folded = b.reshape(-1, rows // self.times, *event)  # [Π lead · times, B, *event]
        return self.objective(folded).reshape(*lead, rows)  # [*lead, times·B]


def row_tiled(problem: UserProblem) -> Callable[[Tensor], Tensor]:
    """The problem's objective as the variance measurement tiles it: its own ``tile`` if it has
    one; :class:`RowFolded` if it has no hooks; else as it is, once a trial on two stacked copies of
    the rows shows its values do not depend on the row (one line, exit 2, when they do)."""
    objective = problem.objective
    if callable(getattr(objective, "tile", None)):
        return objective
    hooks = [name for name, protocol in HOOKS.items() if isinstance(objective, protocol)]
    folded = RowFolded(objective, problem.shape.family.event_dims)
    if not hooks:
        return folded
    b = _trial_samples(problem).repeat(1, 2, *[1] * (problem.logits.dim() - 1))  # [2, 2B, *event]
    try:
        same = torch.allclose(objective(b), folded.tile(2)(b))
    except Exception:
        same = False
    if not same:
        raise ConfigError(
            f"the objective's values depend on the row and it has {', '.join(hooks)}: give it "
            "tile(times), itself over `times` stacked copies of its rows (docs/measurement.md)"
        )
    return objective


def user_problem(value: object, where: str = "the problem") -> UserProblem:
    """``value`` — a :class:`UserProblem`, ``(objective, logits[, exact_gradient])`` or a dict with
    those keys — as a checked :class:`UserProblem`, its tensors detached. ``where`` starts each error.

    Refused (one line): an objective that is not callable; logits that are not a floating tensor of
    2 or 3 dimensions with finite entries and at least 2 classes; an exact gradient not shaped, typed
    and placed like the logits, or not finite; an objective whose trial call at ``K = 2`` raises, or
    returns anything but finite values ``[2, B]`` of the logits' dtype on their device.
    """
    problem = _as_problem(value, where)
    if not callable(problem.objective):
        raise ConfigError(f"{where}: the objective is a {type(problem.objective).__name__}, not a function")
    logits = _checked_tensor(problem.logits, "logits", where).detach()
    if logits.dim() not in (2, 3) or logits.shape[0] == 0 or logits.shape[1] == 0:
        raise ConfigError(
            f"{where}: logits must be [B, D] (bits) or [B, N, C] (categorical), got {list(logits.shape)}"
        )
    if logits.dim() == 3 and logits.shape[2] < 2:
        raise ConfigError(f"{where}: categorical logits [B, N, C] need C ≥ 2 classes, got {logits.shape[2]}")
    exact = problem.exact_gradient
    if exact is not None:
        exact = _checked_tensor(exact, "exact gradient", where).detach()
        if exact.shape != logits.shape or exact.dtype != logits.dtype or exact.device != logits.device:
            raise ConfigError(
                f"{where}: the exact gradient must be shaped like the logits {_described(logits)}, "
                f"got {_described(exact)}"
            )
    checked = UserProblem(problem.objective, logits, exact)
    _trial_call(checked, where)
    return checked


def _as_problem(value: object, where: str) -> UserProblem:
    if isinstance(value, UserProblem):
        return value
    if isinstance(value, Mapping):
        unknown = set(value) - {"objective", "logits", "exact_gradient"}
        if unknown or not {"objective", "logits"} <= set(value):
            raise ConfigError(
                f"{where}: a dict needs the keys objective and logits (and optionally exact_gradient), "
                f"got {', '.join(sorted(map(str, value)))}"
            )
        return UserProblem(**value)
    if isinstance(value, tuple | list) and len(value) in (2, 3):
        return UserProblem(*value)
    raise ConfigError(
        f"{where}: expected (objective, logits[, exact_gradient]) or a UserProblem, "
        f"got {type(value).__name__}"
    )


def _checked_tensor(value: object, name: str, where: str) -> Tensor:
    if not isinstance(value, Tensor) or not value.is_floating_point():
        kind = f"a {value.dtype} tensor" if isinstance(value, Tensor) else f"a {type(value).__name__}"
        raise ConfigError(f"{where}: the {name} must be a floating-point torch tensor, got {kind}")
    if not bool(torch.isfinite(value).all()):
        raise ConfigError(f"{where}: the {name} have entries that are not finite (nan or inf)")
    return value


def _trial_call(problem: UserProblem, where: str) -> None:
    """Call ``f`` once on ``K = 2`` exact samples at the logits and check what it returns."""
    logits = problem.logits
    b = _trial_samples(problem)  # [2, B, *event]
    try:
        values = problem.objective(b)
    except Exception as error:
        raise ConfigError(
            f"{where}: the objective raised {describe(error)} on samples {_described(b)}"
        ) from None
    expected = [TRIAL_K, logits.shape[0]]
    if not isinstance(values, Tensor):
        raise ConfigError(
            f"{where}: the objective must return a tensor [K, B], got a {type(values).__name__}"
        )
    if list(values.shape) != expected or values.dtype != logits.dtype or values.device != logits.device:
        raise ConfigError(
            f"{where}: the objective must map samples {_described(b)} to values {expected} "
            f"{dtype_name(logits.dtype)} on {logits.device}, got {_described(values)}"
        )
    if not bool(torch.isfinite(values.detach()).all()):
        raise ConfigError(f"{where}: the objective returned values that are not finite (nan or inf)")


def _trial_samples(problem: UserProblem) -> Tensor:
    """``K = 2`` exact samples ``[2, B, *event]`` at the logits, from a fixed stream of their own."""
    logits = problem.logits
    generator = torch.Generator(device=logits.device).manual_seed(TRIAL_SEED)
    u = torch.rand(TRIAL_K, *logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
    return problem.shape.family.sample(logits, u)


def _described(tensor: Tensor) -> str:
    """``[2, 8, 4] float64 on cpu``."""
    return f"{list(tensor.shape)} {dtype_name(tensor.dtype)} on {tensor.device}"
