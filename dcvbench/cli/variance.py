"""``dcvbench variance``: estimators side by side at one fixed point."""

from __future__ import annotations

from typing import Annotated

import pandas as pd
import typer

from dcvbench.cli.app import app, reports_user_errors
from dcvbench.cli.console import RichProgress, number, results_table, stdout
from dcvbench.cli.options import (
    ESTIMATORS,
    MEASUREMENT,
    PROBLEM,
    RUN,
    Device,
    Dim,
    Dtype,
    Latent,
    Out,
    Quiet,
    Target,
    Threads,
    ToyClasses,
    WScale,
    WSeed,
    choices,
    estimator_choice,
    estimator_settings,
    refuse_contradictions,
    refuse_given,
    refuse_target_with_categorical,
    toy_latents,
    toy_problem,
    warn_unused_options,
    with_estimator_options,
)
from dcvbench.config import (
    CHECKPOINT_SAMPLES,
    DEFAULT_K,
    TOY_OBJECTIVES,
    VARIANCE_DEFAULT_ESTIMATORS,
    ToyProblem,
    VarianceConfig,
)
from dcvbench.estimators import estimator_order
from dcvbench.runtime import ConfigError

PROBLEMS = ("toy", "vae")
# Against the exact gradient, each shown ± its standard error (dcvbench.measure.variance.GradientQuality).
QUALITY_COLUMNS = {"bias norm": "bias_norm", "MSE": "mse", "cosine": "cosine"}
# The options of the toy problem and its point: a --checkpoint measures a VAE instead.
TOY_OPTIONS = ("latent", "dim", "classes", "target", "objective", "w_scale", "w_seed", "theta")
# Options that do nothing beside --objective FILE.py:NAME: the user's problem has its own latents and
# logits, in their own dtype and on their own device.
USER_REFUSES = (
    *(name for name in TOY_OPTIONS if name != "objective"),
    *("checkpoint", "exact", "dtype", "device"),
)


def user_objective(objective: str) -> bool:
    """Whether ``--objective`` names the user's ``FILE.py:NAME`` rather than a toy objective."""
    return ":" in objective


def variance_config(ctx: typer.Context) -> VarianceConfig:
    """The configuration of the ``dcvbench variance`` command line parsed into ``ctx``."""
    p = ctx.params
    problem, checkpoint = p["problem"], p["checkpoint"]
    spec = p["objective"] if user_objective(p["objective"]) else None
    if spec is not None:
        why = (
            f"--objective {spec} measures your problem at its own logits, in their dtype and on their device"
        )
        refuse_given(ctx, (*USER_REFUSES, "problem"), why)
    if problem not in PROBLEMS:
        raise ConfigError(f"unknown problem {problem!r}; choose from: toy, vae (with --checkpoint)")
    if problem == "vae" and checkpoint is None:
        raise ConfigError("--problem vae needs --checkpoint: a VAE run directory or its checkpoint.pt")
    if checkpoint is not None:
        why = "--checkpoint measures its run's model with its own latents and temperatures"
        refuse_given(ctx, (*TOY_OPTIONS, "temperature"), why)
    toy = ToyProblem() if spec else toy_problem(ctx)
    if checkpoint is None:
        refuse_target_with_categorical(ctx, toy)
    samples = p["samples"]
    if samples is None:
        samples = CHECKPOINT_SAMPLES if checkpoint else VarianceConfig.samples
    config = VarianceConfig(
        problem=toy,
        theta=p["theta"],
        checkpoint=checkpoint,
        estimators=tuple(p["estimator"] or VARIANCE_DEFAULT_ESTIMATORS[toy.latent]),
        ks=tuple(p["k"]) if p["k"] else None,
        budgets=tuple(p["budget"] or VarianceConfig.budgets),
        samples=samples,
        tune_steps=p["tune_steps"],
        seed=p["seed"],
        device=p["device"],
        dtype=p["dtype"],
        threads=p["threads"],
        estimator_settings=estimator_settings(p, "variance"),
        out=p["out"],
        exact=p["exact"],
        objective=spec,
    )
    refuse_contradictions(ctx, "variance")
    return config


