"""``dcvbench train --objective path.py:make_model``: train the user's own model with each estimator.

The named file is imported and run (it is the user's code: the command runs it as Python runs any
script); ``make_model()`` returns a :class:`~dcvbench.jobs.user_training.UserModel`. A missing file,
a missing name or a model of the wrong shapes is one line and exit 2, before any run is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dcvbench.cli.app import app, reports_user_errors
from dcvbench.cli.console import STEP_TIME, RichProgress, in_registry_order, number, results_table, stdout
from dcvbench.cli.options import (
    ESTIMATORS,
    MEASUREMENT,
    PROBLEM,
    RUN,
    TRAINING,
    Device,
    Out,
    Quiet,
    Steps,
    Threads,
    estimator_choice,
    estimator_settings,
    warn_unused_options,
    with_estimator_options,
)
from dcvbench.config import UserTrainingConfig

ModelSpec = Annotated[
    str,
    typer.Option(
        "--objective",
        metavar="FILE.py:NAME",
        help="The function returning your model (docs/examples.md); the file is imported and run.",
        rich_help_panel=PROBLEM,
    ),
]


@app.command()
@reports_user_errors
@with_estimator_options("vae")
def train(
    ctx: typer.Context,
    objective: ModelSpec,
    name: Annotated[
        str | None,
        typer.Option(
            help="Names the runs and their group in plot.",
            show_default="the file's stem",
            rich_help_panel=RUN,
        ),
    ] = None,
    estimator: estimator_choice(", ".join(UserTrainingConfig.estimators)) = None,
    k: Annotated[
        int, typer.Option("--k", help="Samples per estimate K.", rich_help_panel=ESTIMATORS)
    ] = UserTrainingConfig.k,
    steps: Steps = UserTrainingConfig.steps,
    lr: Annotated[
        float, typer.Option(help="Adam learning rate of every parameter.", rich_help_panel=TRAINING)
    ] = UserTrainingConfig.lr,
    log_every: Annotated[
        int,
        typer.Option(
            help="Write a row (training objective, stats, s/step) every N steps.", rich_help_panel=MEASUREMENT
        ),
    ] = UserTrainingConfig.log_every,
    eval_every: Annotated[
        int, typer.Option(help="The model's evaluate() every N steps.", rich_help_panel=MEASUREMENT)
    ] = UserTrainingConfig.eval_every,
    seed: Annotated[
        list[int] | None,
        typer.Option(help="Seed (repeatable: one run per seed).", show_default="0", rich_help_panel=RUN),
    ] = None,
    device: Device = UserTrainingConfig.device,
    threads: Threads = UserTrainingConfig.threads,
    out: Out = UserTrainingConfig.out,
    quiet: Quiet = False,
) -> None:
    """Your model (a function returning it): train it with each estimator, tracing what they do."""
    from dcvbench.jobs.user_training import EVAL_PREFIX, run_user_training
    from dcvbench.user_code import load_callable

    make_model = load_callable(objective, "model")
    config = UserTrainingConfig(
        model=objective,
        name=name or Path(objective.rpartition(":")[0]).stem,
        estimators=tuple(estimator or UserTrainingConfig.estimators),
        k=k,
        steps=steps,
        lr=lr,
        log_every=log_every,
        eval_every=eval_every,
        seeds=tuple(seed or UserTrainingConfig.seeds),
        device=device,
        threads=threads,
        estimator_settings=estimator_settings(ctx.params, "vae"),
        out=out,
    )
    warn_unused_options(ctx, config.estimators)
    with RichProgress(quiet) as progress:
        summaries = run_user_training(make_model, config, progress)
    if quiet:
        for summary in summaries:
            print(summary.path)
        return
    metrics = sorted({m for s in summaries for m in s.metrics if m.startswith(EVAL_PREFIX)})
    columns = ("estimator", "seed", "status", "train objective", "grad var (ema)", *metrics, STEP_TIME)
    table = results_table(f"train {config.name}: K={config.k}, {config.steps} steps", columns)
    for s in in_registry_order(summaries):
        m = s.metrics
        table.add_row(
            s.estimator,
            str(s.seed),
            s.status,
            number(m.get("train_objective"), 5),
            number(m.get("grad_var_ema"), 3),
            *(number(m.get(metric), 4) for metric in metrics),
            number(m.get("sec_per_step"), 2),
        )
    stdout.print(table)
    stdout.print(f"runs written under {summaries[0].path.parent}/")
