"""``dcvbench predict``: structured prediction, the lower half of a digit from its upper half."""

from __future__ import annotations

from typing import Annotated

import typer

from dcvbench.cli.app import app, reports_user_errors
from dcvbench.cli.console import RichProgress, report_model_runs
from dcvbench.cli.options import (
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
    VarEvery,
    VarMethod,
    VarSamples,
    refuse_options_with_resume,
    training_options,
    with_estimator_options,
)
from dcvbench.config import PredictConfig


def predict_config(ctx: typer.Context) -> PredictConfig:
    """The configuration of the ``dcvbench predict`` command line parsed into ``ctx``."""
    p = ctx.params
    return PredictConfig(**training_options(p, "predict", PredictConfig))


@app.command()
@reports_user_errors
@with_estimator_options("predict")
def predict(
    ctx: typer.Context,
    estimator: Annotated[
        list[str] | None,
        typer.Option(
            help=f"Estimator (repeatable: one run each). Default: {', '.join(PredictConfig.estimators)}."
        ),
    ] = None,
    dataset: Dataset = PredictConfig.dataset,
    data_dir: DataDir = None,
    arch: Annotated[
        str,
        typer.Option(
            help=(
                "Input half, binary layers, output half: 392V-240H-392V, 392V-240H-240H-392V, "
                "392V~240H~392V, 392V~240H~240H~392V ('~': the nonlinear block; docs/concrete-paper.md)."
            )
        ),
    ] = PredictConfig.arch,
    k: Annotated[
        int, typer.Option("--k", help="Samples per datum K (m = K for --objective iwae).")
    ] = PredictConfig.k,
    objective: Bound = None,
    steps: Steps = PredictConfig.steps,
    batch_size: Annotated[int, typer.Option(help="Minibatch size.")] = PredictConfig.batch_size,
    lr: Annotated[
        float, typer.Option(help="Adam learning rate of every network.")
    ] = PredictConfig.encoder_lr,
    encoder_lr: Annotated[
        float | None, typer.Option(help="Learning rate of the hidden layers' networks (overrides --lr).")
    ] = None,
    decoder_lr: Annotated[
        float | None, typer.Option(help="Learning rate of the output network (overrides --lr).")
    ] = None,
    log_every: LogEvery = PredictConfig.log_every,
    eval_every: EvalEvery = PredictConfig.eval_every,
    eval_samples: EvalSamples = PredictConfig.eval_samples,
    var_every: VarEvery = PredictConfig.var_every,
    var_method: VarMethod = PredictConfig.var_method,
    var_samples: VarSamples = PredictConfig.var_samples,
    checkpoint_every: CheckpointEvery = PredictConfig.checkpoint_every,
    seed: Seeds = None,
    device: Device = PredictConfig.device,
    anneal: Anneal = PredictConfig.anneal,
    anneal_rate: AnnealRate = PredictConfig.anneal_rate,
    anneal_floor: AnnealFloor = PredictConfig.anneal_floor,
    resume: Resume = None,
    out: Out = PredictConfig.out,
    quiet: Quiet = False,
) -> None:
    """Structured prediction: each estimator trains a stochastic network to draw a digit's lower half."""
    from dcvbench.jobs.predict import resume_predict, run_predict

    if resume is not None:
        refuse_options_with_resume(ctx)
    with RichProgress(quiet) as progress:
        if resume is not None:
            summaries = [resume_predict(resume, progress)]
        else:
            summaries = run_predict(predict_config(ctx), progress)
    report_model_runs("predict", summaries, quiet, "test NLL", -1.0)
