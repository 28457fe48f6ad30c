"""``dcvbench toy``: optimise the toy logits with each estimator, measuring variance and bias.

DESIGN §4.1, and §3.6 for categorical latents (``η [1, N, C]``, class probabilities ``softmax(η)``;
:class:`Toy` holds what differs between the latent types). One run per (estimator, seed). Every
``--log-every`` steps a row records the exact objective ``E_q[f]`` at the current ``θ``; every
``--var-every`` steps it also records the variance of the estimator at that ``θ`` from
``--var-samples`` independent estimates, and the bias of their mean against the exact gradient. Runs
with the same seed see the same training noise stream, so estimators are compared on common random
numbers where their noise has the same shape.

Every ``--checkpoint-every`` steps (always a row step) the trace is flushed and ``checkpoint.pt``
saved; :func:`resume_toy` continues an interrupted run from it, writing the rows an uninterrupted
run would have written.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from dcvbench.checkpoints import (
    CHECKPOINT,
    GENERATOR,
    STATE,
    STEP,
    TENSOR,
    check_entries,
    check_step,
    load_checkpoint,
    load_into,
    write_checkpoint,
)
from dcvbench.config import ToyConfig, ToyProblem, run_config
from dcvbench.estimators import Estimator, build_estimator
from dcvbench.jobs import (
    NoProgress,
    Progress,
    RunSummary,
    StatTrace,
    as_floats,
    non_finite,
    resumed_columns,
    run_summary,
    run_to_resume,
    stat_columns,
)
from dcvbench.measure.variance import resample_variance
from dcvbench.problems.categorical_toy import make_categorical_objective
from dcvbench.problems.toy import ToyObjective, exact_gradient, make_objective
from dcvbench.results import MANIFEST, Run, prepare_output_root, read_manifest
from dcvbench.runtime import make_generator, provenance, resolve_device, resolve_dtype, torch_threads

# The toy's own trace columns; a run adds its estimator's stats (rloo-dcv's α, …: stat_columns).
TOY_METRICS = ("objective", "grad_var", "bias_max_z", "bias_mean_z", "sec_per_step")
# What a toy run's checkpoint holds (ToyTraining.state_dict): checked before any of it is loaded.
TOY_CHECKPOINT_ENTRIES = {
    "step": STEP,
    "logits": TENSOR,
    "optimizer": STATE,
    "estimator": STATE,
    "train_generator": GENERATOR,
    "measure_generator": GENERATOR,
}


@dataclass(frozen=True)
class Toy:
    """The toy objective of a problem and what the jobs compute from logits for its latent type.

    Binary latents: logits ``η [B, D]``, probabilities ``θ = σ(η)``. Categorical latents: logits
    ``η [B, N, C]``, class probabilities ``π = softmax(η)`` per variable.
    """

    problem: ToyProblem
    objective: ToyObjective  # f: samples [K, B, *latent] → [K, B], with a closed-form expectation

    @property
    def logit_shape(self) -> tuple[int, ...]:
        """One row of logits: ``(D,)`` or ``(N, C)``."""
        return self.problem.shape.event

    def expectation(self, logits: torch.Tensor) -> torch.Tensor:
        """The exact ``E_q[f]`` per row ``[B]`` at ``logits [B, *latent]``."""
        return self.objective.expectation(self.objective.family.probs(logits))

    def exact_gradient(self, logits: torch.Tensor) -> torch.Tensor:
        """The exact ``∇_η E_q[f]`` ``[B, *latent]``."""
        return exact_gradient(self.objective, logits)


def make_toy(problem: ToyProblem, device: torch.device, dtype: torch.dtype) -> Toy:
    """The toy of ``problem``: its objective's random parameters come from ``w_seed``, the same on
    every device."""
    if problem.latent == "binary":
        objective = make_objective(
            problem.objective, problem.dim, problem.target, problem.w_scale, problem.w_seed, device, dtype
        )
    else:
        objective = make_categorical_objective(
            problem.objective, problem.dim, problem.classes, problem.w_scale, problem.w_seed, device, dtype
        )
    return Toy(problem, objective)


@dataclass
class ToyTraining:
    """Everything a toy run carries from step to step: what a checkpoint saves and restores."""

    logits: torch.Tensor  # η: [1, *latent], the parameters being optimised
    optimizer: torch.optim.Optimizer
    estimator: Estimator
    train_generator: torch.Generator  # the estimator's noise
    measure_generator: torch.Generator  # variance and bias draws
    step: int = 0

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "logits": self.logits.detach(),
            "optimizer": self.optimizer.state_dict(),
            "estimator": self.estimator.state_dict(),  # α, and its optimiser through get_extra_state
            "train_generator": self.train_generator.get_state(),
            "measure_generator": self.measure_generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]
        with torch.no_grad():
            self.logits.copy_(state["logits"])  # in place: the optimiser holds this very tensor
        self.optimizer.load_state_dict(state["optimizer"])
        self.estimator.load_state_dict(state["estimator"])
        self.train_generator.set_state(state["train_generator"].cpu())
        self.measure_generator.set_state(state["measure_generator"].cpu())


def build_training(
    config: ToyConfig, toy: Toy, name: str, seed: int, device: torch.device, dtype: torch.dtype
) -> ToyTraining:
    """Fresh logits at 0 (θ = ½, or uniform class probabilities), their optimiser, the estimator and
    the run's generators."""
    # η: [1, *latent], the parameters being optimised
    logits = torch.zeros(1, *toy.logit_shape, device=device, dtype=dtype, requires_grad=True)
    return ToyTraining(
        logits=logits,
        # The published toy's RMSprop: decay 0.9 and ε = 1e-7 outside the square root (DESIGN §4.1).
        optimizer=torch.optim.RMSprop([logits], lr=config.lr, alpha=0.9, eps=1e-7),
        estimator=build_estimator(name, config.estimator_settings, config.problem.shape).to(device),
        train_generator=make_generator(device, seed, "toy", "train"),
        measure_generator=make_generator(device, seed, "toy", "measure"),
    )


