"""The training engine of the model jobs (``vae``, ``predict``): one run per (estimator, seed).

A job (:class:`ModelJob`) says how to build its model and score it on held-out data; everything
else is shared: optimisers, estimators (one per stochastic layer when an estimator is applied layer
by layer: :func:`~dcvbench.training.train_step`), the minibatch stream, the trace and its rows,
checkpoints, resume and divergence. Rows of the trace are written every ``--log-every`` steps
(training objective averaged since the last row, seconds per step, the EMA gradient variance, and
what the estimator reports: rloo-dcv's ``α``, vimco's ``train_bound``, …), every ``--var-every``
steps (the ``resample`` variance at a fixed snapshot minibatch), every ``--eval-every`` steps (the
job's held-out bound with ``--eval-samples`` samples per datum on the test and validation splits)
and at every checkpoint.

The relaxed estimators (those with an :attr:`~dcvbench.estimators.EstimatorInfo.relaxation`) train
at temperatures that may anneal with the step (``config.temperatures``). Every bound is on the
discrete model, so all estimators are scored alike.

Runs with the same seed share their initial weights, minibatch order and estimator noise stream;
the evaluation images are binarised once with a fixed seed, the same for every run, so every
estimator is scored on the same binary images. A job may train and score on the intensities
themselves instead (:meth:`ModelJob.targets`: the VAE's ``--targets intensities``).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from dcvbench.checkpoints import (
    CHECKPOINT,
    GENERATOR,
    LAYER_STATES,
    OPTIONAL_STATE,
    STATE,
    STEP,
    check_entries,
    check_step,
    load_checkpoint,
    load_into,
    write_checkpoint,
)
from dcvbench.config import run_config
from dcvbench.data import BatchSampler, Dataset, load_dataset
from dcvbench.data.sampler import pixel_targets
from dcvbench.estimators import Estimator, build_estimator
from dcvbench.jobs import (
    NoProgress,
    Progress,
    RunSummary,
    StatTrace,
    as_floats,
    diverged,
    resumed_columns,
    run_summary,
    run_to_resume,
    stat_columns,
)
from dcvbench.measure.vae_variance import EMAVariance, resample_encoder_variance
from dcvbench.results import MANIFEST, Run, prepare_output_root, read_manifest
from dcvbench.runtime import ConfigError, make_generator, provenance, resolve_device, torch_threads
from dcvbench.training import train_step

# The trace columns of every model job; a run adds its estimator's stats (stat_columns): rloo-dcv's
# α, vimco's train_bound (the K-sample bound it trains), the relaxations' posterior temperature, ….
MODEL_METRICS = (
    "train_elbo",
    "test_bound",
    "valid_bound",
    "grad_var_ema",
    "grad_var_resample",
    "logit_var_resample",
    "sec_per_step",
)
EVAL_SEED = 20_221_122  # binarises the evaluation images identically for every run and seed
EVAL_CHUNK = 100  # evaluation rows per bound call: bounds memory at eval_samples × rows × pixels
# What a model run's checkpoint holds (Training.state_dict): checked before any of it is loaded.
MODEL_CHECKPOINT_ENTRIES = {
    "step": STEP,
    "model": STATE,
    "estimator": STATE,
    "upper_estimators": LAYER_STATES,
    "encoder_optimizer": STATE,
    "decoder_optimizer": STATE,
    "prior_optimizer": OPTIONAL_STATE,
    "sampler": STATE,
    "train_generator": GENERATOR,
    "measure_generator": GENERATOR,
    "eval_generator": GENERATOR,
    "ema": OPTIONAL_STATE,
}


class ModelJob(ABC):
    """What differs between the model jobs: the model, its held-out bound, its manifest's entries.

    ``config`` is the job's configuration (:class:`~dcvbench.config.VaeConfig`,
    :class:`~dcvbench.config.PredictConfig`); the engine reads the settings they share
    (``run_k(estimator, shape)``: ``k`` or a budget's, ``steps``, learning rates, row cadences,
    ``estimator_settings``, ``temperatures(step, estimator)``, ``kl``, ``bound(estimator)``).
    """

    name: str  # the job's name: its command, its manifests' "job"

    @abstractmethod
    def build_model(self, config, seed: int, dataset: Dataset, device: torch.device) -> nn.Module:
        """The run's model at initialisation (weights drawn from a generator seeded by the run seed)."""

    @abstractmethod
    def bound(
        self, model: nn.Module, x: torch.Tensor, samples: int, generator: torch.Generator
    ) -> torch.Tensor:
        """The held-out bound per row ``[B]`` of the images ``x [B, P]`` with ``samples`` samples."""

    def targets(self, config) -> str:
        """What the job trains and is scored on (:data:`~dcvbench.data.sampler.TARGETS`): binarised
        images unless the job says otherwise."""
        return "binarized"

    @abstractmethod
    def manifest(self, config, estimator: Estimator) -> dict:
        """The job's own manifest entries for a run of ``estimator``."""

    @abstractmethod
    def name_hint(self, config, estimator: str, seed: int) -> str:
        """The start of a run directory's name."""


