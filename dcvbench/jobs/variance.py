"""``dcvbench variance``: all chosen estimators at one fixed point, side by side.

The point is either the toy at a fixed ``θ`` (for categorical latents: uniform class probabilities, or
seeded random logits away from them) or a VAE checkpoint with a fixed minibatch (the run's variance
snapshot batch), where the relaxed estimators use the run's own temperatures at that step and its KL
variant. For each K and each estimator, ``--samples`` independent estimates are
drawn there (vectorised, see :mod:`dcvbench.measure.variance`) and summarised in one row of
``variance.parquet``. Estimators at the same K draw from generators in the same state, so those
whose noise has the same shape see the same random numbers (paired comparisons).

``rloo-dcv`` without a fixed ``--alpha`` is evaluated at the variance-optimal ``α*`` of that point,
estimated from a separate set of draws (``alpha_source = "optimal"`` in the table).

Where the exact gradient is known — the toys, and with ``exact`` a VAE checkpoint whose latent space
is small enough to enumerate (:mod:`dcvbench.measure.exact`) — the same draws give each estimator's
quality against it (:class:`~dcvbench.measure.variance.GradientQuality`): ``bias_norm``, ``mse`` and
``cosine``, each with its ``_se``; at a checkpoint, of the logit gradient over all rows (``g / B``, as
``logit_variance``). Without the exact gradient those columns are absent.

Estimators with learned state (RELAX's and REBAR's control, NVIL's baselines, rloo-dcv's α) are
measured as built, except at a VAE checkpoint of a run that trained the same estimator: there the
run's learned state is loaded from the checkpoint, so the variance is that of the trained estimator
(``estimator_state`` is ``"checkpoint"`` or ``"fresh"``; null for estimators without state).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
import torch

from dcvbench.checkpoints import CHECKPOINT, load_checkpoint, load_into
from dcvbench.config import VarianceConfig, check_estimators, theta_probability
from dcvbench.estimators import (
    REFERENCE_ESTIMATOR,
    ControlVariateEstimator,
    Estimator,
    build_estimator,
    estimator_info,
)
from dcvbench.jobs import NoProgress, Progress
from dcvbench.jobs.toy import make_toy
from dcvbench.measure.exact import check_enumerable, exact_logit_gradient
from dcvbench.measure.vae_variance import resample_encoder_variance
from dcvbench.measure.variance import optimal_alpha, resample_variance
from dcvbench.objectives import ProblemShape
from dcvbench.problems.categorical_toy import random_categorical_logits
from dcvbench.results import Run, prepare_output_root, table_from_records
from dcvbench.runtime import (
    derive_seed,
    make_generator,
    provenance,
    resolve_device,
    resolve_dtype,
    torch_threads,
)

WARMUP_DRAWS = 4  # one small call first, so one-off start-up costs stay out of the timings


@dataclass(frozen=True)
class VarianceStudy:
    run_id: str
    path: Path
    table: pd.DataFrame


class FixedPoint(Protocol):
    """Where a study measures: what it says about itself, α*, and one estimator's statistics."""

    problem: str
    shape: ProblemShape  # what estimators are built for here
    settings: Mapping[str, Any]  # what they are built with here (option name → value)

    def context(self) -> dict: ...

    def optimal_alpha(
        self, estimator: ControlVariateEstimator, k: int, draws: int, generator: torch.Generator
    ) -> float: ...

    def measure(
        self,
        estimator: Estimator,
        k: int,
        draws: int,
        generator: torch.Generator,
        on_draws: Callable[[int], None],
    ) -> dict: ...

    def restore(self, name: str, estimator: Estimator) -> bool:
        """Load the learned state this point holds for estimator ``name``; whether it did."""
        ...


class ToyPoint:
    """The toy at its study logits ``[1, *latent]`` (:func:`study_logits`), with its exact gradient
    for the bias and the quality columns (:class:`~dcvbench.measure.variance.GradientQuality`)."""

    problem = "toy"

    def __init__(self, config: VarianceConfig, device: torch.device):
        dtype = resolve_dtype(config.dtype)
        self.config = config
        toy = make_toy(config.problem, device, dtype)
        self.objective = toy.objective
        self.logits = study_logits(config, device, dtype)
        self.shape = config.problem.shape
        self.settings = config.estimator_settings
        self.exact = toy.exact_gradient(self.logits)

    def context(self) -> dict:
        problem = self.config.problem
        binary = problem.latent == "binary"
        return {
            "problem": "toy",
            "latent": problem.latent,
            "classes": problem.classes,
            "objective": problem.objective,
            "dim": problem.dim,
            "target": problem.target if binary else None,  # the categorical objectives draw theirs
            "theta": self.config.theta,
        }

    def optimal_alpha(self, estimator, k, draws, generator) -> float:
        return optimal_alpha(estimator, self.logits, self.objective, k, draws, generator)

    def measure(self, estimator, k, draws, generator, on_draws) -> dict:
        resample_variance(estimator, self.logits, self.objective, k, WARMUP_DRAWS, _warmup(self.logits))
        result = resample_variance(
            estimator, self.logits, self.objective, k, draws, generator, on_draws, exact=self.exact
        )
        z = result.bias_z(self.exact)
        return {
            "variance": result.variance,
            "bias_max_z": float(z.max()),
            "bias_mean_z": float(z.mean()),
            **asdict(result.errors.quality),
            "seconds_per_estimate": result.seconds_per_estimate,
        }

    def restore(self, name, estimator) -> bool:
        return False  # a toy point is not a run: every estimator is measured as built


