"""Training the user's own model with each estimator: ``dcvbench.train`` and ``dcvbench train --objective``.

What the variance of an estimator buys is answered by training with it. The user's model is a
:class:`UserModel`: an ``nn.Module`` that maps a batch to the logits of its discrete latents (bits
``[B, D]`` or ``N`` categoricals ``[B, N, C]``), gives the objective ``f`` of that batch (latent
samples ``[K, B, *event]`` → ``[K, B]``, a loss, differentiable in the model's parameters) and a
stream of training batches. Each step minimises ``(1/B) Σ_b E_{q_η(b)}[f_b(b)]``:

- the parameters ``φ`` behind the logits ``η = logits(batch)`` receive the estimator's
  ``g ≈ ∇_η E_q[f]`` through one vector–Jacobian product, ``η.backward(g / B)``;
- every parameter ``θ`` that ``f`` itself depends on receives the pathwise gradient
  ``∇_θ (1/(E B)) Σ f(b_e)`` of the mean over the estimator's ``E`` sample values (or of the
  estimator's own ``surrogate`` where it gives one), as :func:`dcvbench.training.train_step` does
  for a VAE's decoder. A parameter both reach (a shared trunk) gets the sum: the whole gradient.

One Adam optimiser at ``lr`` steps every parameter. Runs have the layout, manifest and trace of the
model jobs (job ``train``; :data:`USER_METRICS` and the estimator's stats, plus the model's own
``evaluate()`` metrics as ``eval_<name>`` columns), so ``dcvbench plot`` reads them.

Runs with the same seed share their initial weights (the model is built with torch's global
generator seeded from the run seed, then restored), batch stream and estimator noise stream, so a
seed gives the same trace on one machine and device. Runs keep no checkpoint: a user model is
rebuilt by the user's code, which ``--resume`` cannot promise is unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from dcvbench.config import UserTrainingConfig
from dcvbench.estimators import Estimate, Estimator, build_estimator
from dcvbench.estimators.registry import check_objective
from dcvbench.failures import describe
from dcvbench.jobs import NoProgress, Progress, RunSummary, StatTrace, as_floats, diverged, run_summary
from dcvbench.jobs import stat_columns as estimator_stat_columns
from dcvbench.measure.vae_variance import EMAVariance
from dcvbench.objectives import Objective, ProblemShape
from dcvbench.problems.user import user_problem
from dcvbench.results import Run, prepare_output_root
from dcvbench.runtime import (
    ConfigError,
    derive_seed,
    make_generator,
    provenance,
    resolve_device,
    torch_threads,
)
from dcvbench.training import backward_estimate

JOB = "train"
# The trace columns of every run: the training objective (the mean of f over the steps since the last
# row, over each step's batch and samples: a loss), the EMA gradient variance of all the model's
# parameters (the vae job's published definition, over the whole model), and the seconds per step.
USER_METRICS = ("train_objective", "grad_var_ema", "sec_per_step")
EVAL_PREFIX = "eval_"  # the model's own evaluate() metrics, as trace columns: eval_accuracy
EMA_DECAY = 0.999  # as the vae job's grad_var_ema


class UserModel(Protocol):
    """What :func:`train` asks of the user's model (an ``nn.Module``; its parameters are trained).

    - ``logits(batch)``: ``[B, D]`` logits of ``D`` bits, or ``[B, N, C]`` of ``N`` categorical
      variables of ``C`` classes; differentiable in the parameters that produce them.
    - ``objective(batch)``: ``f`` for this batch, latent samples ``[K, B, D]`` (or one-hot
      ``[K, B, N, C]``) → ``[K, B]``, a loss to minimise, differentiable in ``b`` (the relaxed
      estimators evaluate it between the corners) and in the parameters it uses.
    - ``batches(generator)``: an endless iterator of training batches, drawn with ``generator``
      (a CPU ``torch.Generator``; the same seed, the same stream); a batch is a tensor or a tuple
      of tensors, moved to the model's device by the trainer.
    - optional ``evaluate() -> dict[str, float]``: the model's own held-out metrics (accuracy,
      expected reward), recorded as ``eval_<name>`` at every ``eval_every`` steps, deterministic.
    """

    def logits(self, batch: Any) -> Tensor: ...

    def objective(self, batch: Any) -> Objective: ...

    def batches(self, generator: torch.Generator) -> Iterator[Any]: ...


@dataclass
class _Training:
    """One run's model, estimator, optimiser and streams."""

    model: nn.Module
    estimator: Estimator
    optimizer: torch.optim.Optimizer
    batches: Iterator[Any]
    generator: torch.Generator  # the estimator's noise
    ema: EMAVariance
    step: int = 0