@dataclass
class Training:
    """Everything a run carries from step to step: what a checkpoint saves and restores."""

    model: nn.Module
    estimator: Estimator
    k: int  # samples per estimate: the configuration's K, or the largest its budget affords the estimator
    # One per stochastic layer above the first, for an estimator applied layer by layer (training.py).
    upper_estimators: list[Estimator]
    encoder_optimizer: torch.optim.Optimizer
    decoder_optimizer: torch.optim.Optimizer
    prior_optimizer: torch.optim.Optimizer | None
    sampler: BatchSampler
    train_generator: torch.Generator  # the estimator's noise
    measure_generator: torch.Generator  # resample variance draws
    eval_generator: torch.Generator  # importance samples of the held-out bound
    ema: EMAVariance | None
    step: int = 0

    def stat_columns(self) -> tuple[str, ...]:
        """The estimators' trace columns: the first layer's stats by their names, each upper
        layer's with its layer (``alpha_layer2``)."""
        columns = stat_columns(self.estimator)
        for layer, upper in enumerate(self.upper_estimators, 2):
            columns += tuple(layer_named(dict.fromkeys(stat_columns(upper)), layer))
        return columns

    def state_stats(self) -> dict[str, float]:
        """The estimators' ``"last"`` stats before any estimate (the step-0 row), named as
        :meth:`stat_columns`."""
        stats = self.estimator.state_stats()
        for layer, upper in enumerate(self.upper_estimators, 2):
            stats |= layer_named(upper.state_stats(), layer)
        return stats

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "estimator": self.estimator.state_dict(),
            "upper_estimators": [estimator.state_dict() for estimator in self.upper_estimators],
            "encoder_optimizer": self.encoder_optimizer.state_dict(),
            "decoder_optimizer": self.decoder_optimizer.state_dict(),
            "prior_optimizer": self.prior_optimizer.state_dict() if self.prior_optimizer else None,
            "sampler": self.sampler.state_dict(),
            "train_generator": self.train_generator.get_state(),
            "measure_generator": self.measure_generator.get_state(),
            "eval_generator": self.eval_generator.get_state(),
            "ema": self.ema.state_dict() if self.ema else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]
        self.model.load_state_dict(state["model"])
        self.estimator.load_state_dict(state["estimator"])
        for estimator, saved in zip(self.upper_estimators, state.get("upper_estimators", []), strict=True):
            estimator.load_state_dict(saved)
        self.encoder_optimizer.load_state_dict(state["encoder_optimizer"])
        self.decoder_optimizer.load_state_dict(state["decoder_optimizer"])
        if self.prior_optimizer:
            self.prior_optimizer.load_state_dict(state["prior_optimizer"])
        self.sampler.load_state_dict(state["sampler"])
        self.train_generator.set_state(state["train_generator"].cpu())
        self.measure_generator.set_state(state["measure_generator"].cpu())
        self.eval_generator.set_state(state["eval_generator"].cpu())
        if self.ema:
            self.ema.load_state_dict(state["ema"])


