"""``dcvbench toy``: the toy problem with an exact gradient."""

from __future__ import annotations

from typing import Annotated

import typer

from dcvbench.cli.app import app, reports_user_errors
from dcvbench.cli.console import RichProgress, report_toy_runs
from dcvbench.cli.options import (
    ESTIMATORS,
    MEASUREMENT,
    RUN,
    TRAINING,
    CheckpointEvery,
    Device,
    Dim,
    Dtype,
    Latent,
    Objective,
    Out,
    Quiet,
    Resume,
    Target,
    Threads,
    ToyClasses,
    WScale,
    WSeed,
    estimator_choice,
    estimator_settings,
    refuse_contradictions,
    refuse_options_with_resume,
    refuse_target_with_categorical,
    resume_threads,
    toy_latents,
    toy_problem,
    warn_unused_options,
    with_estimator_options,
)
from dcvbench.config import TOY_DEFAULT_ESTIMATORS, ToyConfig, ToyProblem


def toy_config(ctx: typer.Context) -> ToyConfig:
    """The configuration of the ``dcvbench toy`` command line parsed into ``ctx``."""
    p = ctx.params
    problem = toy_problem(ctx)
    refuse_target_with_categorical(ctx, problem)
    config = ToyConfig(
        problem=problem,
        estimators=tuple(p["estimator"] or TOY_DEFAULT_ESTIMATORS[problem.latent]),
        k=p["k"],
        steps=p["steps"],
        lr=p["lr"],
        maximize=p["maximize"],
        log_every=p["log_every"],
        var_every=p["var_every"],
        var_samples=p["var_samples"],
        seeds=tuple(p["seed"] or ToyConfig.seeds),
        device=p["device"],
        dtype=p["dtype"],
        threads=p["threads"],
        estimator_settings=estimator_settings(p, "toy"),
        checkpoint_every=p["checkpoint_every"],
        out=p["out"],
    )
    refuse_contradictions(ctx, "toy")
    return config


@app.command()
@reports_user_errors
@with_estimator_options("toy")
def toy(
    ctx: typer.Context,
    latent: Latent = ToyProblem.latent,
    dim: Dim = ToyProblem.dim,
    classes: ToyClasses = ToyProblem.classes,
    target: Target = ToyProblem.target,
    objective: Objective = ToyProblem.objective,
    w_scale: WScale = ToyProblem.w_scale,
    w_seed: WSeed = ToyProblem.w_seed,
    estimator: estimator_choice(
        f"{', '.join(TOY_DEFAULT_ESTIMATORS['binary'])}; "
        f"categorical: {', '.join(TOY_DEFAULT_ESTIMATORS['categorical'])}"
    ) = None,
    k: Annotated[
        int, typer.Option("--k", help="Samples per estimate K.", rich_help_panel=ESTIMATORS)
    ] = ToyConfig.k,
    steps: Annotated[
        int, typer.Option(help="Optimisation steps.", rich_help_panel=TRAINING)
    ] = ToyConfig.steps,
    lr: Annotated[
        float, typer.Option(help="RMSprop learning rate for the logits.", rich_help_panel=TRAINING)
    ] = ToyConfig.lr,
    maximize: Annotated[
        bool,
        typer.Option(
            "--maximize/--minimize", help="Direction (published: maximise).", rich_help_panel=TRAINING
        ),
    ] = ToyConfig.maximize,
    log_every: Annotated[
        int, typer.Option(help="Record the exact objective every N steps.", rich_help_panel=MEASUREMENT)
    ] = ToyConfig.log_every,
    var_every: Annotated[
        int, typer.Option(help="Measure variance and bias every N steps.", rich_help_panel=MEASUREMENT)
    ] = ToyConfig.var_every,
    var_samples: Annotated[
        int,
        typer.Option(help="Independent estimates per variance measurement.", rich_help_panel=MEASUREMENT),
    ] = ToyConfig.var_samples,
    seed: Annotated[
        list[int] | None,
        typer.Option(
            help="Seed (repeatable: one run per seed).",
            show_default=", ".join(map(str, ToyConfig.seeds)),
            rich_help_panel=RUN,
        ),
    ] = None,
    device: Device = ToyConfig.device,
    dtype: Dtype = ToyConfig.dtype,
    threads: Threads = ToyConfig.threads,
    checkpoint_every: CheckpointEvery = ToyConfig.checkpoint_every,
    resume: Resume = None,
    out: Out = ToyConfig.out,
    quiet: Quiet = False,
) -> None:
    """Toy problem with an exact gradient: optimise with each estimator, tracing variance and bias."""
    from dcvbench.jobs.toy import resume_toy, run_toy

    if resume is not None:
        refuse_options_with_resume(ctx)
        with RichProgress(quiet) as progress:
            summaries = [resume_toy(resume, progress, threads=resume_threads(ctx))]
        title = f"toy: resumed {summaries[0].run_id}"
    else:
        config = toy_config(ctx)
        warn_unused_options(ctx, config.estimators)
        with RichProgress(quiet) as progress:
            summaries = run_toy(config, progress)
        problem = config.problem
        title = f"toy: {toy_latents(problem)}, {problem.objective}, K={config.k}, {config.steps} steps"
    report_toy_runs(title, summaries, quiet)