class VaePoint:
    """A VAE checkpoint and its run's fixed snapshot minibatch; the variance is the encoder's. With
    ``exact`` (an enumerable latent space), the quality columns of the logit gradient ``g / B``."""

    problem = "vae"

    def __init__(self, config: VarianceConfig, device: torch.device):
        from dcvbench.data import load_dataset
        from dcvbench.jobs.vae import evaluation_data, load_checkpointed_model

        self.model, run_config, self.manifest = load_checkpointed_model(config.checkpoint, device)
        path = Path(config.checkpoint)
        self.checkpoint = path / CHECKPOINT if path.is_dir() else path
        # The run's estimator and its learned state (λ, s, ψ; baselines; α) as the checkpoint saved it.
        self.estimator_state = load_checkpoint(self.checkpoint, device).get("estimator")
        dataset = load_dataset(run_config.dataset, run_config.data_dir)
        self.run_config = run_config
        # The run's own targets: binarised pixels, or the intensities themselves.
        self.x = evaluation_data(
            dataset, run_config.batch_size, device, run_config.targets
        ).snapshot  # [B, P]
        with torch.no_grad():
            self.logits = self.model.encode(self.x)  # [B, *latent]
        self.shape = self.model.problem_shape
        # The relaxation as the run trained it at this step: its temperatures (annealed or not), its KL;
        # a run whose estimator has no temperature leaves the run's --temperature (None: each its own).
        step, trained = self.manifest["checkpoint_step"], self.manifest["estimator"]
        posterior, prior = run_config.temperatures(step, trained)
        if posterior is None:
            posterior = run_config.estimator_settings["temperature"]
        self.settings = {**config.estimator_settings, "temperature": posterior}
        # The bound a multi-sample-capable estimator trains: the run's --objective (else the ELBO).
        self.relaxation = {
            "prior_temperature": prior,
            "kl": run_config.kl,
            "bound": run_config.objective or "elbo",
        }
        # With --exact, the truth the quality columns compare the logit gradient with, by enumeration.
        self.exact = None
        if config.exact:
            check_enumerable(self.model)
            self.exact = exact_logit_gradient(self.model, self.x, **self.relaxation)  # [B, *latent]

    def context(self) -> dict:
        return {
            "problem": "vae",
            "latent": self.run_config.latent,
            "latent_vars": self.run_config.latent_vars,
            "classes": self.run_config.classes,
            "dataset": self.run_config.dataset,
            "arch": self.run_config.arch,
            "checkpoint_run": self.manifest["run_id"],
            "checkpoint_step": self.manifest["checkpoint_step"],
        }

    def optimal_alpha(self, estimator, k, draws, generator) -> float:
        objective = self.model.objective(
            self.x, self.logits, generative_grads=False, generator=generator, **self.relaxation
        )
        return optimal_alpha(estimator, self.logits, objective, k, draws, generator)

    def measure(self, estimator, k, draws, generator, on_draws) -> dict:
        model, x = self.model, self.x
        resample_encoder_variance(model, estimator, x, k, WARMUP_DRAWS, _warmup(x), **self.relaxation)
        result = resample_encoder_variance(
            model, estimator, x, k, draws, generator, **self.relaxation, on_draws=on_draws, exact=self.exact
        )
        quality = {} if result.logit_errors is None else asdict(result.logit_errors.quality)
        return {
            "variance": result.param_variance,
            "logit_variance": result.logit_variance,
            **quality,
            "seconds_per_estimate": result.seconds_per_estimate,
        }

    def restore(self, name, estimator) -> bool:
        if name != self.manifest["estimator"] or self.estimator_state is None:
            return False
        load_into(estimator, self.estimator_state, self.checkpoint, f"the {name} estimator of its run")
        return True