@dataclass(frozen=True)
class EvaluationData:
    """Fixed binarised (or intensity) evaluation splits and the snapshot minibatch for the resample
    variance."""

    test: torch.Tensor  # [N_test, P]
    valid: torch.Tensor  # [N_valid, P]
    snapshot: torch.Tensor  # [batch, P]


def layer_named(values: dict, layer: int) -> dict:
    """``values`` of stochastic layer ``layer``'s estimator, keyed as its trace columns: ``alpha_layer2``."""
    return {f"{name}_layer{layer}": value for name, value in values.items()}


def evaluation_data(
    dataset: Dataset, batch_size: int, device: torch.device, targets: str = "binarized"
) -> EvaluationData:
    """Binarise the held-out splits (or keep their intensities: ``targets``) and pick the variance
    snapshot batch, with a fixed seed."""
    generator = torch.Generator().manual_seed(EVAL_SEED)
    test = pixel_targets(dataset.test, targets, generator)  # [N_test, P]
    valid = pixel_targets(dataset.valid, targets, generator)  # [N_valid, P]
    rows = torch.randperm(dataset.train.shape[0], generator=generator)[:batch_size]
    snapshot = pixel_targets(dataset.train[rows], targets, generator)  # [batch, P]
    return EvaluationData(test.to(device), valid.to(device), snapshot.to(device))


def build_training(
    job: ModelJob, config, name: str, seed: int, dataset: Dataset, device: torch.device
) -> Training:
    """A fresh model, optimisers, estimators, sampler and generators for one run."""
    model = job.build_model(config, seed, dataset, device)
    prior = model.prior_parameters()
    estimator = build_estimator(name, config.estimator_settings, model.problem_shape).to(device)
    layered = range(2, model.depth + 1) if not estimator.info.trains_chain else ()
    return Training(
        model=model,
        estimator=estimator,
        k=config.run_k(name, model.problem_shape),
        upper_estimators=[
            build_estimator(name, config.estimator_settings, model.layer_shape(layer)).to(device)
            for layer in layered
        ],
        encoder_optimizer=torch.optim.Adam(model.encoder_parameters(), lr=config.encoder_lr),
        decoder_optimizer=torch.optim.Adam(model.decoder_parameters(), lr=config.decoder_lr),
        prior_optimizer=torch.optim.SGD(prior, lr=config.prior_lr) if prior else None,
        sampler=BatchSampler(
            dataset.train,
            config.batch_size,
            generator=make_generator(torch.device("cpu"), seed, job.name, "data"),
            device=device,
            targets=job.targets(config),
        ),
        train_generator=make_generator(device, seed, job.name, "train"),
        measure_generator=make_generator(device, seed, job.name, "measure"),
        eval_generator=make_generator(device, seed, job.name, "eval"),
        ema=EMAVariance(0.999) if config.var_method in ("ema", "both") else None,
    )


def run_job(job: ModelJob, config, progress: Progress | None = None) -> list[RunSummary]:
    """Train one run per (seed, estimator) of ``config``, with ``config.threads`` torch threads;
    return their summaries in that order."""
    progress = progress or NoProgress()
    with torch_threads(config.threads):
        device = resolve_device(config.device)
        dataset = load_dataset(config.dataset, config.data_dir)
        _check_batch_size(config, dataset)
        root = prepare_output_root(config.out)
        evaluation = evaluation_data(dataset, config.batch_size, device, job.targets(config))
        summaries = []
        runs = len(config.seeds) * len(config.estimators)
        progress.plan(runs, runs * config.steps)
        for seed in config.seeds:
            for name in config.estimators:
                training = build_training(job, config, name, seed, dataset, device)
                progress.start(f"{job.name} {name} K={training.k} seed={seed}", config.steps)
                identity = {
                    "problem": job.name,
                    "estimator": name,
                    "k": training.k,
                    "seed": seed,
                    "latent": config.latent,
                }
                manifest = {
                    "job": job.name,
                    **job.manifest(config, training.estimator),
                    # What one estimate (of each stochastic layer) costs: equal under a budget.
                    "evals": training.estimator.info.evals(training.k, training.model.problem_shape),
                    "config": asdict(config),
                    "data": dict(dataset.metadata),
                    "device": str(device),
                    "versions": provenance(device),
                }
                columns = MODEL_METRICS + training.stat_columns()
                with Run.create(root, job.name_hint(config, name, seed), identity, columns, manifest) as run:
                    _train(job, config, training, evaluation, run, progress)
                summaries.append(run_summary(run.path, run.manifest, columns))
        return summaries


