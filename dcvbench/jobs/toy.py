"""``dcvbench toy``: optimise the toy logits with each estimator, measuring variance and bias.

DESIGN §4.1. One run per (estimator, seed). Every ``--log-every`` steps a row records the exact
objective ``E_q[f]`` at the current ``θ``; every ``--var-every`` steps it also records the variance of
the estimator at that ``θ`` from ``--var-samples`` independent estimates, and the bias of their mean
against the exact gradient. Runs with the same seed see the same training noise stream, so
estimators are compared on common random numbers where their noise has the same shape.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import torch

from dcvbench.config import ToyConfig
from dcvbench.estimators import Estimator, build_estimator
from dcvbench.jobs import NoProgress, Progress, RunSummary, last_values, non_finite
from dcvbench.measure.variance import resample_variance
from dcvbench.problems.toy import exact_gradient, make_objective
from dcvbench.results import Run, prepare_output_root, read_trace
from dcvbench.runtime import make_generator, provenance, resolve_device, resolve_dtype

TOY_METRICS = ("objective", "grad_var", "bias_max_z", "bias_mean_z", "alpha", "sec_per_step")


def run_toy(config: ToyConfig, progress: Progress | None = None) -> list[RunSummary]:
    """Run every (seed, estimator) of ``config``; return one summary per run, in that order."""
    progress = progress or NoProgress()
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype)
    root = prepare_output_root(config.out)
    problem = config.problem
    objective = make_objective(
        problem.objective, problem.dim, problem.target, problem.w_scale, problem.w_seed, device, dtype
    )
    summaries = []
    for seed in config.seeds:
        for name in config.estimators:
            progress.start(f"toy {name} K={config.k} seed={seed}", config.steps)
            estimator = build_estimator(name, config.estimator_settings).to(device)
            summaries.append(_train(config, name, estimator, seed, objective, device, dtype, root, progress))
    return summaries


def _train(
    config: ToyConfig,
    name: str,
    estimator: Estimator,
    seed: int,
    objective,
    device: torch.device,
    dtype: torch.dtype,
    root: Path,
    progress: Progress,
) -> RunSummary:
    k = config.k
    logits = torch.zeros(1, config.problem.dim, device=device, dtype=dtype, requires_grad=True)  # η: [1, D]
    # The published toy's RMSprop: decay 0.9 and ε = 1e-7 outside the square root (DESIGN §4.1).
    optimizer = torch.optim.RMSprop([logits], lr=config.lr, alpha=0.9, eps=1e-7)
    train_generator = make_generator(device, seed, "toy", "train")
    measure_generator = make_generator(device, seed, "toy", "measure")
    direction = -1.0 if config.maximize else 1.0  # optimisers minimise

    identity = {"problem": "toy", "estimator": name, "k": k, "seed": seed, "grad_var_method": "resample"}
    manifest = {
        "job": "toy",
        "objective_direction": "maximize" if config.maximize else "minimize",
        "config": asdict(config),
        "device": str(device),
        "versions": provenance(device),
    }

    def record(step: int, alpha: float | None, step_seconds: float | None) -> None:
        eta = logits.detach()
        metrics: dict[str, float | None] = {
            "objective": float(objective.expectation(torch.sigmoid(eta))[0]),
            "alpha": alpha,
            "sec_per_step": step_seconds,
        }
        if step % config.var_every == 0 or step == config.steps:
            result = resample_variance(estimator, eta, objective, k, config.var_samples, measure_generator)
            z = result.bias_z(exact_gradient(objective, eta))
            metrics.update(grad_var=result.variance, bias_max_z=float(z.max()), bias_mean_z=float(z.mean()))
        run.log(step, **metrics)

    with Run.create(root, f"toy-{name}-k{k}-seed{seed}", identity, TOY_METRICS, manifest) as run:
        record(0, _alpha_of(estimator), None)
        busy, busy_steps = 0.0, 0
        for step in range(1, config.steps + 1):
            start = time.perf_counter()
            estimate = estimator(logits, objective, k, train_generator)
            logits.grad = direction * estimate.grad
            optimizer.step()
            estimator.update(estimate)
            busy += time.perf_counter() - start
            busy_steps += 1
            progress.advance()
            if step % config.log_every and step % config.var_every and step != config.steps:
                continue
            alpha = estimate.stats.get("alpha")
            bad = non_finite(logits=logits.detach(), gradient=estimate.grad, alpha=alpha)
            if bad:
                run.finish("diverged", diverged_at=step, non_finite=bad)
                break
            record(step, None if alpha is None else float(alpha), busy / busy_steps)
            busy, busy_steps = 0.0, 0
    last = last_values(read_trace(run.path), TOY_METRICS)
    return RunSummary(run.run_id, run.path, name, k, seed, run.manifest["status"], run.last_step, last)


def _alpha_of(estimator: Estimator) -> float | None:
    alpha = getattr(estimator, "alpha", None)
    return None if alpha is None else float(alpha.detach())