def run_toy(config: ToyConfig, progress: Progress | None = None) -> list[RunSummary]:
    """Run every (seed, estimator) of ``config``, with ``config.threads`` torch threads; return one
    summary per run, in that order."""
    progress = progress or NoProgress()
    with torch_threads(config.threads):
        device = resolve_device(config.device)
        dtype = resolve_dtype(config.dtype)
        toy = make_toy(config.problem, device, dtype)
        root = prepare_output_root(config.out)
        latent = config.problem.latent
        summaries = []
        runs = len(config.seeds) * len(config.estimators)
        progress.plan(runs, runs * config.steps)
        for seed in config.seeds:
            for name in config.estimators:
                progress.start(f"toy {name} K={config.k} seed={seed}", config.steps)
                training = build_training(config, toy, name, seed, device, dtype)
                identity = {
                    "problem": "toy",
                    "estimator": name,
                    "k": config.k,
                    "seed": seed,
                    "grad_var_method": "resample",
                    "latent": latent,
                }
                manifest = {
                    "job": "toy",
                    "objective_direction": "maximize" if config.maximize else "minimize",
                    "config": asdict(config),
                    "device": str(device),
                    "versions": provenance(device),
                }
                kind = "" if latent == "binary" else f"categorical{config.problem.classes}-"
                name_hint = f"toy-{kind}{name}-k{config.k}-seed{seed}"
                columns = TOY_METRICS + stat_columns(training.estimator)
                with Run.create(root, name_hint, identity, columns, manifest) as run:
                    _train(config, training, toy, run, progress)
                summaries.append(run_summary(run.path, run.manifest, columns))
        return summaries