def study_logits(config: VarianceConfig, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The toy's point: ``η = logit(θ)`` ``[1, D]``, θ constant or seeded-random in (0.05, 0.95);
    for categorical latents ``[1, N, C]``, zero (uniform) or seeded random logits in ``[−3, 3]``
    (:func:`~dcvbench.problems.categorical_toy.random_categorical_logits`)."""
    dim = config.problem.dim
    if config.problem.latent == "categorical":
        classes = config.problem.classes
        if config.theta == "uniform":
            return torch.zeros(1, dim, classes, device=device, dtype=dtype)
        seed = derive_seed(config.seed, "variance", "theta")
        return random_categorical_logits(dim, classes, seed=seed, device=device, dtype=dtype)
    theta = theta_probability(config.theta)
    if theta is None:
        generator = make_generator(torch.device("cpu"), config.seed, "variance", "theta")
        probs = 0.05 + 0.9 * torch.rand(1, dim, generator=generator, dtype=torch.float64)
    else:
        probs = torch.full((1, dim), theta, dtype=torch.float64)
    return torch.logit(probs).to(device=device, dtype=dtype)


def run_variance(config: VarianceConfig, progress: Progress | None = None) -> VarianceStudy:
    """Measure every (K, estimator) of ``config`` at its point, with ``config.threads`` torch
    threads; write and return the table."""
    progress = progress or NoProgress()
    with torch_threads(config.threads):
        device = resolve_device(config.device)
        point: FixedPoint = VaePoint(config, device) if config.checkpoint else ToyPoint(config, device)
        if config.checkpoint:  # the run's latent type is known only now
            for k in config.ks:
                check_estimators(config.estimators, k, "vae", point.shape.latent_type)
        root = prepare_output_root(config.out)
        manifest = {
            "job": "variance",
            "config": asdict(config),
            "point": point.context(),
            "device": str(device),
            "versions": provenance(device),
        }
        identity = {"problem": point.problem, "seed": config.seed}
        kind = "" if point.shape.latent_type == "binary" else "-categorical"
        with Run.create(
            root, f"variance-{point.problem}{kind}-seed{config.seed}", identity, (), manifest
        ) as run:
            records = []
            measured_at = {k: _with_reference(config.estimators, k) for k in config.ks}
            progress.plan(len(config.ks), sum(map(len, measured_at.values())) * config.samples)
            for k, measured in measured_at.items():
                progress.start(f"variance K={k}: {len(measured)} estimators", len(measured) * config.samples)
                rows = {}
                for name in measured:
                    rows[name] = _measure(config, point, name, k, device, progress.advance)
                reference = rows.get(REFERENCE_ESTIMATOR)
                for name in config.estimators:
                    row = rows[name]
                    for column in ("variance", "logit_variance"):
                        if column in row:
                            ratio = row[column] / reference[column] if reference else None
                            row[column.replace("variance", "variance_ratio")] = ratio
                    records.append({"run_id": run.run_id, **point.context(), **row})
            table = table_from_records(records)
            run.write_table("variance.parquet", table)
        return VarianceStudy(run.run_id, run.path, table.to_pandas())


def _with_reference(names: tuple[str, ...], k: int) -> list[str]:
    """The estimators to measure: the chosen ones, plus ``rloo`` as reference where K allows."""
    if REFERENCE_ESTIMATOR in names or k < estimator_info(REFERENCE_ESTIMATOR).min_k:
        return list(names)
    return [*names, REFERENCE_ESTIMATOR]


def _measure(
    config: VarianceConfig,
    point: FixedPoint,
    name: str,
    k: int,
    device: torch.device,
    on_draws: Callable[[int], None],
) -> dict:
    info = estimator_info(name)
    estimator = build_estimator(name, point.settings, point.shape).to(device)
    restored = point.restore(name, estimator)
    alpha_source = None
    if isinstance(estimator, ControlVariateEstimator):
        alpha_source = "fixed"
        if config.estimator_settings["alpha"] is None:
            tune_generator = make_generator(device, config.seed, "variance", "tune", k)
            estimator.set_alpha(point.optimal_alpha(estimator, k, config.samples, tune_generator))
            alpha_source = "optimal"
    generator = make_generator(device, config.seed, "variance", k)
    measured = point.measure(estimator, k, config.samples, generator, on_draws)
    evals = info.evals(k)
    return {
        "estimator": name,
        "k": k,
        "evals": evals,
        "unbiased": info.unbiased,
        **measured,
        "cost_variance": measured["variance"] * evals,
        "alpha": float(estimator.alpha.detach()) if alpha_source else None,
        "alpha_source": alpha_source,
        "estimator_state": ("checkpoint" if restored else "fresh") if estimator.state_dict() else None,
        "samples": config.samples,
        "seed": config.seed,
    }


def _warmup(like: torch.Tensor) -> torch.Generator:
    """A throw-away stream for the warm-up call, so the measured draws do not depend on it."""
    return torch.Generator(device=like.device).manual_seed(0)