def resume_job(
    job: ModelJob, run_dir: Path | str, progress: Progress | None = None, threads: int | None = None
) -> RunSummary:
    """Continue a run from its last checkpoint, in its own directory, with its own config (and its
    torch threads unless ``threads`` is given: the machine may have changed).

    On the same device the rows after the checkpoint are the ones an uninterrupted run writes
    (rows already written past the checkpoint are written again and supersede the old ones).
    A finished run is left as it is: nothing is written, whatever its checkpoint cadence.
    """
    progress = progress or NoProgress()
    run_dir = Path(run_dir)
    finished = read_manifest(run_dir)
    if finished.get("job") == job.name and finished.get("status") == "finished":
        # Checked before the checkpoint is looked for: a run can finish past its last checkpoint, or
        # before its first (--checkpoint-every beyond --steps), and still has nothing to continue.
        run_config(job.name, finished, run_dir / MANIFEST)  # but what it reports must be readable
        return run_summary(run_dir, finished, resumed_columns(run_dir, MODEL_METRICS))
    run_dir, manifest, checkpoint = run_to_resume(run_dir, job.name)
    config = run_config(job.name, manifest, run_dir / MANIFEST)
    with torch_threads(threads or config.threads):
        device = resolve_device(config.device)
        dataset = load_dataset(config.dataset, config.data_dir)
        training = build_training(job, config, manifest["estimator"], manifest["seed"], dataset, device)
        state = load_checkpoint(checkpoint, device)
        check_entries(state, checkpoint, MODEL_CHECKPOINT_ENTRIES)
        check_step(state["step"], config.steps, checkpoint)
        load_into(training, state, checkpoint, f"its {config.arch} run")
        evaluation = evaluation_data(dataset, config.batch_size, device, job.targets(config))
        progress.plan(1, config.steps - training.step)
        description = f"{job.name} {manifest['estimator']} (resumed at {training.step})"
        progress.start(description, config.steps, training.step)
        columns = resumed_columns(run_dir, MODEL_METRICS + training.stat_columns())
        with Run.reopen(run_dir, columns, resumed_from=training.step) as run:
            _train(job, config, training, evaluation, run, progress)
        return run_summary(run.path, run.manifest, columns)


