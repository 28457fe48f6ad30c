"""``dcvbench vae``: train a VAE with binary or categorical latents."""

from __future__ import annotations

from typing import Annotated

import typer

from dcvbench.cli.app import app, reports_user_errors
from dcvbench.cli.console import RichProgress, number, results_table, stdout
from dcvbench.cli.options import (
    CheckpointEvery,
    Device,
    Latent,
    Out,
    Quiet,
    Resume,
    estimator_settings,
    refuse_options_with_resume,
    with_estimator_options,
)
from dcvbench.config import CLASSES, LATENT_BITS, VARIABLES, VaeConfig


def vae_config(ctx: typer.Context) -> VaeConfig:
    """The configuration of the ``dcvbench vae`` command line parsed into ``ctx``; options left out
    (``None``) take the protocol's value."""
    p = ctx.params
    return VaeConfig.for_protocol(
        p["protocol"],
        dataset=p["dataset"],
        data_dir=p["data_dir"],
        arch=p["arch"],
        latent=p["latent"],
        latent_vars=p["latent_vars"],
        classes=p["classes"],
        k=p["k"],
        estimators=tuple(p["estimator"] or VaeConfig.estimators),
        objective=p["objective"],
        steps=p["steps"],
        batch_size=p["batch_size"],
        encoder_lr=p["lr"] if p["encoder_lr"] is None else p["encoder_lr"],
        decoder_lr=p["lr"] if p["decoder_lr"] is None else p["decoder_lr"],
        learn_prior=p["learn_prior"],
        prior_lr=p["prior_lr"],
        center_inputs=p["center_inputs"],
        init_output_bias=p["init_output_bias"],
        log_every=p["log_every"],
        eval_every=p["eval_every"],
        eval_samples=p["eval_samples"],
        var_every=p["var_every"],
        var_method=p["var_method"],
        var_samples=p["var_samples"],
        checkpoint_every=p["checkpoint_every"],
        seeds=tuple(p["seed"] or VaeConfig.seeds),
        device=p["device"],
        estimator_settings=estimator_settings(p, "vae"),
        prior_temperature=p["prior_temperature"],
        kl=p["kl"],
        anneal=p["anneal"],
        anneal_rate=p["anneal_rate"],
        anneal_floor=p["anneal_floor"],
        out=p["out"],
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
    dataset: Annotated[
        str, typer.Option(help="mnist-subset (embedded, default), mnist, fashion-mnist or omniglot.")
    ] = VaeConfig.dataset,
    data_dir: Annotated[str | None, typer.Option(help="Directory of the data set's files.")] = None,
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
    objective: Annotated[
        str | None,
        typer.Option(
            help=(
                "elbo (m = 1) or iwae (the K-sample bound, m = K: vimco, concrete). "
                "Default: each estimator's own (vimco: iwae; the rest: elbo)."
            )
        ),
    ] = None,
    protocol: Annotated[
        str, typer.Option(help="dcv (batch 100, Adam 1e-3, fixed prior) or disarm (batch 50, Adam 1e-4, …).")
    ] = VaeConfig.protocol,
    steps: Annotated[int, typer.Option(help="Training steps.")] = VaeConfig.steps,
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
    log_every: Annotated[
        int, typer.Option(help="Write a row (training ELBO, α, s/step) every N steps.")
    ] = VaeConfig.log_every,
    eval_every: Annotated[int, typer.Option(help="Held-out bounds every N steps.")] = VaeConfig.eval_every,
    eval_samples: Annotated[
        int, typer.Option(help="Importance samples per datum for the bound.")
    ] = VaeConfig.eval_samples,
    var_every: Annotated[int, typer.Option(help="Resample variance every N steps.")] = VaeConfig.var_every,
    var_method: Annotated[
        str, typer.Option(help="ema, resample or both (see README).")
    ] = VaeConfig.var_method,
    var_samples: Annotated[
        int, typer.Option(help="Estimates drawn for the resample variance.")
    ] = VaeConfig.var_samples,
    checkpoint_every: CheckpointEvery = VaeConfig.checkpoint_every,
    seed: Annotated[list[int] | None, typer.Option(help="Seed (repeatable: one run per seed).")] = None,
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
    anneal: Annotated[
        str,
        typer.Option(help="concrete, st-concrete: none, or exp: λ_t = max(floor, λ_0·exp(−rate·t)), both λ."),
    ] = VaeConfig.anneal,
    anneal_rate: Annotated[
        float, typer.Option(help="--anneal exp: decay rate per step.")
    ] = VaeConfig.anneal_rate,
    anneal_floor: Annotated[
        float, typer.Option(help="--anneal exp: the lowest temperature.")
    ] = VaeConfig.anneal_floor,
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
    if quiet:
        for summary in summaries:
            print(summary.path)
        return
    columns = ("estimator", "K", "seed", "status", "train ELBO", "test bound", "grad var (resample)")
    table = results_table("vae", (*columns, "grad var (ema)", "α", "s/step"))
    for s in summaries:
        m = s.metrics
        table.add_row(
            s.estimator,
            str(s.k),
            str(s.seed),
            s.status,
            number(m.get("train_elbo"), 5),
            number(m.get("test_bound"), 5),
            number(m.get("grad_var_resample"), 3),
            number(m.get("grad_var_ema"), 3),
            number(m.get("alpha"), 3),
            number(m.get("sec_per_step"), 2),
        )
    stdout.print(table)
    stdout.print(f"runs written under {summaries[0].path.parent}/")
