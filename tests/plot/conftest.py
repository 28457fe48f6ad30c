"""Shared helpers of the plot tests: runs written with :class:`dcvbench.results.Run` exactly as the jobs
write them, with metric values chosen so that means and standard errors over seeds can be worked out
by hand."""

from pathlib import Path

import pandas as pd
import pytest

from dcvbench.results import (
    MANIFEST,
    Run,
    now_iso,
    prepare_output_root,
    table_from_records,
    write_json_atomic,
)

TOY_METRICS = ("objective", "grad_var", "bias_max_z", "bias_mean_z", "alpha", "sec_per_step")
VAE_METRICS = ("train_elbo", "test_bound", "valid_bound", "grad_var_ema", "grad_var_resample", "alpha")
VAE_METRICS = (*VAE_METRICS, "logit_var_resample", "sec_per_step")
TOY_ESTIMATORS = {"rloo": 1e-8, "rloo-dcv": 1e-10, "disarm": 2e-8}  # grad_var scale per estimator
VAE_ESTIMATORS = {"rloo": 0.02, "rloo-dcv": 0.01}
REPO = Path(__file__).resolve().parents[2]


def toy_values(estimator: str, seed: int, step: int) -> dict[str, float | None]:
    """The metrics a synthetic toy run logs at ``step`` (grad_var every 10 steps, as a job would)."""
    return {
        "objective": 0.25 + 1e-4 * step * (1 + seed) * (2 if estimator == "rloo-dcv" else 1),
        "grad_var": TOY_ESTIMATORS[estimator] * (1 + seed) / (1 + step) if step % 10 == 0 else None,
        "alpha": -0.01 * step * (1 + seed) if estimator == "rloo-dcv" else None,
        "sec_per_step": None if step == 0 else 0.001 * (1 + seed) * (2 if estimator == "disarm" else 1),
    }


def vae_values(estimator: str, seed: int, step: int) -> dict[str, float | None]:
    evaluated = step % 100 == 0
    return {
        "train_elbo": None
        if step == 0
        else -200.0 + step / 10 + seed + (1 if estimator == "rloo-dcv" else 0),
        "test_bound": -210.0 + step / 10 - seed if evaluated else None,
        "grad_var_resample": VAE_ESTIMATORS[estimator] * (1 + seed) if evaluated else None,
        "grad_var_ema": None if step == 0 else 2 * VAE_ESTIMATORS[estimator],
        "alpha": -0.5 * step / 100 if estimator == "rloo-dcv" else None,
        "sec_per_step": None if step == 0 else 0.01 + 0.001 * seed,
    }


def write_toy(
    root: Path, estimator: str, seed: int, steps=(0, 5, 10, 15, 20), status=None, latent: str | None = None
) -> Path:
    """A toy run; ``latent`` given: as written since categorical latents (else as before them)."""
    identity = {"problem": "toy", "estimator": estimator, "k": 2, "seed": seed, "grad_var_method": "resample"}
    problem = {"objective": "separable", "dim": 8, "target": 0.499}
    if latent is not None:
        identity["latent"] = latent
        problem |= {"latent": latent, "classes": 4 if latent == "categorical" else None}
    config = {"problem": problem, "k": 2, "steps": 20, "lr": 0.01}
    manifest = {"job": "toy", "objective_direction": "maximize", "config": config}
    run = Run.create(
        prepare_output_root(root), f"toy-{estimator}-k2-seed{seed}", identity, TOY_METRICS, manifest
    )
    for step in steps:
        run.log(step, **toy_values(estimator, seed, step))
        run.flush()  # one part per row: lets a test damage a single part
    # Ended as dcvbench ended runs before it merged their parts (Run.finish does now): parts kept.
    run.manifest.update(status=status or "finished", ended=now_iso(), last_step=steps[-1])
    write_json_atomic(run.path / MANIFEST, run.manifest)
    return run.path