def _train(
    job: ModelJob, config, training: Training, evaluation: EvaluationData, run: Run, progress: Progress
) -> None:
    model, estimator = training.model, training.estimator
    device = next(model.parameters()).device
    relaxed = estimator.info.relaxation is not None
    bound = config.bound(estimator.info.name)
    if training.step == 0:
        _record(job, config, training, evaluation, run, training.state_stats(), elbo=None, step_seconds=None)
    elbo_sum = torch.zeros((), device=device)  # summed on the device: no sync per step
    stats = StatTrace(estimator)
    upper_stats = [StatTrace(upper) for upper in training.upper_estimators]
    busy, busy_steps = 0.0, 0
    while training.step < config.steps:
        start = time.perf_counter()
        x = training.sampler.next_batch()  # [B, P]
        posterior_temperature, prior_temperature = config.temperatures(training.step + 1, estimator.info.name)
        if relaxed:
            for layer_estimator in (estimator, *training.upper_estimators):
                layer_estimator.temperature = posterior_temperature
        output = train_step(
            model,
            estimator,
            x,
            training.k,
            training.train_generator,
            training.encoder_optimizer,
            training.decoder_optimizer,
            training.prior_optimizer,
            prior_temperature=prior_temperature,
            kl=config.kl,
            bound=bound,
            upper_estimators=training.upper_estimators,
        )
        elbo_sum += output.train_elbo
        stats.add(output.estimate)
        for trace, estimate in zip(upper_stats, output.upper_estimates, strict=True):
            trace.add(estimate)
        training.step += 1
        step = training.step
        row = _is_row_step(config, step)
        if row:
            _synchronize(device)  # so the steps' time includes the work still queued on a GPU
        busy += time.perf_counter() - start
        busy_steps += 1
        if training.ema:
            training.ema.update(model.encoder_parameters())
        progress.advance()
        if not row:
            continue
        elbo = elbo_sum / busy_steps
        reported = stats.row(output.estimate, busy_steps)  # the α this step's estimate used, …
        for layer, (trace, estimate) in enumerate(zip(upper_stats, output.upper_estimates, strict=True), 2):
            reported |= layer_named(trace.row(estimate, busy_steps), layer)
        bad = diverged(model, train_elbo=elbo, **reported, gradient=output.estimate.grad)
        if bad:
            run.finish("diverged", diverged_at=step, non_finite=bad)
            return
        _record(job, config, training, evaluation, run, as_floats(reported), float(elbo), busy / busy_steps)
        elbo_sum.zero_()
        busy, busy_steps = 0.0, 0
        if step % config.checkpoint_every == 0 or step == config.steps:
            run.flush()
            write_checkpoint(run.path / CHECKPOINT, training.state_dict())


def _record(
    job: ModelJob,
    config,
    training: Training,
    evaluation: EvaluationData,
    run: Run,
    stats: dict[str, float | None],
    elbo: float | None,
    step_seconds: float | None,
) -> None:
    step = training.step
    model = training.model
    metrics: dict[str, float | None] = {"train_elbo": elbo, "sec_per_step": step_seconds, **stats}
    _, prior_temperature = config.temperatures(step, training.estimator.info.name)  # the estimator's now
    if training.ema and step > 0:
        metrics["grad_var_ema"] = float(training.ema.value())
    if config.var_method in ("resample", "both") and (step % config.var_every == 0 or step == config.steps):
        result = resample_encoder_variance(
            model,
            training.estimator,
            evaluation.snapshot,
            training.k,
            config.var_samples,
            training.measure_generator,
            prior_temperature=prior_temperature,
            kl=config.kl,
            bound=config.bound(training.estimator.info.name),
        )
        metrics.update(grad_var_resample=result.param_variance, logit_var_resample=result.logit_variance)
    if step % config.eval_every == 0 or step == config.steps:
        generator = training.eval_generator
        metrics["test_bound"] = _mean_bound(job, model, evaluation.test, config.eval_samples, generator)
        metrics["valid_bound"] = _mean_bound(job, model, evaluation.valid, config.eval_samples, generator)
    run.log(step, **metrics)


def _mean_bound(
    job: ModelJob, model: nn.Module, images: torch.Tensor, samples: int, generator: torch.Generator
) -> float:
    """The job's held-out bound averaged over ``images``, ``samples`` samples each."""
    total = sum(
        float(job.bound(model, chunk, samples, generator).sum()) for chunk in images.split(EVAL_CHUNK)
    )
    return total / images.shape[0]


def _is_row_step(config, step: int) -> bool:
    every = (config.log_every, config.var_every, config.eval_every, config.checkpoint_every)
    return step == config.steps or any(step % n == 0 for n in every)


def _check_batch_size(config, dataset: Dataset) -> None:
    rows = dataset.train.shape[0]
    if config.batch_size > rows:
        raise ConfigError(
            f"--batch-size {config.batch_size} exceeds the {rows} training images of {config.dataset}"
        )


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