@app.command()
@reports_user_errors
@with_estimator_options("variance")
def variance(
    ctx: typer.Context,
    problem: Annotated[
        str,
        typer.Option(
            metavar=choices(PROBLEMS),
            help="The toy, or a VAE's checkpoint (give --checkpoint).",
            rich_help_panel=PROBLEM,
        ),
    ] = "toy",
    checkpoint: Annotated[
        str | None,
        typer.Option(
            metavar="PATH",
            help="A VAE run directory or its checkpoint.pt: measure there, on its snapshot batch, with "
            "its latents and relaxation settings.",
            rich_help_panel=PROBLEM,
        ),
    ] = VarianceConfig.checkpoint,
    exact: Annotated[
        bool,
        typer.Option(
            "--exact",
            help="At a --checkpoint: the exact gradient, by enumerating every code (at most 2^16), and "
            "each estimator's bias norm, MSE and cosine against it.",
            rich_help_panel=PROBLEM,
        ),
    ] = VarianceConfig.exact,
    latent: Latent = ToyProblem.latent,
    dim: Dim = ToyProblem.dim,
    classes: ToyClasses = ToyProblem.classes,
    target: Target = ToyProblem.target,
    objective: Annotated[
        str,
        typer.Option(
            metavar="NAME|FILE.py:NAME",
            help=f"Toy objective: {', '.join(TOY_OBJECTIVES['binary'])}; categorical latents: "
            f"{' or '.join(TOY_OBJECTIVES['categorical'])}. Or your own problem: FILE.py:NAME, a "
            "function returning (objective, logits[, exact_gradient]); importing FILE runs its code "
            "(docs/measurement.md).",
            rich_help_panel=PROBLEM,
        ),
    ] = ToyProblem.objective,
    w_scale: WScale = ToyProblem.w_scale,
    w_seed: WSeed = ToyProblem.w_seed,
    theta: Annotated[
        str | None,
        typer.Option(
            help="θ for every coordinate, in (0, 1), or 'random' (seeded). Categorical: 'random' (seeded "
            "logits away from uniform) or 'uniform'.",
            show_default="0.5; categorical: uniform",
            rich_help_panel=PROBLEM,
        ),
    ] = VarianceConfig.theta,
    estimator: estimator_choice(
        f"{', '.join(VARIANCE_DEFAULT_ESTIMATORS['binary'])}; "
        f"categorical: {', '.join(VARIANCE_DEFAULT_ESTIMATORS['categorical'])}"
    ) = None,
    k: Annotated[
        list[int] | None,
        typer.Option(
            "--k",
            help="Samples per estimate K (repeatable).",
            show_default=f"{DEFAULT_K} without --budget",
            rich_help_panel=ESTIMATORS,
        ),
    ] = None,
    budget: Annotated[
        list[int] | None,
        typer.Option(
            metavar="EVALS",
            help="Equal cost instead of --k (repeatable): each estimator at the largest K whose estimate "
            "costs at most EVALS evaluations of f.",
            rich_help_panel=ESTIMATORS,
        ),
    ] = None,
    samples: Annotated[
        int | None,
        typer.Option(
            help="Independent estimates per (estimator, K).",
            show_default=f"toy {VarianceConfig.samples}, VAE {CHECKPOINT_SAMPLES}",
            rich_help_panel=MEASUREMENT,
        ),
    ] = None,
    tune_steps: Annotated[
        int,
        typer.Option(
            help="Train each estimator's learned parts (rodeo's network, relax's control, baselines) "
            "for this many estimates at the point, on draws of their own, before measuring; 0: as "
            "built. An estimator whose state a --checkpoint's run saved is measured as it left it.",
            rich_help_panel=MEASUREMENT,
        ),
    ] = VarianceConfig.tune_steps,
    seed: Annotated[int, typer.Option(help="Seed.", rich_help_panel=RUN)] = VarianceConfig.seed,
    device: Device = VarianceConfig.device,
    dtype: Dtype = VarianceConfig.dtype,
    threads: Threads = VarianceConfig.threads,
    out: Out = VarianceConfig.out,
    quiet: Quiet = False,
) -> None:
    """Variance and bias of estimators side by side at one fixed point, on the same random numbers."""
    from dcvbench.jobs.variance import run_variance

    config = variance_config(ctx)
    warn_unused_options(ctx, config.estimators)
    with RichProgress(quiet) as progress:
        study = run_variance(config, progress)
    if quiet:
        print(study.path)
        return
    toy = config.problem
    if config.objective:
        title = f"variance of {config.objective}, {config.samples} draws"
        against_exact = {"max |z|": "bias_max_z", "mean |z|": "bias_mean_z", **QUALITY_COLUMNS}
        extra = {label: name for label, name in against_exact.items() if name in study.table}
    elif config.checkpoint:
        title = f"encoder-gradient variance at {config.checkpoint}, {config.samples} draws"
        extra = {"logit variance": "logit_variance", "logit vs rloo": "logit_variance_ratio"}
        if config.exact:
            extra.update(QUALITY_COLUMNS)
    else:
        where = f"{'θ' if toy.latent == 'binary' else 'π'}={config.theta}"
        title = f"variance at {where}: {toy_latents(toy)}, {toy.objective}, {config.samples} draws"
        extra = {"max |z|": "bias_max_z", "mean |z|": "bias_mean_z", **QUALITY_COLUMNS}
    columns = {"variance": "variance", "vs rloo": "variance_ratio", "variance×evals": "cost_variance"}
    columns.update(extra)
    budget = ("budget",) if config.budgets else ()  # each estimator at its own K within it
    table = results_table(
        title, (*budget, "estimator", "K", "evals", *columns, "s/estimate", "α"), left=("estimator",)
    )
    records = study.table.to_dict("records")
    # As summary.md: by estimator, then K (at equal cost, K grows with the budget).
    for row in sorted(records, key=lambda r: (estimator_order(r["estimator"]), r["k"])):
        alpha_text = "–" if pd.isna(row["alpha_source"]) else f"{row['alpha']:.4g} ({row['alpha_source']})"
        budget_cell = (str(row["budget"]),) if budget else ()
        table.add_row(
            *budget_cell,
            row["estimator"],
            str(row["k"]),
            str(row["evals"]),
            *(_cell(row, name) for name in columns.values()),
            number(row["seconds_per_estimate"], 2),
            alpha_text,
        )
    stdout.print(table)
    stdout.print(f"written to {study.path / 'variance.parquet'}")


def _cell(row: dict, name: str) -> str:
    """A number of the table; a quality measure with its standard error."""
    if name in QUALITY_COLUMNS.values() and not pd.isna(row[name]):
        return f"{number(row[name], 3)} ± {number(row[f'{name}_se'], 2)}"
    return number(row[name], 3)
