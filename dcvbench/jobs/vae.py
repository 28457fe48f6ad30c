"""``dcvbench vae``: train a VAE with each estimator and measure what it does to learning.

DESIGN §4.2–§4.3; binary latents or categorical ones (§3.6, uniform prior) in one
:class:`~dcvbench.problems.vae.VAE`, trained (:func:`~dcvbench.training.train_step`) and scored the
same way. One run per (estimator, seed). Rows of the trace are written every ``--log-every`` steps
(training ELBO averaged since the last row, seconds per step, the EMA gradient variance, and what
the estimator reports: rloo-dcv's ``α``, vimco's ``train_bound``, …), every ``--var-every`` steps
(the ``resample`` variance at a fixed snapshot minibatch), every ``--eval-every`` steps (the
importance-weighted bound with ``--eval-samples`` samples per datum on the test and validation
splits) and at every checkpoint.

The relaxed estimators (``concrete``, ``st-concrete``: those with an
:attr:`~dcvbench.estimators.EstimatorInfo.relaxation`) train at temperatures that may anneal with
the step (:meth:`VaeConfig.temperatures`); the manifest's ``relaxation`` says what they train.
Every bound is on the discrete model, so all estimators are scored alike.

Runs with the same seed share their initial weights, minibatch order and estimator noise stream;
the evaluation images are binarised once with a fixed seed, the same for every run, so every
estimator is scored on the same binary images.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from dcvbench.checkpoints import CHECKPOINT, load_checkpoint, load_into, write_checkpoint
from dcvbench.config import VaeConfig, vae_config_from_dict
from dcvbench.data import BatchSampler, Dataset, binarize, load_dataset
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
from dcvbench.measure.vae_variance import EMAVariance, resample_encoder_variance
from dcvbench.problems.vae import VAE, iwae_bound
from dcvbench.results import Run, prepare_output_root, read_manifest
from dcvbench.runtime import ConfigError, make_generator, provenance, resolve_device
from dcvbench.training import train_step

# The VAE's own trace columns; a run adds its estimator's stats (stat_columns): rloo-dcv's α,
# vimco's train_bound (the K-sample bound it trains), the relaxations' posterior temperature, ….
VAE_METRICS = (
    "train_elbo",
    "test_bound",
    "valid_bound",
    "grad_var_ema",
    "grad_var_resample",
    "logit_var_resample",
    "sec_per_step",
)
EVAL_SEED = 20_221_122  # binarises the evaluation images identically for every run and seed
EVAL_CHUNK = 100  # evaluation rows per IWAE call: bounds memory at eval_samples × rows × pixels


@dataclass
class Training:
    """Everything a VAE run carries from step to step: what a checkpoint saves and restores."""

    model: VAE
    estimator: Estimator
    encoder_optimizer: torch.optim.Optimizer
    decoder_optimizer: torch.optim.Optimizer
    prior_optimizer: torch.optim.Optimizer | None
    sampler: BatchSampler
    train_generator: torch.Generator  # the estimator's noise
    measure_generator: torch.Generator  # resample variance draws
    eval_generator: torch.Generator  # importance samples of the held-out bound
    ema: EMAVariance | None
    step: int = 0

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "estimator": self.estimator.state_dict(),
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
    """Fixed binarised evaluation splits and the snapshot minibatch for the resample variance."""

    test: torch.Tensor  # [N_test, P]
    valid: torch.Tensor  # [N_valid, P]
    snapshot: torch.Tensor  # [batch, P]


def evaluation_data(dataset: Dataset, batch_size: int, device: torch.device) -> EvaluationData:
    """Binarise the held-out splits and pick the variance snapshot batch, with a fixed seed."""
    generator = torch.Generator().manual_seed(EVAL_SEED)
    test = binarize(dataset.test, generator)
    valid = binarize(dataset.valid, generator)
    rows = torch.randperm(dataset.train.shape[0], generator=generator)[:batch_size]
    snapshot = binarize(dataset.train[rows], generator)
    return EvaluationData(test.to(device), valid.to(device), snapshot.to(device))


def build_model(config: VaeConfig, seed: int, dataset: Dataset, device: torch.device) -> VAE:
    """The run's model at initialisation (weights drawn from a generator seeded by the run seed)."""
    mean = dataset.mean_image()  # [P]
    options = {
        "arch": config.arch,
        "pixels": dataset.train.shape[1],
        "learn_prior": config.learn_prior,
        "input_mean": mean if config.center_inputs else None,
        "output_bias_mean": mean if config.init_output_bias else None,
        "generator": make_generator(torch.device("cpu"), seed, "vae", "init"),
    }
    return VAE(config.latent_vars, config.classes, **options).to(device)


