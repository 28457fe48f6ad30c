"""The best achievable ``E_q[f]`` of a toy run: the level its objective figure shows as the optimum.

``E_q[f]`` is multilinear in the latents' probabilities (linear in each variable's), so over the
product of simplices its maximum and minimum lie at a vertex: a deterministic ``b``. Where the
objective's structure makes the best vertex evident, that is a closed form:

- binary ``separable`` ``(1/D) Σ_d (b_d − t)²``: every bit alike, so the larger (smaller) of ``t²``
  and ``(1 − t)²``;
- ``sum-square`` ``(mean_d b_d − t)²``: at ``k`` ones ``(k/D − t)²``, convex in ``k``, so the maximum is at
  ``k = 0`` or ``D`` and the minimum at the ``k`` nearest ``tD``;
- categorical ``separable`` ``(1/N) Σ_n ‖b_n − t_n‖²``: each variable's best class on its own, of
  value ``‖e_c − t_n‖² = 1 − 2 t_nc + ‖t_n‖²``.

``quadratic-form`` has none: the best ``b`` of ``bᵀWb`` is a binary quadratic programme (NP-hard in
general), so its figure shows no optimum.
"""

from __future__ import annotations

import contextlib
from typing import Any

from dcvbench.config import ToyConfig, ToyProblem
from dcvbench.problems.categorical_toy import CategoricalSeparable, make_categorical_objective
from dcvbench.problems.toy import Separable, SumSquare, make_objective
from dcvbench.runtime import ConfigError


def toy_optimum(config: dict[str, Any]) -> float | None:
    """The best ``E_q[f]`` (the largest when the run maximises, else the smallest) of the toy in a run
    manifest's ``config``; ``None`` where no closed form is known or the problem cannot be read."""
    with contextlib.suppress(ConfigError, TypeError, ValueError):
        problem = ToyProblem(**config["problem"])
        best = max if config.get("maximize", ToyConfig.maximize) else min
        return _best_vertex(problem, best)
    return None


def _best_vertex(problem: ToyProblem, best) -> float | None:
    if problem.latent == "binary":
        objective = make_objective(problem.objective, problem.dim, problem.target, problem.w_scale)
        t = objective.target if isinstance(objective, (Separable, SumSquare)) else None
        if isinstance(objective, Separable):
            return best(t**2, (1.0 - t) ** 2)
        if isinstance(objective, SumSquare):
            return best((k / problem.dim - t) ** 2 for k in range(problem.dim + 1))
        return None
    objective = make_categorical_objective(
        problem.objective, problem.dim, problem.classes, problem.w_scale, problem.w_seed
    )
    if isinstance(objective, CategoricalSeparable):
        t = objective.targets  # [N, C]
        per_class = 1.0 - 2.0 * t + t.pow(2).sum(-1, keepdim=True)  # [N, C]: ‖e_c − t_n‖²
        extreme = per_class.max(-1).values if best is max else per_class.min(-1).values  # [N]
        return float(extreme.mean())
    return None
