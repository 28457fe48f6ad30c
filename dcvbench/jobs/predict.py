"""``dcvbench predict``: structured prediction with each estimator (the Concrete paper's §5.2).

The lower half of a binarised digit from its upper half, through one or two layers of binary units
(:class:`~dcvbench.problems.predict.Predictor`), trained and scored by the shared engine
(:mod:`dcvbench.jobs.trainer`) exactly as the VAE is. The trace's bound columns hold the K-sample
bound on ``log p(x_lower | x_upper)`` with ``--eval-samples`` samples per datum (the test NLL is its
negative); ``train_elbo`` is the mean of ``log p(x_lower | h)`` over the training samples (or of its
relaxation, for ``concrete``), the "m = 1" bound.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dcvbench.config import PredictConfig
from dcvbench.data import Dataset
from dcvbench.estimators import Estimator, start_temperature
from dcvbench.jobs import Progress, RunSummary
from dcvbench.jobs.trainer import ModelJob, resume_job, run_job
from dcvbench.problems.predict import Predictor, test_nll
from dcvbench.runtime import make_generator


class PredictJob(ModelJob):
    """Structured prediction: :class:`~dcvbench.problems.predict.Predictor`, scored by ``−test NLL``."""

    name = "predict"

    def build_model(
        self, config: PredictConfig, seed: int, dataset: Dataset, device: torch.device
    ) -> Predictor:
        generator = make_generator(torch.device("cpu"), seed, "predict", "init")
        return Predictor(config.arch, pixels=dataset.train.shape[1], generator=generator).to(device)

    def bound(
        self, model: Predictor, x: torch.Tensor, samples: int, generator: torch.Generator
    ) -> torch.Tensor:
        return -test_nll(model, x, generator, samples)

    def manifest(self, config: PredictConfig, estimator: Estimator) -> dict:
        entries = {
            "dataset": config.dataset,
            "arch": config.arch,
            "objective": config.bound(estimator.info.name),  # elbo: m = 1; iwae: m = K
            "objective_direction": "maximize log p(x_lower | x_upper)",
            "evaluation": (
                f"test_bound = log (1/S) Σ_s p(x_lower | h_s), S = {config.eval_samples} hard samples of "
                "p(h | x_upper); the test NLL is its negative"
            ),
        }
        if estimator.info.relaxation is not None:
            entries["relaxation"] = {
                "objective": "relaxed log p(x_lower | z): no densities (the prior is the proposal)",
                "posterior_temperature": start_temperature(estimator.info.name, config.estimator_settings),
                "anneal": config.anneal,
                "anneal_rate": config.anneal_rate if config.anneal != "none" else None,
                "anneal_floor": config.anneal_floor if config.anneal != "none" else None,
                "evaluation": "discrete model: hard samples",
            }
        return entries

    def name_hint(self, config: PredictConfig, estimator: str, seed: int) -> str:
        bound = "" if config.objective is None else f"-{config.objective}"
        return f"predict-{config.dataset}-{config.arch}-{estimator}{bound}-k{config.k}-seed{seed}"


def run_predict(config: PredictConfig, progress: Progress | None = None) -> list[RunSummary]:
    """Train one run per (seed, estimator) of ``config``; return their summaries in that order."""
    return run_job(PredictJob(), config, progress)


def resume_predict(
    run_dir: Path | str, progress: Progress | None = None, threads: int | None = None
) -> RunSummary:
    """Continue a structured-prediction run from its last checkpoint."""
    return resume_job(PredictJob(), run_dir, progress, threads)