def build_training(
    config: VaeConfig, name: str, seed: int, dataset: Dataset, device: torch.device
) -> Training:
    """A fresh model, optimisers, estimator, sampler and generators for one run."""
    model = build_model(config, seed, dataset, device)
    prior = model.prior_parameters()
    return Training(
        model=model,
        estimator=build_estimator(name, config.estimator_settings, model.problem_shape).to(device),
        encoder_optimizer=torch.optim.Adam(model.encoder_parameters(), lr=config.encoder_lr),
        decoder_optimizer=torch.optim.Adam(model.decoder_parameters(), lr=config.decoder_lr),
        prior_optimizer=torch.optim.SGD(prior, lr=config.prior_lr) if prior else None,
        sampler=BatchSampler(
            dataset.train,
            config.batch_size,
            generator=make_generator(torch.device("cpu"), seed, "vae", "data"),
            device=device,
        ),
        train_generator=make_generator(device, seed, "vae", "train"),
        measure_generator=make_generator(device, seed, "vae", "measure"),
        eval_generator=make_generator(device, seed, "vae", "eval"),
        ema=EMAVariance(0.999) if config.var_method in ("ema", "both") else None,
    )


def run_vae(config: VaeConfig, progress: Progress | None = None) -> list[RunSummary]:
    """Train one run per (seed, estimator) of ``config``; return their summaries in that order."""
    progress = progress or NoProgress()
    device = resolve_device(config.device)
    dataset = load_dataset(config.dataset, config.data_dir)
    _check_batch_size(config, dataset)
    root = prepare_output_root(config.out)
    evaluation = evaluation_data(dataset, config.batch_size, device)
    summaries = []
    for seed in config.seeds:
        for name in config.estimators:
            training = build_training(config, name, seed, dataset, device)
            progress.start(f"vae {name} K={config.k} seed={seed}", config.steps)
            identity = {
                "problem": "vae",
                "estimator": name,
                "k": config.k,
                "seed": seed,
                "latent": config.latent,
            }
            manifest = {
                "job": "vae",
                "dataset": config.dataset,
                "arch": config.arch,
                "objective_direction": "maximize ELBO",
                "config": asdict(config),
                "data": dict(dataset.metadata),
                "device": str(device),
                "versions": provenance(device),
            }
            relaxation = relaxation_record(config, training.estimator)
            if relaxation is not None:
                manifest["relaxation"] = relaxation
            kind = "" if config.latent == "binary" else f"-categorical{config.latent_vars}x{config.classes}"
            name_hint = f"vae-{config.dataset}-{config.arch}{kind}-{name}-k{config.k}-seed{seed}"
            columns = VAE_METRICS + stat_columns(training.estimator)
            with Run.create(root, name_hint, identity, columns, manifest) as run:
                _train(config, training, evaluation, run, progress)
            summaries.append(run_summary(run.path, run.manifest, columns))
    return summaries


def resume_vae(run_dir: Path | str, progress: Progress | None = None) -> RunSummary:
    """Continue a VAE run from its last checkpoint, in its own directory, with its own config.

    On the same device the rows after the checkpoint are the ones an uninterrupted run writes
    (rows already written past the checkpoint are written again and supersede the old ones).
    A finished run is left as it is.
    """
    progress = progress or NoProgress()
    run_dir, manifest, checkpoint = run_to_resume(run_dir, "vae")
    if manifest["status"] == "finished":
        return run_summary(run_dir, manifest, resumed_columns(run_dir, VAE_METRICS))
    config = vae_config_from_dict(manifest["config"])
    device = resolve_device(config.device)
    dataset = load_dataset(config.dataset, config.data_dir)
    training = build_training(config, manifest["estimator"], manifest["seed"], dataset, device)
    load_into(training, load_checkpoint(checkpoint, device), checkpoint, f"its {config.arch} run")
    evaluation = evaluation_data(dataset, config.batch_size, device)
    progress.start(f"vae {manifest['estimator']} (resumed at {training.step})", config.steps)
    progress.advance(training.step)
    columns = resumed_columns(run_dir, VAE_METRICS + stat_columns(training.estimator))
    with Run.reopen(run_dir, columns, resumed_from=training.step) as run:
        _train(config, training, evaluation, run, progress)
    return run_summary(run.path, run.manifest, columns)


def load_checkpointed_model(path: Path | str, device: torch.device) -> tuple[VAE, VaeConfig, dict]:
    """The model of a VAE checkpoint (a ``checkpoint.pt`` or its run directory), its run's config
    and manifest; the architecture comes from the run's manifest."""
    path = Path(path)
    run_dir, checkpoint = (path, path / CHECKPOINT) if path.is_dir() else (path.parent, path)
    if not checkpoint.exists():
        raise ConfigError(f"no checkpoint at {checkpoint}; give a VAE run directory or its {CHECKPOINT}")
    manifest = read_manifest(run_dir)
    if manifest.get("job") != "vae":
        raise ConfigError(f"{run_dir} is not a VAE run (job {manifest.get('job')!r})")
    config = vae_config_from_dict(manifest["config"])
    dataset = load_dataset(config.dataset, config.data_dir)
    model = build_model(config, manifest["seed"], dataset, device)
    state = load_checkpoint(checkpoint, device)
    load_into(model, state.get("model"), checkpoint, f"the {config.arch} model of its run")
    return model, config, {**manifest, "checkpoint_step": state.get("step")}