def train(
    make_model: Callable[[], nn.Module],
    *,
    estimators: Sequence[str] = UserTrainingConfig.estimators,
    k: int = UserTrainingConfig.k,
    steps: int = UserTrainingConfig.steps,
    lr: float = UserTrainingConfig.lr,
    seeds: Sequence[int] = UserTrainingConfig.seeds,
    log_every: int = UserTrainingConfig.log_every,
    eval_every: int = UserTrainingConfig.eval_every,
    device: str = UserTrainingConfig.device,
    threads: int = UserTrainingConfig.threads,
    estimator_settings: dict[str, Any] | None = None,
    name: str = UserTrainingConfig.name,
    out: Path | str = UserTrainingConfig.out,
    progress: Progress | None = None,
) -> list[RunSummary]:
    """Train a fresh ``make_model()`` (a :class:`UserModel`) with each estimator for ``steps`` steps
    of ``k`` samples, once per seed; write one run each under ``out`` and return their summaries.

    >>> import dcvbench
    >>> runs = dcvbench.train(make_model, estimators=["rloo", "rloo-dcv"], k=2, steps=500, out="runs")
    >>> runs[0].metrics["train_objective"], runs[0].path

    Bad input (a model that is no :class:`UserModel`, logits or values of the wrong shape, unknown
    estimators) is a :class:`~dcvbench.runtime.ConfigError` before any run is written.
    """
    config = UserTrainingConfig(
        model=f"{getattr(make_model, '__module__', '?')}:{getattr(make_model, '__qualname__', '?')}",
        name=name,
        estimators=tuple(estimators),
        k=k,
        steps=steps,
        lr=lr,
        log_every=log_every,
        eval_every=eval_every,
        seeds=tuple(seeds),
        device=device,
        threads=threads,
        estimator_settings=dict(estimator_settings or {}),
        out=str(out),
    )
    return run_user_training(make_model, config, progress)


def run_user_training(
    make_model: Callable[[], nn.Module], config: UserTrainingConfig, progress: Progress | None = None
) -> list[RunSummary]:
    """Train one run per (seed, estimator) of ``config``, with ``config.threads`` torch threads;
    return their summaries in that order. Every run's model, shapes and metrics are checked first,
    so that bad input writes nothing."""
    progress = progress or NoProgress()
    with torch_threads(config.threads):
        device = resolve_device(config.device)
        shape, metric_names = _check_model(make_model, config, device)
        root = prepare_output_root(config.out)
        runs = len(config.seeds) * len(config.estimators)
        progress.plan(runs, runs * config.steps)
        summaries = []
        for seed in config.seeds:
            for name in config.estimators:
                training = _build_training(make_model, config, name, seed, shape, device)
                progress.start(f"{JOB} {config.name} {name} K={config.k} seed={seed}", config.steps)
                identity = {"problem": config.name, "estimator": name, "k": config.k, "seed": seed}
                manifest = {
                    "job": JOB,
                    "model": config.model,
                    "latent": shape.latent_type,
                    "latent_shape": list(shape.event),
                    "objective_direction": "minimize f",
                    "evals": training.estimator.info.evals(config.k, shape),
                    "config": asdict(config),
                    "device": str(device),
                    "versions": provenance(device),
                }
                columns = (
                    USER_METRICS
                    + estimator_stat_columns(training.estimator)
                    + tuple(EVAL_PREFIX + metric for metric in metric_names)
                )
                hint = f"{JOB}-{config.name}-{name}-k{config.k}-seed{seed}"
                with Run.create(root, hint, identity, columns, manifest) as run:
                    _train(config, training, run, progress)
                summaries.append(run_summary(run.path, run.manifest, columns))
        return summaries


def _build_model(make_model: Callable[[], nn.Module], seed: int, device: torch.device) -> nn.Module:
    """``make_model()`` with torch's global CPU generator seeded from ``seed`` (initial weights drawn
    as ``nn`` layers draw them), and the caller's generator state restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, JOB, "init"))
        model = make_model()
    missing = [
        hook for hook in ("logits", "objective", "batches") if not callable(getattr(model, hook, None))
    ]
    if not isinstance(model, nn.Module) or missing:
        what = "not an nn.Module" if not isinstance(model, nn.Module) else f"has no {', '.join(missing)}"
        raise ConfigError(f"the model from {getattr(make_model, '__name__', make_model)} is {what}")
    return model.to(device)


def _check_model(
    make_model: Callable[[], nn.Module], config: UserTrainingConfig, device: torch.device
) -> tuple[ProblemShape, tuple[str, ...]]:
    """Build the model once and check it on one batch as ``compare`` checks a problem
    (:func:`~dcvbench.problems.user.user_problem`): the latent shape its logits give, and the names
    of its ``evaluate()`` metrics. A :class:`ConfigError` for anything of the wrong shape, and for an
    exception the user's code raises here (one line: where it failed, and why)."""
    model = _build_model(make_model, config.seeds[0], device)
    generator = make_generator(torch.device("cpu"), config.seeds[0], JOB, "check")
    batch = _user_call("batches(generator)", lambda: _to_device(next(iter(model.batches(generator))), device))
    logits = _user_call("logits(batch)", lambda: model.logits(batch))
    objective = _user_call("objective(batch)", lambda: model.objective(batch))
    problem = user_problem((objective, logits), f"the model of {config.model} on its first batch")
    for name in config.estimators:  # the hooks an estimator needs of f (exact-baseline: expectation)
        check_objective(name, problem.objective, problem.shape.latent_type)
    return problem.shape, tuple(_user_call("evaluate()", lambda: _evaluate(model)))


