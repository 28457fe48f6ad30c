"""``dcvbench vae``: train a VAE with binary or categorical latents."""

from __future__ import annotations

from typing import Annotated

import typer

from dcvbench.cli.app import app, reports_user_errors
from dcvbench.cli.console import RichProgress, report_model_runs
from dcvbench.cli.options import (
    ESTIMATORS,
    PROBLEM,
    RELAXATION,
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
    Latent,
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
    choices,
    estimator_choice,
    given,
    refuse_contradictions,
    refuse_lr_overridden,
    refuse_options_with_resume,
    resume_threads,
    training_options,
    warn_unused_options,
    with_estimator_options,
)
from dcvbench.config import CLASSES, DEFAULT_K, LATENT_BITS, VAE_PROTOCOLS, VARIABLES, VaeConfig
from dcvbench.data.sampler import TARGETS
from dcvbench.problems.vae import KL_VARIANTS
from dcvbench.runtime import ConfigError

# The default of the options each --protocol sets.
PROTOCOLS = "the protocol's"


def vae_config(ctx: typer.Context) -> VaeConfig:
    """The configuration of the ``dcvbench vae`` command line parsed into ``ctx``; options left out
    (``None``) take the protocol's value."""
    p = ctx.params
    config = VaeConfig.for_protocol(
        p["protocol"],
        **training_options(p, "vae", VaeConfig),
        budget=p["budget"],
        targets=p["targets"],
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
    refuse_lr_overridden(ctx)
    refuse_contradictions(ctx, "vae")
    if given(ctx, "prior_lr") and not config.learn_prior:
        raise ConfigError("--prior-lr applies to a learned prior only; add --learn-prior or drop --prior-lr")
    return config


@app.command()
@reports_user_errors
@with_estimator_options("vae")
def vae(
    ctx: typer.Context,
    estimator: estimator_choice(", ".join(VaeConfig.estimators)) = None,
    k: Annotated[
        int | None,
        typer.Option(
            "--k", help="Samples per datum K.", show_default=str(DEFAULT_K), rich_help_panel=ESTIMATORS
        ),
    ] = None,
    budget: Annotated[
        int | None,
        typer.Option(
            metavar="EVALS",
            help="Equal cost instead of --k: each estimator at the largest K whose estimate costs at most "
            "EVALS evaluations of f (recorded in each run's manifest).",
            rich_help_panel=ESTIMATORS,
        ),
    ] = VaeConfig.budget,
    objective: Bound = None,
    dataset: Dataset = VaeConfig.dataset,
    data_dir: DataDir = None,
    targets: Annotated[
        str,
        typer.Option(
            metavar=choices(TARGETS),
            help="Pixels the VAE learns: binarized (afresh each batch; held-out sets once) or intensities "
            "(grey levels as soft Bernoulli targets, the ReinMax paper's; bounds not comparable).",
            rich_help_panel=PROBLEM,
        ),
    ] = VaeConfig.targets,
    arch: Annotated[
        str,
        typer.Option(
            metavar="ARCH",
            help=(
                "linear, nonlinear, or the Concrete paper's names: 200H-784V (= linear), 200H-200H-784V, "
                "200H~784V (= nonlinear), 200H~200H~784V (docs/concrete-paper.md)."
            ),
            rich_help_panel=PROBLEM,
        ),
    ] = VaeConfig.arch,
    latent: Latent = VaeConfig.latent,
    latent_vars: Annotated[
        int | None,
        typer.Option(
            help="Latent variables: D bits or N categorical ones.",
            show_default=f"{LATENT_BITS} bits or {VARIABLES} categorical variables",
            rich_help_panel=PROBLEM,
        ),
    ] = None,
    classes: Annotated[
        int | None,
        typer.Option(
            help="Categorical latents: classes per variable C; uniform prior.",
            show_default=f"{CLASSES} for categorical latents",
            rich_help_panel=PROBLEM,
        ),
    ] = None,
    prior_temperature: Annotated[
        float,
        typer.Option(
            help="Temperature of the relaxed prior (with --kl relaxed).", rich_help_panel=RELAXATION
        ),
    ] = VaeConfig.prior_temperature,
    kl: Annotated[
        str,
        typer.Option(
            metavar=choices(KL_VARIANTS),
            help="concrete's latent term: relaxed (Concrete densities of prior and posterior) or analytic "
            "(the discrete KL).",
            rich_help_panel=RELAXATION,
        ),
    ] = VaeConfig.kl,
    anneal: Anneal = VaeConfig.anneal,
    anneal_rate: AnnealRate = VaeConfig.anneal_rate,
    anneal_floor: AnnealFloor = VaeConfig.anneal_floor,
    protocol: Annotated[
        str,
        typer.Option(
            metavar=choices(VAE_PROTOCOLS),
            help="Published settings: dcv (batch 100, Adam 1e-3, fixed prior) or disarm (batch 50, "
            "Adam 1e-4, learned prior, …).",
            rich_help_panel=TRAINING,
        ),
    ] = VaeConfig.protocol,
    steps: Steps = VaeConfig.steps,
    batch_size: Annotated[
        int | None, typer.Option(help="Minibatch size.", show_default=PROTOCOLS, rich_help_panel=TRAINING)
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option(
            help="Adam learning rate of encoder and decoder.",
            show_default=PROTOCOLS,
            rich_help_panel=TRAINING,
        ),
    ] = None,
    encoder_lr: Annotated[
        float | None,
        typer.Option(help="Encoder learning rate.", show_default="--lr", rich_help_panel=TRAINING),
    ] = None,
    decoder_lr: Annotated[
        float | None,
        typer.Option(help="Decoder learning rate.", show_default="--lr", rich_help_panel=TRAINING),
    ] = None,
    learn_prior: Annotated[
        bool | None,
        typer.Option(
            "--learn-prior/--fixed-prior",
            help="Learn the prior's logits.",
            show_default=PROTOCOLS,
            rich_help_panel=TRAINING,
        ),
    ] = None,
    prior_lr: Annotated[
        float | None,
        typer.Option(
            help="SGD learning rate of a learned prior.", show_default=PROTOCOLS, rich_help_panel=TRAINING
        ),
    ] = None,
    center_inputs: Annotated[
        bool | None,
        typer.Option(
            "--center-inputs/--raw-inputs",
            help="Subtract the training mean from encoder inputs.",
            show_default=PROTOCOLS,
            rich_help_panel=TRAINING,
        ),
    ] = None,
    init_output_bias: Annotated[
        bool | None,
        typer.Option(
            "--init-output-bias/--zero-output-bias",
            help="Decoder output bias at logit(mean image).",
            show_default=PROTOCOLS,
            rich_help_panel=TRAINING,
        ),
    ] = None,
    log_every: LogEvery = VaeConfig.log_every,
    eval_every: EvalEvery = VaeConfig.eval_every,
    eval_samples: EvalSamples = VaeConfig.eval_samples,
    var_every: VarEvery = VaeConfig.var_every,
    var_method: VarMethod = VaeConfig.var_method,
    var_samples: VarSamples = VaeConfig.var_samples,
    seed: Seeds = None,
    device: Device = VaeConfig.device,
    threads: Threads = VaeConfig.threads,
    checkpoint_every: CheckpointEvery = VaeConfig.checkpoint_every,
    resume: Resume = None,
    out: Out = VaeConfig.out,
    quiet: Quiet = False,
) -> None:
    """Train a VAE (binary or categorical latents) with each estimator: ELBO, bound, variance, time."""
    from dcvbench.jobs.vae import resume_vae, run_vae

    if resume is not None:
        refuse_options_with_resume(ctx)
    else:
        config = vae_config(ctx)
        warn_unused_options(ctx, config.estimators)
    with RichProgress(quiet) as progress:
        if resume is not None:
            summaries = [resume_vae(resume, progress, threads=resume_threads(ctx))]
        else:
            summaries = run_vae(config, progress)
    report_model_runs("vae", summaries, quiet, "test bound", 1.0)