def _train(
    config: VaeConfig, training: Training, evaluation: EvaluationData, run: Run, progress: Progress
) -> None:
    model, estimator = training.model, training.estimator
    device = next(model.parameters()).device
    relaxed = estimator.info.relaxation is not None
    if training.step == 0:
        _record(config, training, evaluation, run, estimator.state_stats(), elbo=None, step_seconds=None)
    elbo_sum = torch.zeros((), device=device)  # summed on the device: no sync per step
    stats = StatTrace(estimator)
    busy, busy_steps = 0.0, 0
    while training.step < config.steps:
        start = time.perf_counter()
        x = training.sampler.next_batch()  # [B, P]
        posterior_temperature, prior_temperature = config.temperatures(training.step + 1)
        if relaxed:
            estimator.temperature = posterior_temperature
        output = train_step(
            model,
            estimator,
            x,
            config.k,
            training.train_generator,
            training.encoder_optimizer,
            training.decoder_optimizer,
            training.prior_optimizer,
            prior_temperature=prior_temperature,
            kl=config.kl,
        )
        elbo_sum += output.train_elbo
        stats.add(output.estimate)
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
        bad = non_finite(train_elbo=elbo, **reported, gradient=output.estimate.grad)
        bad = bad or non_finite(parameters=torch.cat([p.detach().flatten() for p in model.parameters()]))
        if bad:
            run.finish("diverged", diverged_at=step, non_finite=bad)
            return
        _record(config, training, evaluation, run, as_floats(reported), float(elbo), busy / busy_steps)
        elbo_sum.zero_()
        busy, busy_steps = 0.0, 0
        if step % config.checkpoint_every == 0 or step == config.steps:
            run.flush()
            write_checkpoint(run.path / CHECKPOINT, training.state_dict())


def _record(
    config: VaeConfig,
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
    _, prior_temperature = config.temperatures(step)  # the estimator's now
    if training.ema and step > 0:
        metrics["grad_var_ema"] = float(training.ema.value())
    if config.var_method in ("resample", "both") and (step % config.var_every == 0 or step == config.steps):
        result = resample_encoder_variance(
            model,
            training.estimator,
            evaluation.snapshot,
            config.k,
            config.var_samples,
            training.measure_generator,
            prior_temperature=prior_temperature,
            kl=config.kl,
        )
        metrics.update(grad_var_resample=result.param_variance, logit_var_resample=result.logit_variance)
    if step % config.eval_every == 0 or step == config.steps:
        metrics["test_bound"] = _bound(model, evaluation.test, config.eval_samples, training.eval_generator)
        metrics["valid_bound"] = _bound(model, evaluation.valid, config.eval_samples, training.eval_generator)
    run.log(step, **metrics)


def relaxation_record(config: VaeConfig, estimator: Estimator) -> dict | None:
    """What a relaxed estimator's run trains, at which temperatures: the manifest's ``relaxation``.

    ``None`` for estimators that do not relax. Temperatures are the starting ones; the trace's
    ``temperature`` column holds the posterior's at each row. Evaluation is never relaxed.
    """
    relaxation = estimator.info.relaxation
    if relaxation is None:
        return None
    annealed = config.anneal != "none"
    if relaxation == "straight-through":
        objective, kl = "discrete ELBO at hard samples, gradient through the relaxed sample", None
    elif config.kl == "relaxed":
        densities = "Concrete" if config.latent == "binary" else "ExpConcrete"
        objective, kl = f"relaxed ELBO ({densities} densities)", "relaxed"
    else:
        objective, kl = "relaxed reconstruction + analytic KL", "analytic"
    return {
        "objective": objective,  # what train_elbo averages
        "kl": kl,
        "posterior_temperature": config.estimator_settings["temperature"],
        "prior_temperature": config.prior_temperature if kl == "relaxed" else None,
        "anneal": config.anneal,
        "anneal_rate": config.anneal_rate if annealed else None,
        "anneal_floor": config.anneal_floor if annealed else None,
        "evaluation": "discrete model: hard samples, importance-weighted bound",
    }


def _bound(model: VAE, images: torch.Tensor, samples: int, generator: torch.Generator) -> float:
    """Mean IWAE bound over ``images`` with ``samples`` importance samples each."""
    total = sum(
        float(iwae_bound(model, chunk, generator, samples).sum()) for chunk in images.split(EVAL_CHUNK)
    )
    return total / images.shape[0]


def _is_row_step(config: VaeConfig, step: int) -> bool:
    every = (config.log_every, config.var_every, config.eval_every, config.checkpoint_every)
    return step == config.steps or any(step % n == 0 for n in every)


def _check_batch_size(config: VaeConfig, dataset: Dataset) -> None:
    rows = dataset.train.shape[0]
    if config.batch_size > rows:
        raise ConfigError(
            f"--batch-size {config.batch_size} exceeds the {rows} training images of {config.dataset}"
        )


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