def resume_toy(
    run_dir: Path | str, progress: Progress | None = None, threads: int | None = None
) -> RunSummary:
    """Continue a toy run from its last checkpoint, in its own directory, with its own config (and
    its torch threads unless ``threads`` is given: the machine may have changed).

    On the same device the rows after the checkpoint are the ones an uninterrupted run writes
    (rows already written past the checkpoint are written again and supersede the old ones).
    A finished run is left as it is: nothing is written, whatever its checkpoint cadence.
    """
    progress = progress or NoProgress()
    run_dir = Path(run_dir)
    finished = read_manifest(run_dir)
    if finished.get("job") == "toy" and finished.get("status") == "finished":
        # Checked before the checkpoint is looked for: a run can finish past its last checkpoint, or
        # before its first (--checkpoint-every beyond --steps), and still has nothing to continue.
        run_config("toy", finished, run_dir / MANIFEST)  # but what it reports must be readable
        return run_summary(run_dir, finished, resumed_columns(run_dir, TOY_METRICS))
    run_dir, manifest, checkpoint = run_to_resume(run_dir, "toy")
    config = run_config("toy", manifest, run_dir / MANIFEST)
    with torch_threads(threads or config.threads):
        device = resolve_device(config.device)
        dtype = resolve_dtype(config.dtype)
        toy = make_toy(config.problem, device, dtype)
        training = build_training(config, toy, manifest["estimator"], manifest["seed"], device, dtype)
        state = load_checkpoint(checkpoint, device)
        check_entries(state, checkpoint, TOY_CHECKPOINT_ENTRIES)
        check_step(state["step"], config.steps, checkpoint)
        load_into(training, state, checkpoint, "its toy run")
        progress.plan(1, config.steps - training.step)
        description = f"toy {manifest['estimator']} (resumed at {training.step})"
        progress.start(description, config.steps, training.step)
        columns = resumed_columns(run_dir, TOY_METRICS + stat_columns(training.estimator))
        with Run.reopen(run_dir, columns, resumed_from=training.step) as run:
            _train(config, training, toy, run, progress)
        return run_summary(run.path, run.manifest, columns)


def _train(config: ToyConfig, training: ToyTraining, toy: Toy, run: Run, progress: Progress) -> None:
    estimator, logits, k = training.estimator, training.logits, config.k
    direction = -1.0 if config.maximize else 1.0  # optimisers minimise

    def record(step: int, stats: dict[str, float | None], step_seconds: float | None) -> None:
        eta = logits.detach()
        metrics: dict[str, float | None] = {
            "objective": float(toy.expectation(eta)[0]),
            **stats,
            "sec_per_step": step_seconds,
        }
        if step % config.var_every == 0 or step == config.steps:
            measured = resample_variance(
                estimator, eta, toy.objective, k, config.var_samples, training.measure_generator
            )
            z = measured.bias_z(toy.exact_gradient(eta))
            metrics.update(grad_var=measured.variance, bias_max_z=float(z.max()), bias_mean_z=float(z.mean()))
        run.log(step, **metrics)

    if training.step == 0:
        record(0, dict(estimator.state_stats()), None)
    stats = StatTrace(estimator)
    busy, busy_steps = 0.0, 0
    while training.step < config.steps:
        start = time.perf_counter()
        estimate = estimator(logits, toy.objective, k, training.train_generator)
        logits.grad = direction * estimate.grad
        training.optimizer.step()
        estimator.update(estimate)
        stats.add(estimate)
        busy += time.perf_counter() - start
        busy_steps += 1
        training.step += 1
        progress.advance()
        step = training.step
        if not _is_row_step(config, step):
            continue
        row = stats.row(estimate, busy_steps)
        bad = non_finite(logits=logits.detach(), gradient=estimate.grad, **row)
        if bad:
            run.finish("diverged", diverged_at=step, non_finite=bad)
            return
        record(step, as_floats(row), busy / busy_steps)
        busy, busy_steps = 0.0, 0
        if step % config.checkpoint_every == 0:
            # Flush first: the trace on disk then always reaches the checkpoint a resume starts from.
            run.flush()
            write_checkpoint(run.path / CHECKPOINT, training.state_dict())


def _is_row_step(config: ToyConfig, step: int) -> bool:
    every = (config.log_every, config.var_every, config.checkpoint_every)
    return step == config.steps or any(step % n == 0 for n in every)
