"""``dcvbench predict``: structured prediction, the lower half of a digit from its upper half."""

from __future__ import annotations

from typing import Annotated

import typer

from dcvbench.cli.app import app, reports_user_errors
from dcvbench.cli.console import RichProgress, report_model_runs
from dcvbench.cli.options import (
    ESTIMATORS,
    PROBLEM,
    TRAINING,
    Anneal,
    AnnealFloor,
    AnnealRate,
    Bound,
    CheckpointEvery,
    DataDir,
    Dataset,
    Device,
    EvalEvery,
    EvalSamples,
    LogEvery,
    Out,
    Quiet,
    Resume,
    Seeds,
    Steps,
    Threads,
    VarEvery,
    VarMethod,
    VarSamples,
    estimator_choice,
    refuse_contradictions,
    refuse_lr_overridden,
    refuse_options_with_resume,
    resume_threads,
    training_options,
    warn_unused_options,
    with_estimator_options,
)
from dcvbench.config import PredictConfig


def predict_config(ctx: typer.Context) -> PredictConfig:
    """The configuration of the ``dcvbench predict`` command line parsed into ``ctx``."""
    config = PredictConfig(**training_options(ctx.params, "predict", PredictConfig))
    refuse_lr_overridden(ctx)
    refuse_contradictions(ctx, "predict")
    return config


@app.command()
@reports_user_errors
@with_estimator_options("predict")
def predict(
    ctx: typer.Context,
    estimator: estimator_choice(", ".join(PredictConfig.estimators)) = None,
    k: Annotated[
        int,
        typer.Option(
            "--k", help="Samples per datum K (m = K for --objective iwae).", rich_help_panel=ESTIMATORS
        ),
    ] = PredictConfig.k,
    objective: Bound = None,
    dataset: Dataset = PredictConfig.dataset,
    data_dir: DataDir = None,
    arch: Annotated[
        str,
        typer.Option(
            metavar="ARCH",
            help=(
                "Input half, binary layers, output half: 392V-240H-392V, 392V-240H-240H-392V, "
                "392V~240H~392V, 392V~240H~240H~392V ('~': the nonlinear block; docs/concrete-paper.md)."
            ),
            rich_help_panel=PROBLEM,
        ),
    ] = PredictConfig.arch,
    anneal: Anneal = PredictConfig.anneal,
    anneal_rate: AnnealRate = PredictConfig.anneal_rate,
    anneal_floor: AnnealFloor = PredictConfig.anneal_floor,
    steps: Steps = PredictConfig.steps,
    batch_size: Annotated[
        int, typer.Option(help="Minibatch size.", rich_help_panel=TRAINING)
    ] = PredictConfig.batch_size,
    lr: Annotated[
        float, typer.Option(help="Adam learning rate of every network.", rich_help_panel=TRAINING)
    ] = PredictConfig.encoder_lr,
    encoder_lr: Annotated[
        float | None,
        typer.Option(
            help="Learning rate of the hidden layers' networks.",
            show_default="--lr",
            rich_help_panel=TRAINING,
        ),
    ] = None,
    decoder_lr: Annotated[
        float | None,
        typer.Option(
            help="Learning rate of the output network.", show_default="--lr", rich_help_panel=TRAINING
        ),
    ] = None,
    log_every: LogEvery = PredictConfig.log_every,
    eval_every: EvalEvery = PredictConfig.eval_every,
    eval_samples: EvalSamples = PredictConfig.eval_samples,
    var_every: VarEvery = PredictConfig.var_every,
    var_method: VarMethod = PredictConfig.var_method,
    var_samples: VarSamples = PredictConfig.var_samples,
    seed: Seeds = None,
    device: Device = PredictConfig.device,
    threads: Threads = PredictConfig.threads,
    checkpoint_every: CheckpointEvery = PredictConfig.checkpoint_every,
    resume: Resume = None,
    out: Out = PredictConfig.out,
    quiet: Quiet = False,
) -> None:
    """Structured prediction: each estimator trains a stochastic network to draw a digit's lower half."""
    from dcvbench.jobs.predict import resume_predict, run_predict

    if resume is not None:
        refuse_options_with_resume(ctx)
    else:
        config = predict_config(ctx)
        warn_unused_options(ctx, config.estimators)
    with RichProgress(quiet) as progress:
        if resume is not None:
            summaries = [resume_predict(resume, progress, threads=resume_threads(ctx))]
        else:
            summaries = run_predict(config, progress)
    report_model_runs("predict", summaries, quiet, "test NLL", -1.0)