def _user_call(what: str, call: Callable[[], Any]) -> Any:
    """``call()``, with an exception of the user's code as a one-line :class:`ConfigError`."""
    try:
        return call()
    except ConfigError:
        raise
    except Exception as error:
        raise ConfigError(f"the model's {what} raised {describe(error)}") from None


def _evaluate(model: nn.Module) -> dict[str, float]:
    """The model's ``evaluate()`` metrics (none if it has no such method), checked to be numbers."""
    evaluate = getattr(model, "evaluate", None)
    if evaluate is None:
        return {}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        metrics = evaluate()
    model.train(was_training)
    if not isinstance(metrics, dict) or not all(isinstance(name, str) for name in metrics):
        raise ConfigError(
            f"evaluate() must return a dict of metric name → number, got {type(metrics).__name__}"
        )
    try:
        return {name: float(value) for name, value in metrics.items()}
    except (TypeError, ValueError):
        raise ConfigError(f"evaluate() must return numbers, got {metrics!r}") from None


def _build_training(
    make_model: Callable[[], nn.Module],
    config: UserTrainingConfig,
    name: str,
    seed: int,
    shape: ProblemShape,
    device: torch.device,
) -> _Training:
    model = _build_model(make_model, seed, device)
    return _Training(
        model=model,
        estimator=build_estimator(name, config.estimator_settings, shape).to(device),
        optimizer=torch.optim.Adam(model.parameters(), lr=config.lr),
        batches=iter(model.batches(make_generator(torch.device("cpu"), seed, JOB, "data"))),
        generator=make_generator(device, seed, JOB, "train"),
        ema=EMAVariance(EMA_DECAY),
    )


def _step(training: _Training, batch: Any, k: int) -> tuple[Tensor, Estimate]:
    """One step on ``batch``; returns the mean of ``f`` over the estimator's samples (0-d, a loss)
    and the estimate. See the module's docstring for how the gradient is split."""
    model, estimator = training.model, training.estimator
    model.zero_grad(set_to_none=True)
    logits = model.logits(batch)  # [B, *event]
    estimate = estimator(logits, model.objective(batch), k, training.generator)
    if estimate.param_grads is not None:
        raise ConfigError("a user objective's value_and_input_grad must not return param_grads")
    backward_estimate(estimate, logits, list(model.parameters()))
    training.optimizer.step()
    estimator.update(estimate)  # after g was used: g stays unbiased
    return estimate.values.detach().mean(), estimate


def _train(config: UserTrainingConfig, training: _Training, run: Run, progress: Progress) -> None:
    model = training.model
    device = next(model.parameters()).device
    _record(config, training, run, training.estimator.state_stats(), objective=None, step_seconds=None)
    objective_sum = torch.zeros((), device=device)  # summed on the device: no sync per step
    stats = StatTrace(training.estimator)
    busy, busy_steps = 0.0, 0
    with_grad: list[Tensor] = []  # the parameters the EMA variance follows: those with a gradient
    while training.step < config.steps:
        start = time.perf_counter()
        batch = _to_device(next(training.batches), device)
        objective, estimate = _step(training, batch, config.k)
        objective_sum += objective
        stats.add(estimate)
        training.step += 1
        step = training.step
        row = step == config.steps or step % config.log_every == 0 or step % config.eval_every == 0
        if row and device.type == "cuda":
            torch.cuda.synchronize(device)  # so the steps' time includes the work still queued
        busy += time.perf_counter() - start
        busy_steps += 1
        with_grad = with_grad or [p for p in model.parameters() if p.grad is not None]
        training.ema.update(with_grad)
        progress.advance()
        if not row:
            continue
        mean_objective = objective_sum / busy_steps
        reported = stats.row(estimate, busy_steps)
        bad = diverged(model, train_objective=mean_objective, **reported, gradient=estimate.grad)
        if bad:
            run.finish("diverged", diverged_at=step, non_finite=bad)
            return
        _record(config, training, run, as_floats(reported), float(mean_objective), busy / busy_steps)
        objective_sum.zero_()
        busy, busy_steps = 0.0, 0


def _record(
    config: UserTrainingConfig,
    training: _Training,
    run: Run,
    stats: dict[str, float | None],
    objective: float | None,
    step_seconds: float | None,
) -> None:
    step = training.step
    metrics: dict[str, float | None] = {"train_objective": objective, "sec_per_step": step_seconds, **stats}
    if step > 0:
        metrics["grad_var_ema"] = float(training.ema.value())
    if step % config.eval_every == 0 or step == config.steps:
        metrics |= {EVAL_PREFIX + name: value for name, value in _evaluate(training.model).items()}
    run.log(step, **metrics)


def _to_device(batch: Any, device: torch.device) -> Any:
    """A batch (a tensor, or a tuple or list of them) on ``device``."""
    if isinstance(batch, Tensor):
        return batch.to(device)
    if isinstance(batch, tuple | list):
        return type(batch)(_to_device(part, device) for part in batch)
    return batch
