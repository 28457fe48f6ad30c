"""``dcvbench vae``: train a VAE with each estimator and measure what it does to learning.

DESIGN §4.2–§4.4; binary latents (one stochastic layer, or a chain of them in the Concrete paper's
architectures) or categorical ones (§3.6, uniform prior) in one :class:`~dcvbench.problems.vae.VAE`,
trained and scored by the shared engine (:mod:`dcvbench.jobs.trainer`); this module says what is the
VAE's: its model, its held-out bound (the importance-weighted bound with hard samples,
:func:`~dcvbench.problems.vae.iwae_bound`), its manifest.

The relaxed estimators (``concrete``, ``st-concrete``: those with an
:attr:`~dcvbench.estimators.EstimatorInfo.relaxation`) train at temperatures that may anneal with
the step (:meth:`VaeConfig.temperatures`); the manifest's ``relaxation`` says what they train, and
its ``objective`` what each estimator trains (``elbo``, or ``iwae``: the K-sample bound).

At equal cost (``budget``), each estimator trains at the largest K whose estimate costs at most the
budget's evaluations of f (:meth:`~dcvbench.config.VaeConfig.run_k`): its manifest's ``k``, beside the
``evals`` an estimate costs and the budget in its ``config`` (whose ``k`` is then null).

``targets="intensities"`` trains and scores on the grey levels as soft Bernoulli targets (the
ReinMax paper's MNIST) instead of binarised images: its bounds are the paper's objective, not a
discrete model's log-likelihood bound, and are never compared with binarised runs' (their runs are
named, and plotted in groups, apart).
"""

from __future__ import annotations

from pathlib import Path

import torch

from dcvbench.checkpoints import CHECKPOINT, load_checkpoint, load_into
from dcvbench.config import VaeConfig, run_config
from dcvbench.data import Dataset, load_dataset
from dcvbench.estimators import Estimator, start_temperature
from dcvbench.jobs import Progress, RunSummary
from dcvbench.jobs.trainer import MODEL_METRICS, ModelJob, evaluation_data, resume_job, run_job
from dcvbench.problems.vae import VAE, iwae_bound
from dcvbench.results import MANIFEST, read_manifest
from dcvbench.runtime import ConfigError, make_generator

VAE_METRICS = MODEL_METRICS  # test_bound / valid_bound: the importance-weighted bound

__all__ = ["VAE_METRICS", "VaeJob", "evaluation_data", "load_checkpointed_model", "resume_vae", "run_vae"]


class VaeJob(ModelJob):
    """The VAE: :class:`~dcvbench.problems.vae.VAE`, scored by the IWAE bound on the discrete model."""

    name = "vae"

    def build_model(self, config: VaeConfig, seed: int, dataset: Dataset, device: torch.device) -> VAE:
        return build_model(config, seed, dataset, device)

    def bound(self, model: VAE, x: torch.Tensor, samples: int, generator: torch.Generator) -> torch.Tensor:
        return iwae_bound(model, x, generator, samples)

    def targets(self, config: VaeConfig) -> str:
        return config.targets

    def manifest(self, config: VaeConfig, estimator: Estimator) -> dict:
        entries = {
            "dataset": config.dataset,
            "arch": config.arch,
            "objective": config.bound(estimator.info.name),  # what this estimator trains: elbo or iwae
            "objective_direction": "maximize ELBO",
        }
        relaxation = relaxation_record(config, estimator)
        if relaxation is not None:
            entries["relaxation"] = relaxation
        return entries

    def name_hint(self, config: VaeConfig, estimator: str, seed: int) -> str:
        kind = "" if config.latent == "binary" else f"-categorical{config.latent_vars}x{config.classes}"
        bound = "" if config.objective is None else f"-{config.objective}"
        targets = "" if config.targets == VaeConfig.targets else f"-{config.targets}"
        size = f"k{config.k}" if config.budget is None else f"budget{config.budget}"  # K: in the manifest
        return f"vae-{config.dataset}{targets}-{config.arch}{kind}-{estimator}{bound}-{size}-seed{seed}"


def build_model(config: VaeConfig, seed: int, dataset: Dataset, device: torch.device) -> VAE:
    """The run's model at initialisation (weights drawn from a generator seeded by the run seed)."""
    # The mean intensity: the expected mean binarised image too, so it serves both --targets.
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


def run_vae(config: VaeConfig, progress: Progress | None = None) -> list[RunSummary]:
    """Train one run per (seed, estimator) of ``config``; return their summaries in that order."""
    return run_job(VaeJob(), config, progress)


def resume_vae(
    run_dir: Path | str, progress: Progress | None = None, threads: int | None = None
) -> RunSummary:
    """Continue a VAE run from its last checkpoint (:func:`~dcvbench.jobs.trainer.resume_job`)."""
    return resume_job(VaeJob(), run_dir, progress, threads)


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
    config = run_config("vae", manifest, run_dir / MANIFEST)
    dataset = load_dataset(config.dataset, config.data_dir)
    model = build_model(config, manifest["seed"], dataset, device)
    state = load_checkpoint(checkpoint, device)
    load_into(model, state.get("model"), checkpoint, f"the {config.arch} model of its run")
    return model, config, {**manifest, "checkpoint_step": state.get("step")}


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
        bound = "K-sample bound" if config.bound(estimator.info.name) == "iwae" else "ELBO"
        layers = ", every stochastic layer relaxed" if config.depth > 1 else ""
        objective, kl = f"relaxed {bound} ({densities} densities{layers})", "relaxed"
    else:
        objective, kl = "relaxed reconstruction + analytic KL", "analytic"
    return {
        "objective": objective,  # what train_elbo averages
        "kl": kl,
        "posterior_temperature": start_temperature(estimator.info.name, config.estimator_settings),
        "prior_temperature": config.prior_temperature if kl == "relaxed" else None,
        "anneal": config.anneal,
        "anneal_rate": config.anneal_rate if annealed else None,
        "anneal_floor": config.anneal_floor if annealed else None,
        "evaluation": "discrete model: hard samples, importance-weighted bound",
    }