def write_vae(root: Path, estimator: str, seed: int, latent: str | None = None) -> Path:
    """A VAE run; ``latent`` given: as written since categorical latents (``latent`` was the bits)."""
    identity = {"problem": "vae", "estimator": estimator, "k": 2, "seed": seed}
    config = {"dataset": "mnist-subset", "arch": "linear", "protocol": "dcv", "latent": 200, "steps": 100}
    if latent is not None:
        identity["latent"] = latent
        categorical = latent == "categorical"
        config |= {
            "latent": latent,
            "latent_vars": 20 if categorical else 200,
            "classes": 10 if categorical else None,
        }
    manifest = {"job": "vae", "dataset": "mnist-subset", "arch": "linear", "config": config}
    with Run.create(
        prepare_output_root(root), f"vae-{estimator}-seed{seed}", identity, VAE_METRICS, manifest
    ) as run:
        for step in range(0, 101, 25):
            run.log(step, **vae_values(estimator, seed, step))
    return run.path


def write_variance(root: Path, seed: int = 3) -> Path:
    records = [
        {
            "problem": "toy",
            "objective": "separable",
            "dim": 8,
            "target": 0.499,
            "theta": "0.7",
            "estimator": name,
            "k": k,
            "evals": k,
            "unbiased": True,
            "variance": variance / k,
            "variance_ratio": variance / base,
            "cost_variance": variance,
            "alpha": -0.5 if name == "rloo-dcv" else None,
            "alpha_source": "optimal" if name == "rloo-dcv" else None,
            "bias_max_z": 2.5,
            # Against the exact gradient: rloo-dcv's estimates are biased here, the others are not.
            "bias_norm": 0.2 if name == "rloo-dcv" else 0.0,
            "bias_norm_se": 0.01,
            "mse": 8 * variance / k,
            "mse_se": 0.1 * variance / k,
            "cosine": 0.25 * k,
            "cosine_se": 0.02,
            "seconds_per_estimate": 1e-4 * k,
            "seed": seed,
        }
        for k in (2, 4)
        for name, variance, base in (("rloo", 4.0, 4.0), ("rloo-dcv", 1.0, 4.0), ("disarm", 3.0, 4.0))
    ]
    manifest = {"job": "variance", "config": {"theta": "0.7", "ks": [2, 4]}}
    with Run.create(
        prepare_output_root(root), f"variance-toy-seed{seed}", {"problem": "toy", "seed": seed}, (), manifest
    ) as run:
        run.write_table("variance.parquet", table_from_records(records))
    return run.path


@pytest.fixture
def runs(tmp_path) -> Path:
    """Toy (3 estimators × 2 seeds, rloo-dcv seed 1 interrupted at step 10), VAE, a variance study."""
    root = tmp_path / "results"
    root.mkdir()
    for estimator in TOY_ESTIMATORS:
        for seed in (0, 1):
            if estimator == "rloo-dcv" and seed == 1:
                write_toy(root / "toy", estimator, seed, steps=(0, 5, 10), status="interrupted")
            else:
                write_toy(root / "toy", estimator, seed)
    for estimator in VAE_ESTIMATORS:
        for seed in (0, 1):
            write_vae(root / "nested" / "vae", estimator, seed)
    write_variance(root / "variance")
    return root


EXPECTED_FIGURES = {
    "toy-separable-d8-k2-grad_var.png",
    "toy-separable-d8-k2-objective.png",
    "toy-separable-d8-k2-alpha.png",
    "toy-separable-d8-k2-sec_per_step.png",
    "vae-mnist-subset-linear-k2-grad_var_resample.png",
    "vae-mnist-subset-linear-k2-grad_var_ema.png",
    "vae-mnist-subset-linear-k2-train_elbo.png",
    "vae-mnist-subset-linear-k2-test_bound.png",
    "vae-mnist-subset-linear-k2-alpha.png",
    "vae-mnist-subset-linear-k2-sec_per_step.png",
    "variance-toy-separable-d8-theta0.7-ratio.png",
    "variance-toy-separable-d8-theta0.7-cost.png",
    "variance-toy-separable-d8-theta0.7-mse.png",
    "variance-toy-separable-d8-theta0.7-cosine.png",
}


def row_where(frame: pd.DataFrame, **where) -> pd.Series:
    mask = pd.Series(True, index=frame.index)
    for column, value in where.items():
        mask &= frame[column] == value
    (index,) = frame.index[mask]
    return frame.loc[index]
