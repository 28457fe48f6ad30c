"""``dcvbench variance``: all chosen estimators at one fixed point, side by side.

For each K and each estimator, ``--samples`` independent estimates are drawn at the same ``θ``
(vectorised, see :mod:`dcvbench.measure.variance`) and summarised in one row of
``variance.parquet``. Estimators at the same K draw from generators in the same state, so those
whose noise has the same shape see the same random numbers (paired comparisons).

``rloo-dcv`` without a fixed ``--alpha`` is evaluated at the variance-optimal ``α*`` of that point,
estimated from a separate set of draws (``alpha_source = "optimal"`` in the table).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch

from dcvbench.config import VarianceConfig, theta_probability
from dcvbench.estimators import ControlVariateEstimator, build_estimator, estimator_info
from dcvbench.jobs import NoProgress, Progress
from dcvbench.measure.variance import optimal_alpha, resample_variance
from dcvbench.problems.toy import exact_gradient, make_objective
from dcvbench.results import Run, prepare_output_root, table_from_records
from dcvbench.runtime import make_generator, provenance, resolve_device, resolve_dtype

REFERENCE = "rloo"  # variance ratios are relative to REINFORCE leave-one-out at the same K
WARMUP_DRAWS = 16  # one small call first, so one-off start-up costs stay out of the timings


@dataclass(frozen=True)
class VarianceStudy:
    run_id: str
    path: Path
    table: pd.DataFrame


def study_logits(config: VarianceConfig, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The fixed point: ``η = logit(θ)`` ``[1, D]``, ``θ`` constant or seeded-random in (0.05, 0.95)."""
    dim = config.problem.dim
    theta = theta_probability(config.theta)
    if theta is None:
        generator = make_generator(torch.device("cpu"), config.seed, "variance", "theta")
        probs = 0.05 + 0.9 * torch.rand(1, dim, generator=generator, dtype=torch.float64)
    else:
        probs = torch.full((1, dim), theta, dtype=torch.float64)
    return torch.logit(probs).to(device=device, dtype=dtype)


def run_variance(config: VarianceConfig, progress: Progress | None = None) -> VarianceStudy:
    """Measure every (K, estimator) of ``config``; write and return the table."""
    progress = progress or NoProgress()
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype)
    root = prepare_output_root(config.out)
    problem = config.problem
    objective = make_objective(
        problem.objective, problem.dim, problem.target, problem.w_scale, problem.w_seed, device, dtype
    )
    logits = study_logits(config, device, dtype)
    exact = exact_gradient(objective, logits)
    manifest = {
        "job": "variance",
        "config": asdict(config),
        "device": str(device),
        "versions": provenance(device),
    }
    identity = {"problem": "toy", "seed": config.seed}
    with Run.create(root, f"variance-toy-seed{config.seed}", identity, (), manifest) as run:
        records = []
        for k in config.ks:
            progress.start(f"variance K={k}", len(config.estimators))
            rows = {}
            for name in _with_reference(config.estimators, k):
                rows[name] = _measure(config, name, k, objective, logits, exact, device)
                progress.advance(int(name in config.estimators))
            reference = rows.get(REFERENCE)
            for name in config.estimators:
                row = rows[name]
                row["variance_ratio"] = row["variance"] / reference["variance"] if reference else None
                records.append({"run_id": run.run_id, **row})
        table = table_from_records(records)
        run.write_table("variance.parquet", table)
    return VarianceStudy(run.run_id, run.path, table.to_pandas())


def _with_reference(names: tuple[str, ...], k: int) -> list[str]:
    """The estimators to measure: the chosen ones, plus ``rloo`` as reference where K allows."""
    if REFERENCE in names or k < estimator_info(REFERENCE).min_k:
        return list(names)
    return [*names, REFERENCE]


def _measure(config, name, k, objective, logits, exact, device) -> dict:
    info = estimator_info(name)
    estimator = build_estimator(name, config.estimator_settings).to(device)
    alpha_source = None
    if isinstance(estimator, ControlVariateEstimator):
        alpha_source = "fixed"
        if config.estimator_settings.alpha is None:
            tune_generator = make_generator(device, config.seed, "variance", "tune", k)
            best = optimal_alpha(estimator, logits, objective, k, config.samples, tune_generator)
            estimator.set_alpha(best)
            alpha_source = "optimal"
    warmup_generator = make_generator(device, config.seed, "variance", "warmup", k)
    resample_variance(estimator, logits, objective, k, WARMUP_DRAWS, warmup_generator)
    generator = make_generator(device, config.seed, "variance", k)
    result = resample_variance(estimator, logits, objective, k, config.samples, generator)
    z = result.bias_z(exact)
    evals = info.evals(k)
    problem = config.problem
    return {
        "problem": "toy",
        "objective": problem.objective,
        "dim": problem.dim,
        "target": problem.target,
        "theta": config.theta,
        "estimator": name,
        "k": k,
        "evals": evals,
        "unbiased": info.unbiased,
        "variance": result.variance,
        "cost_variance": result.variance * evals,
        "bias_max_z": float(z.max()),
        "bias_mean_z": float(z.mean()),
        "seconds_per_estimate": result.seconds_per_estimate,
        "alpha": float(estimator.alpha.detach()) if alpha_source else None,
        "alpha_source": alpha_source,
        "samples": config.samples,
        "seed": config.seed,
    }
