"""``dcvbench toy``: the toy problem with an exact gradient."""

from __future__ import annotations

from typing import Annotated

import typer

from dcvbench.cli.app import app, reports_user_errors
from dcvbench.cli.console import RichProgress, number, results_table, stdout
from dcvbench.cli.options import (
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
    ToyClasses,
    WScale,
    WSeed,
    estimator_settings,
    refuse_options_with_resume,
    refuse_target_with_categorical,
    toy_latents,
    toy_problem,
    with_estimator_options,
)
from dcvbench.config import TOY_DEFAULT_ESTIMATORS, ToyConfig, ToyProblem
from dcvbench.estimators import REFERENCE_ESTIMATOR


def toy_config(ctx: typer.Context) -> ToyConfig:
    """The configuration of the ``dcvbench toy`` command line parsed into ``ctx``."""
    p = ctx.params
    problem = toy_problem(ctx)
    refuse_target_with_categorical(ctx, problem)
    return ToyConfig(
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
        estimator_settings=estimator_settings(p, "toy"),
        checkpoint_every=p["checkpoint_every"],
        out=p["out"],
    )


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
    k: Annotated[int, typer.Option("--k", help="Samples per estimate K.")] = ToyConfig.k,
    estimator: Annotated[
        list[str] | None,
        typer.Option(
            help=f"Estimator (repeatable). Default: {', '.join(TOY_DEFAULT_ESTIMATORS['binary'])}; "
            f"categorical: {', '.join(TOY_DEFAULT_ESTIMATORS['categorical'])}."
        ),
    ] = None,
    steps: Annotated[int, typer.Option(help="Optimisation steps.")] = ToyConfig.steps,
    lr: Annotated[float, typer.Option(help="RMSprop learning rate for the logits.")] = ToyConfig.lr,
    maximize: Annotated[
        bool, typer.Option("--maximize/--minimize", help="Direction (published: maximise).")
    ] = ToyConfig.maximize,
    log_every: Annotated[
        int, typer.Option(help="Record the exact objective every N steps.")
    ] = ToyConfig.log_every,
    var_every: Annotated[
        int, typer.Option(help="Measure variance and bias every N steps.")
    ] = ToyConfig.var_every,
    var_samples: Annotated[
        int, typer.Option(help="Independent estimates per variance measurement.")
    ] = ToyConfig.var_samples,
    seed: Annotated[list[int] | None, typer.Option(help="Seed (repeatable: one run per seed).")] = None,
    device: Device = ToyConfig.device,
    dtype: Dtype = ToyConfig.dtype,
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
            summaries = [resume_toy(resume, progress)]
        title = f"toy: resumed {summaries[0].run_id}"
    else:
        config = toy_config(ctx)
        with RichProgress(quiet) as progress:
            summaries = run_toy(config, progress)
        problem = config.problem
        title = f"toy: {toy_latents(problem)}, {problem.objective}, K={config.k}, {config.steps} steps"
    if quiet:
        for summary in summaries:
            print(summary.path)
        return
    reference = {
        (s.seed, s.k): s.metrics.get("grad_var") for s in summaries if s.estimator == REFERENCE_ESTIMATOR
    }
    columns = ("estimator", "seed", "status", "final E f", "final grad var", "vs rloo", "s/step")
    table = results_table(title, columns)
    for s in summaries:
        variance = s.metrics.get("grad_var")
        base = reference.get((s.seed, s.k))
        ratio = variance / base if variance is not None and base else None
        table.add_row(
            s.estimator,
            str(s.seed),
            s.status,
            number(s.metrics.get("objective"), 7),
            number(variance, 3),
            number(ratio, 3),
            number(s.metrics.get("sec_per_step"), 2),
        )
    stdout.print(table)
    stdout.print(f"runs written under {summaries[0].path.parent}/")
