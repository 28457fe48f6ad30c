"""``dcvbench vae``: train a VAE with binary or categorical latents."""

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
    Latent,
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
from dcvbench.config import CLASSES, LATENT_BITS, VARIABLES, VaeConfig


def vae_config(ctx: typer.Context) -> VaeConfig:
    """The configuration of the ``dcvbench vae`` command line parsed into ``ctx``; options left out
    (``None``) take the protocol's value."""
    p = ctx.params
    return VaeConfig.for_protocol(
        p["protocol"],
        **training_options(p, "vae", VaeConfig),
        latent=p["latent"],
        latent_vars=p["latent_vars"],
        classes=p["classes"],
        learn_prior=p["learn_prior"],
        prior_lr=p["prior_lr"],
        center_inputs=p["center_inputs"],
        init_output_bias=p["init_output_bias"],
        prior_temperature=p["prior_temperature"],
        kl=p["kl"],
    )


@app.command()
@reports_user_errors
@with_estimator_options("vae")
def vae(
    ctx: typer.Context,
    estimator: Annotated[
        list[str] | None,
        typer.Option(
            help=f"Estimator (repeatable: one run each). Default: {', '.join(VaeConfig.estimators)}."
        ),
    ] = None,
    dataset: Dataset = VaeConfig.dataset,
    data_dir: DataDir = None,
    arch: Annotated[
        str,
        typer.Option(
            help=(
                "linear, nonlinear, or the Concrete paper's names: 200H-784V (= linear), 200H-200H-784V, "
                "200H~784V (= nonlinear), 200H~200H~784V (two stochastic layers; docs/concrete-paper.md)."
            )
        ),
    ] = VaeConfig.arch,
    latent: Latent = VaeConfig.latent,
    latent_vars: Annotated[
        int | None,
        typer.Option(
            help=f"Latent variables: D bits or N categorical ones (default {LATENT_BITS} or {VARIABLES})."
        ),
    ] = None,
    classes: Annotated[
        int | None,
        typer.Option(help=f"Categorical latents: classes per variable C (default {CLASSES}); uniform prior."),
    ] = None,
    k: Annotated[int, typer.Option("--k", help="Samples per datum K.")] = VaeConfig.k,
    objective: Bound = None,
    protocol: Annotated[
        str, typer.Option(help="dcv (batch 100, Adam 1e-3, fixed prior) or disarm (batch 50, Adam 1e-4, …).")
    ] = VaeConfig.protocol,
    steps: Steps = VaeConfig.steps,
    batch_size: Annotated[int | None, typer.Option(help="Minibatch size (default: the protocol's).")] = None,
    lr: Annotated[float | None, typer.Option(help="Adam learning rate of encoder and decoder.")] = None,
    encoder_lr: Annotated[float | None, typer.Option(help="Encoder learning rate (overrides --lr).")] = None,
    decoder_lr: Annotated[float | None, typer.Option(help="Decoder learning rate (overrides --lr).")] = None,
    learn_prior: Annotated[
        bool | None, typer.Option("--learn-prior/--fixed-prior", help="Learn the prior's logits.")
    ] = None,
    prior_lr: Annotated[float | None, typer.Option(help="SGD learning rate of a learned prior.")] = None,
    center_inputs: Annotated[
        bool | None,
        typer.Option("--center-inputs/--raw-inputs", help="Subtract the training mean from encoder inputs."),
    ] = None,
    init_output_bias: Annotated[
        bool | None,
        typer.Option(
            "--init-output-bias/--zero-output-bias", help="Decoder output bias at logit(mean image)."
        ),
    ] = None,
    log_every: LogEvery = VaeConfig.log_every,
    eval_every: EvalEvery = VaeConfig.eval_every,
    eval_samples: EvalSamples = VaeConfig.eval_samples,
    var_every: VarEvery = VaeConfig.var_every,
    var_method: VarMethod = VaeConfig.var_method,
    var_samples: VarSamples = VaeConfig.var_samples,
    checkpoint_every: CheckpointEvery = VaeConfig.checkpoint_every,
    seed: Seeds = None,
    device: Device = VaeConfig.device,
    prior_temperature: Annotated[
        float, typer.Option(help="concrete: temperature of the relaxed prior (with --kl relaxed).")
    ] = VaeConfig.prior_temperature,
    kl: Annotated[
        str,
        typer.Option(
            help="concrete: relaxed (Concrete densities of prior and posterior) or analytic (discrete KL)."
        ),
    ] = VaeConfig.kl,
    anneal: Anneal = VaeConfig.anneal,
    anneal_rate: AnnealRate = VaeConfig.anneal_rate,
    anneal_floor: AnnealFloor = VaeConfig.anneal_floor,
    resume: Resume = None,
    out: Out = VaeConfig.out,
    quiet: Quiet = False,
) -> None:
    """Train a VAE (binary or categorical latents) with each estimator: ELBO, bound, variance, time."""
    from dcvbench.jobs.vae import resume_vae, run_vae

    if resume is not None:
        refuse_options_with_resume(ctx)
    with RichProgress(quiet) as progress:
        if resume is not None:
            summaries = [resume_vae(resume, progress)]
        else:
            summaries = run_vae(vae_config(ctx), progress)
    report_model_runs("vae", summaries, quiet, "test bound", 1.0)
