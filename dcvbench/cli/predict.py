"""``dcvbench predict``: structured prediction, the lower half of a digit from its upper half."""

from __future__ import annotations

from typing import Annotated

import typer

from dcvbench.cli.app import app, reports_user_errors
from dcvbench.cli.console import RichProgress, number, results_table, stdout
from dcvbench.cli.options import (
    CheckpointEvery,
    Device,
    Out,
    Quiet,
    Resume,
    estimator_settings,
    refuse_options_with_resume,
    with_estimator_options,
)
from dcvbench.config import PredictConfig


def predict_config(ctx: typer.Context) -> PredictConfig:
    """The configuration of the ``dcvbench predict`` command line parsed into ``ctx``."""
    p = ctx.params
    return PredictConfig(
        dataset=p["dataset"],
        data_dir=p["data_dir"],
        arch=p["arch"],
        k=p["k"],
        estimators=tuple(p["estimator"] or PredictConfig.estimators),
        objective=p["objective"],
        steps=p["steps"],
        batch_size=p["batch_size"],
        encoder_lr=p["lr"] if p["encoder_lr"] is None else p["encoder_lr"],
        decoder_lr=p["lr"] if p["decoder_lr"] is None else p["decoder_lr"],
        log_every=p["log_every"],
        eval_every=p["eval_every"],
        eval_samples=p["eval_samples"],
        var_every=p["var_every"],
        var_method=p["var_method"],
        var_samples=p["var_samples"],
        checkpoint_every=p["checkpoint_every"],
        seeds=tuple(p["seed"] or PredictConfig.seeds),
        device=p["device"],
        estimator_settings=estimator_settings(p, "predict"),
        anneal=p["anneal"],
        anneal_rate=p["anneal_rate"],
        anneal_floor=p["anneal_floor"],
        out=p["out"],
    )


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
    dataset: Annotated[
        str, typer.Option(help="mnist-subset (embedded, default), mnist, fashion-mnist or omniglot.")
    ] = PredictConfig.dataset,
    data_dir: Annotated[str | None, typer.Option(help="Directory of the data set's files.")] = None,
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
    objective: Annotated[
        str | None,
        typer.Option(
            help=(
                "elbo (E log p(x_lower|h), m = 1) or iwae (log (1/K) Σ p(x_lower|h_k), m = K: vimco, "
                "concrete). Default: each estimator's own (vimco: iwae; the rest: elbo)."
            )
        ),
    ] = None,
    steps: Annotated[int, typer.Option(help="Training steps.")] = PredictConfig.steps,
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
    log_every: Annotated[
        int, typer.Option(help="Write a row (training bound, α, s/step) every N steps.")
    ] = PredictConfig.log_every,
    eval_every: Annotated[
        int, typer.Option(help="Held-out bounds every N steps.")
    ] = PredictConfig.eval_every,
    eval_samples: Annotated[
        int, typer.Option(help="Samples per datum of the held-out bound (the test NLL's).")
    ] = PredictConfig.eval_samples,
    var_every: Annotated[
        int, typer.Option(help="Resample variance every N steps.")
    ] = PredictConfig.var_every,
    var_method: Annotated[
        str, typer.Option(help="ema, resample or both (see README).")
    ] = PredictConfig.var_method,
    var_samples: Annotated[
        int, typer.Option(help="Estimates drawn for the resample variance.")
    ] = PredictConfig.var_samples,
    checkpoint_every: CheckpointEvery = PredictConfig.checkpoint_every,
    seed: Annotated[list[int] | None, typer.Option(help="Seed (repeatable: one run per seed).")] = None,
    device: Device = PredictConfig.device,
    anneal: Annotated[
        str, typer.Option(help="concrete, st-concrete: none, or exp: λ_t = max(floor, λ_0·exp(−rate·t)).")
    ] = PredictConfig.anneal,
    anneal_rate: Annotated[
        float, typer.Option(help="--anneal exp: decay rate per step.")
    ] = PredictConfig.anneal_rate,
    anneal_floor: Annotated[
        float, typer.Option(help="--anneal exp: the lowest temperature.")
    ] = PredictConfig.anneal_floor,
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
    if quiet:
        for summary in summaries:
            print(summary.path)
        return
    columns = ("estimator", "K", "seed", "status", "train bound", "test NLL", "grad var (resample)")
    table = results_table("predict", (*columns, "grad var (ema)", "α", "s/step"))
    for s in summaries:
        m = s.metrics
        bound = m.get("test_bound")
        table.add_row(
            s.estimator,
            str(s.k),
            str(s.seed),
            s.status,
            number(m.get("train_elbo"), 5),
            number(None if bound is None else -bound, 5),
            number(m.get("grad_var_resample"), 3),
            number(m.get("grad_var_ema"), 3),
            number(m.get("alpha"), 3),
            number(m.get("sec_per_step"), 2),
        )
    stdout.print(table)
    stdout.print(f"runs written under {summaries[0].path.parent}/")
