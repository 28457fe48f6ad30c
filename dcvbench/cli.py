"""The ``dcvbench`` command line: parse options, call a job, report. Nothing else lives here."""

from __future__ import annotations

import functools
import signal
import sys
from collections.abc import Callable
from typing import Annotated

import pandas as pd
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from dcvbench.config import (
    TOY_ALPHA,
    TOY_CLASSES,
    TOY_DEFAULT_ESTIMATORS,
    VAE_ALPHA,
    VARIANCE_DEFAULT_ESTIMATORS,
    ToyConfig,
    ToyProblem,
    VaeConfig,
    VarianceConfig,
)
from dcvbench.data import DataError, dataset_info, dataset_names, default_data_dir
from dcvbench.estimators import (
    REFERENCE_ESTIMATOR,
    EstimatorError,
    EstimatorSettings,
    estimator_info,
    estimator_names,
)
from dcvbench.estimators.base import LATENT_TYPES
from dcvbench.problems.categorical_vae import CLASSES, VARIABLES
from dcvbench.problems.vae import LATENT_BITS
from dcvbench.results import ResultsError
from dcvbench.runtime import ConfigError

# Typer bundles its own click; its exceptions are reachable only through Typer's public classes.
_CLICK_ERROR = next(cls for cls in typer.BadParameter.__mro__ if cls.__name__ == "ClickException")
USER_ERRORS = (ConfigError, DataError, EstimatorError, ResultsError)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Benchmark gradient estimators for discrete latent variables, side by side.",
)
# Tables are for people: outside a terminal (pipes, logs) rich would wrap them at 80 columns.
data_app = typer.Typer(no_args_is_help=True, help="Data sets for the VAE: list them, download them.")
app.add_typer(data_app, name="data")
stdout = Console(width=None if Console().is_terminal else 150)
stderr = Console(stderr=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point: every usage error becomes one line on stderr and exit code 2.

    Ctrl-C (SIGINT) exits with 130 and SIGTERM with 143, after the run in progress has flushed
    what it measured and marked itself ``interrupted``: SIGTERM is raised as a KeyboardInterrupt.
    """
    terminated: list[int] = []

    def on_sigterm(signum, frame) -> None:
        terminated.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        # Typer answers an interruption itself in this mode: it returns exit code 130.
        code = app(args=argv, prog_name="dcvbench", standalone_mode=False)
    except _CLICK_ERROR as error:
        print(f"dcvbench: error: {error.format_message()}", file=sys.stderr)
        code = 2
    except (typer.Abort, KeyboardInterrupt):
        code = 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    if code == 130:
        print(f"dcvbench: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        code = 143 if terminated else 130
    if argv is None:
        sys.exit(code or 0)
    return code or 0


def reports_user_errors(command: Callable) -> Callable:
    """Turn bad input found by the library into one line on stderr and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except USER_ERRORS as error:
            print(f"dcvbench: error: {error}", file=sys.stderr)
            raise typer.Exit(2) from None

    return wrapper


class RichProgress:
    """A rich progress bar on stderr, one task per run; silent when quiet or not on a terminal."""

    def __init__(self, quiet: bool):
        from rich.progress import Progress

        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=stderr,
            disable=quiet or not stderr.is_terminal,
            transient=False,
        )
        self.task = None

    def __enter__(self) -> RichProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)

    def start(self, description: str, total: int) -> None:
        self.task = self.bar.add_task(description, total=total)

    def advance(self, steps: int = 1) -> None:
        self.bar.advance(self.task, steps)


# ---------------------------------------------------------------------------------------------
# Options shared by several subcommands.

Latent = Annotated[str, typer.Option(help="Latent type: binary, or categorical (one-hot, C classes each).")]
Dim = Annotated[int, typer.Option(help="Latent variables: D bits, or N categorical variables.")]
ToyClasses = Annotated[
    int | None, typer.Option(help=f"Categorical latents: classes per variable C (default {TOY_CLASSES}).")
]
Target = Annotated[float, typer.Option(help="Target t of the binary toy objectives.")]
Objective = Annotated[
    str,
    typer.Option(
        help="Toy objective: separable (published), sum-square or quadratic-form; "
        "categorical: separable or quadratic-form."
    ),
]
WScale = Annotated[float, typer.Option(help="quadratic-form: scale of the Gaussian matrix W.")]
WSeed = Annotated[
    int, typer.Option(help="quadratic-form's W and the categorical targets: their seed (same for every run).")
]
Device = Annotated[str, typer.Option(help="auto (CUDA when available), cpu or cuda.")]
Dtype = Annotated[
    str, typer.Option(help="float64 (default for the toy: its gradients are ~1e-5) or float32.")
]
Out = Annotated[str, typer.Option(help="Directory under which each run gets its own directory.")]
Quiet = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress or tables; print run directories only.")
]
Alpha = Annotated[
    float | None, typer.Option(help="rloo-dcv: fix the control-variate weight α (default: learn it).")
]
AlphaLearning = Annotated[
    str, typer.Option(help="rloo-dcv: learn α by sgd on ‖g‖² (the paper) or by the running optimum.")
]
AlphaOptimizer = Annotated[str, typer.Option(help="rloo-dcv: optimiser of α for sgd: rmsprop, adam or sgd.")]
AlphaLr = Annotated[float, typer.Option(help="rloo-dcv: learning rate of α.")]
Temperature = Annotated[float, typer.Option(help="concrete, st-concrete: relaxation temperature λ.")]
BaselineDecay = Annotated[float, typer.Option(help="reinforce-ema, nvil: decay of the running averages.")]
ControlLr = Annotated[
    float, typer.Option(help="relax, rebar, nvil: Adam learning rate of the estimator's learned parts.")
]
CheckpointEvery = Annotated[
    int, typer.Option(help="Checkpoint (atomically, for --resume) every N steps, at a flushed row.")
]
Resume = Annotated[
    str | None,
    typer.Option(
        metavar="RUN_DIR",
        help="Continue this run directory from its last checkpoint, with its own configuration.",
    ),
]


def _settings(alpha, alpha_learning, alpha_optimizer, alpha_lr, temperature, baseline_decay, control_lr):
    return EstimatorSettings(
        alpha=alpha,
        alpha_learning=alpha_learning,
        alpha_optimizer=alpha_optimizer,
        alpha_lr=alpha_lr,
        temperature=temperature,
        baseline_decay=baseline_decay,
        control_lr=control_lr,
    )


def _refuse_options_with_resume(ctx: typer.Context) -> None:
    """``--resume`` continues a run with the configuration in its manifest, so a run option given
    beside it would be silently ignored: refuse it instead (``--quiet`` only changes the report)."""
    for param in ctx.command.params:
        if param.name in ("resume", "quiet"):
            continue
        source = ctx.get_parameter_source(param.name)
        if source is not None and source.name == "COMMANDLINE":
            raise ConfigError(
                f"--resume continues a run with its own configuration; drop {param.opts[0]} "
                f"(start a new run to change it)"
            )


def _refuse_target_with_categorical(ctx: typer.Context, problem: ToyProblem) -> None:
    """The categorical objectives draw their targets (from ``--w-seed``): a ``--target`` would be ignored."""
    source = ctx.get_parameter_source("target")
    if problem.latent == "categorical" and source is not None and source.name == "COMMANDLINE":
        raise ConfigError(
            "--target applies to binary latents only: the categorical objectives draw their targets "
            "from --w-seed; drop --target"
        )


def _toy_latents(problem: ToyProblem) -> str:
    """``D=200, t=0.499`` or ``N=50 categorical, C=4``: the latents of a toy, for titles."""
    if problem.latent == "binary":
        return f"D={problem.dim}, t={problem.target}"
    return f"N={problem.dim} categorical, C={problem.classes}"


def _number(value: float | None, digits: int = 4) -> str:
    if value is None or pd.isna(value):
        return "–"
    return f"{value:.{digits}g}"


# ---------------------------------------------------------------------------------------------
# Subcommands.


@app.command()
@reports_user_errors
def estimators(
    latent: Annotated[
        str | None,
        typer.Option(help="Only the estimators for this latent type, binary or categorical (default: all)."),
    ] = None,
) -> None:
    """List the registered estimators, the latent types each has a version for, and what each needs."""
    if latent is not None and latent not in LATENT_TYPES:
        raise ConfigError(f"unknown --latent {latent!r}; choose from: {', '.join(LATENT_TYPES)}")
    kinds = LATENT_TYPES if latent is None else (latent,)
    table = Table(title="dcvbench estimators" + ("" if latent is None else f" for {latent} latents"))
    for column in ("name", "latents", "f evals", "unbiased", "K", "needs ∇_b f", "problems", "description"):
        table.add_column(column)
    names = {kind: estimator_names(kind) for kind in LATENT_TYPES}
    for name in dict.fromkeys(name for kind in kinds for name in names[kind]):
        latents = [kind for kind in LATENT_TYPES if name in names[kind]]
        # Cost, bias and K rule do not depend on the latent type; the description does (its version).
        info = estimator_info(name, kinds[0] if latent else latents[0])
        table.add_row(
            name,
            ", ".join(latents),
            info.evals_rule(),
            "yes" if info.unbiased else "no",
            info.k_rule(),
            "yes" if info.needs_input_grad else "no",
            ", ".join(info.problems),
            info.summary,
        )
    stdout.print(table)


@app.command()
@reports_user_errors
def toy(
    ctx: typer.Context,
    latent: Latent = "binary",
    dim: Dim = 200,
    classes: ToyClasses = None,
    target: Target = 0.499,
    objective: Objective = "separable",
    w_scale: WScale = 1.0,
    w_seed: WSeed = 0,
    k: Annotated[int, typer.Option("--k", help="Samples per estimate K.")] = 2,
    estimator: Annotated[
        list[str] | None,
        typer.Option(
            help=f"Estimator (repeatable). Default: {', '.join(TOY_DEFAULT_ESTIMATORS['binary'])}; "
            f"categorical: {', '.join(TOY_DEFAULT_ESTIMATORS['categorical'])}."
        ),
    ] = None,
    steps: Annotated[int, typer.Option(help="Optimisation steps.")] = 2000,
    lr: Annotated[float, typer.Option(help="RMSprop learning rate for the logits.")] = 0.01,
    maximize: Annotated[
        bool, typer.Option("--maximize/--minimize", help="Direction (published: maximise).")
    ] = True,
    log_every: Annotated[int, typer.Option(help="Record the exact objective every N steps.")] = 10,
    var_every: Annotated[int, typer.Option(help="Measure variance and bias every N steps.")] = 20,
    var_samples: Annotated[int, typer.Option(help="Independent estimates per variance measurement.")] = 2000,
    seed: Annotated[list[int] | None, typer.Option(help="Seed (repeatable: one run per seed).")] = None,
    device: Device = "auto",
    dtype: Dtype = "float64",
    alpha: Alpha = None,
    alpha_learning: AlphaLearning = TOY_ALPHA.alpha_learning,
    alpha_optimizer: AlphaOptimizer = TOY_ALPHA.alpha_optimizer,
    alpha_lr: AlphaLr = TOY_ALPHA.alpha_lr,
    temperature: Temperature = TOY_ALPHA.temperature,
    baseline_decay: BaselineDecay = TOY_ALPHA.baseline_decay,
    control_lr: ControlLr = TOY_ALPHA.control_lr,
    checkpoint_every: CheckpointEvery = ToyConfig.checkpoint_every,
    resume: Resume = None,
    out: Out = "results",
    quiet: Quiet = False,
) -> None:
    """Toy problem with an exact gradient: optimise with each estimator, tracing variance and bias."""
    from dcvbench.jobs.toy import resume_toy, run_toy

    if resume is not None:
        _refuse_options_with_resume(ctx)
        with RichProgress(quiet) as progress:
            summaries = [resume_toy(resume, progress)]
        title = f"toy: resumed {summaries[0].run_id}"
    else:
        problem = ToyProblem(
            dim=dim,
            target=target,
            objective=objective,
            w_scale=w_scale,
            w_seed=w_seed,
            latent=latent,
            classes=classes,
        )
        _refuse_target_with_categorical(ctx, problem)
        config = ToyConfig(
            problem=problem,
            estimators=tuple(estimator or TOY_DEFAULT_ESTIMATORS[latent]),
            k=k,
            steps=steps,
            lr=lr,
            maximize=maximize,
            log_every=log_every,
            var_every=var_every,
            var_samples=var_samples,
            seeds=tuple(seed or (0,)),
            device=device,
            dtype=dtype,
            estimator_settings=_settings(
                alpha, alpha_learning, alpha_optimizer, alpha_lr, temperature, baseline_decay, control_lr
            ),
            checkpoint_every=checkpoint_every,
            out=out,
        )
        with RichProgress(quiet) as progress:
            summaries = run_toy(config, progress)
        title = f"toy: {_toy_latents(problem)}, {objective}, K={k}, {steps} steps"
    if quiet:
        for summary in summaries:
            print(summary.path)
        return
    reference = {
        (s.seed, s.k): s.metrics.get("grad_var") for s in summaries if s.estimator == REFERENCE_ESTIMATOR
    }
    table = Table(title=title)
    for column in ("estimator", "seed", "status", "final E f", "final grad var", "vs rloo", "s/step"):
        table.add_column(column, justify="left" if column in ("estimator", "status") else "right")
    for s in summaries:
        variance = s.metrics.get("grad_var")
        base = reference.get((s.seed, s.k))
        ratio = variance / base if variance is not None and base else None
        table.add_row(
            s.estimator,
            str(s.seed),
            s.status,
            _number(s.metrics.get("objective"), 7),
            _number(variance, 3),
            _number(ratio, 3),
            _number(s.metrics.get("sec_per_step"), 2),
        )
    stdout.print(table)
    stdout.print(f"runs written under {summaries[0].path.parent}/")


@app.command()
@reports_user_errors
def vae(
    ctx: typer.Context,
    estimator: Annotated[
        list[str] | None, typer.Option(help="Estimator (repeatable: one run each). Default: rloo-dcv.")
    ] = None,
    dataset: Annotated[
        str, typer.Option(help="mnist-subset (embedded, default), mnist, fashion-mnist or omniglot.")
    ] = "mnist-subset",
    data_dir: Annotated[str | None, typer.Option(help="Directory of the data set's files.")] = None,
    arch: Annotated[str, typer.Option(help="linear or nonlinear (DESIGN §4.2).")] = "linear",
    latent: Latent = "binary",
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
    k: Annotated[int, typer.Option("--k", help="Samples per datum K.")] = 2,
    protocol: Annotated[
        str, typer.Option(help="dcv (batch 100, Adam 1e-3, fixed prior) or disarm (batch 50, Adam 1e-4, …).")
    ] = "dcv",
    steps: Annotated[int, typer.Option(help="Training steps.")] = 2000,
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
    ] = 50,
    eval_every: Annotated[int, typer.Option(help="Held-out bounds every N steps.")] = 500,
    eval_samples: Annotated[int, typer.Option(help="Importance samples per datum for the bound.")] = 100,
    var_every: Annotated[int, typer.Option(help="Resample variance every N steps.")] = 250,
    var_method: Annotated[str, typer.Option(help="ema, resample or both (see README).")] = "both",
    var_samples: Annotated[int, typer.Option(help="Estimates drawn for the resample variance.")] = 100,
    checkpoint_every: CheckpointEvery = VaeConfig.checkpoint_every,
    seed: Annotated[list[int] | None, typer.Option(help="Seed (repeatable: one run per seed).")] = None,
    device: Device = "auto",
    alpha: Alpha = None,
    alpha_learning: AlphaLearning = VAE_ALPHA.alpha_learning,
    alpha_optimizer: AlphaOptimizer = VAE_ALPHA.alpha_optimizer,
    alpha_lr: AlphaLr = VAE_ALPHA.alpha_lr,
    temperature: Annotated[
        float,
        typer.Option(help="concrete, st-concrete: posterior temperature λ (the start, with --anneal exp)."),
    ] = VAE_ALPHA.temperature,
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
    baseline_decay: BaselineDecay = VAE_ALPHA.baseline_decay,
    control_lr: ControlLr = VAE_ALPHA.control_lr,
    resume: Resume = None,
    out: Out = "results",
    quiet: Quiet = False,
) -> None:
    """Train a VAE (binary or categorical latents) with each estimator: ELBO, bound, variance, time."""
    from dcvbench.jobs.vae import resume_vae, run_vae

    if resume is not None:
        _refuse_options_with_resume(ctx)
    with RichProgress(quiet) as progress:
        if resume is not None:
            summaries = [resume_vae(resume, progress)]
        else:
            config = VaeConfig.for_protocol(
                protocol,
                dataset=dataset,
                data_dir=data_dir,
                arch=arch,
                latent=latent,
                latent_vars=latent_vars,
                classes=classes,
                k=k,
                estimators=tuple(estimator or ("rloo-dcv",)),
                steps=steps,
                batch_size=batch_size,
                encoder_lr=lr if encoder_lr is None else encoder_lr,
                decoder_lr=lr if decoder_lr is None else decoder_lr,
                learn_prior=learn_prior,
                prior_lr=prior_lr,
                center_inputs=center_inputs,
                init_output_bias=init_output_bias,
                log_every=log_every,
                eval_every=eval_every,
                eval_samples=eval_samples,
                var_every=var_every,
                var_method=var_method,
                var_samples=var_samples,
                checkpoint_every=checkpoint_every,
                seeds=tuple(seed or (0,)),
                device=device,
                estimator_settings=_settings(
                    alpha, alpha_learning, alpha_optimizer, alpha_lr, temperature, baseline_decay, control_lr
                ),
                prior_temperature=prior_temperature,
                kl=kl,
                anneal=anneal,
                anneal_rate=anneal_rate,
                anneal_floor=anneal_floor,
                out=out,
            )
            summaries = run_vae(config, progress)
    if quiet:
        for summary in summaries:
            print(summary.path)
        return
    table = Table(title="vae")
    columns = ("estimator", "K", "seed", "status", "train ELBO", "test bound", "grad var (resample)")
    for column in (*columns, "grad var (ema)", "α", "s/step"):
        table.add_column(column, justify="left" if column in ("estimator", "status") else "right")
    for s in summaries:
        m = s.metrics
        table.add_row(
            s.estimator,
            str(s.k),
            str(s.seed),
            s.status,
            _number(m.get("train_elbo"), 5),
            _number(m.get("test_bound"), 5),
            _number(m.get("grad_var_resample"), 3),
            _number(m.get("grad_var_ema"), 3),
            _number(m.get("alpha"), 3),
            _number(m.get("sec_per_step"), 2),
        )
    stdout.print(table)
    stdout.print(f"runs written under {summaries[0].path.parent}/")


@app.command()
@reports_user_errors
def variance(
    ctx: typer.Context,
    problem: Annotated[str, typer.Option(help="Problem: toy (or give --checkpoint for a VAE).")] = "toy",
    checkpoint: Annotated[
        str | None,
        typer.Option(
            help="A VAE run directory or its checkpoint.pt: measure there, on its snapshot batch, with "
            "its latents and relaxation settings."
        ),
    ] = None,
    latent: Latent = "binary",
    dim: Dim = 200,
    classes: ToyClasses = None,
    target: Target = 0.499,
    objective: Objective = "separable",
    w_scale: WScale = 1.0,
    w_seed: WSeed = 0,
    theta: Annotated[
        str | None,
        typer.Option(
            help="θ for every coordinate, in (0, 1), or 'random' (seeded); default 0.5. Categorical: "
            "'random' (seeded logits away from uniform) or 'uniform' (the default)."
        ),
    ] = None,
    k: Annotated[list[int] | None, typer.Option("--k", help="Samples per estimate K (repeatable).")] = None,
    estimator: Annotated[
        list[str] | None,
        typer.Option(
            help=f"Estimator (repeatable). Default: {', '.join(VARIANCE_DEFAULT_ESTIMATORS['binary'])}; "
            f"categorical: {', '.join(VARIANCE_DEFAULT_ESTIMATORS['categorical'])}."
        ),
    ] = None,
    samples: Annotated[
        int | None, typer.Option(help="Independent estimates per (estimator, K): toy 20000, VAE 1000.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    device: Device = "auto",
    dtype: Dtype = "float64",
    alpha: Annotated[
        float | None,
        typer.Option(help="rloo-dcv: fix α (default: the variance-optimal α at θ, from separate draws)."),
    ] = None,
    temperature: Annotated[
        float,
        typer.Option(
            help="concrete, st-concrete: relaxation temperature λ on the toy (a checkpoint: its run's)."
        ),
    ] = TOY_ALPHA.temperature,
    baseline_decay: BaselineDecay = TOY_ALPHA.baseline_decay,
    out: Out = "results",
    quiet: Quiet = False,
) -> None:
    """Variance and bias of estimators side by side at one fixed point, on the same random numbers."""
    from dcvbench.jobs.variance import run_variance

    if problem not in ("toy", "vae"):
        raise ConfigError(f"unknown problem {problem!r}; choose from: toy, vae (with --checkpoint)")
    if problem == "vae" and checkpoint is None:
        raise ConfigError("--problem vae needs --checkpoint: a VAE run directory or its checkpoint.pt")
    if checkpoint is not None:
        for name in ("latent", "classes"):
            source = ctx.get_parameter_source(name)
            if source is not None and source.name == "COMMANDLINE":
                raise ConfigError(f"--checkpoint measures with its run's own latents; drop --{name}")
    toy_problem = ToyProblem(
        dim=dim,
        target=target,
        objective=objective,
        w_scale=w_scale,
        w_seed=w_seed,
        latent=latent,
        classes=classes,
    )
    if checkpoint is None:
        _refuse_target_with_categorical(ctx, toy_problem)
    config = VarianceConfig(
        problem=toy_problem,
        theta=theta,
        checkpoint=checkpoint,
        estimators=tuple(estimator or VARIANCE_DEFAULT_ESTIMATORS[latent]),
        ks=tuple(k or (2,)),
        samples=(1000 if checkpoint else 20000) if samples is None else samples,
        seed=seed,
        device=device,
        dtype=dtype,
        estimator_settings=EstimatorSettings(
            alpha=alpha, temperature=temperature, baseline_decay=baseline_decay
        ),
        out=out,
    )
    with RichProgress(quiet) as progress:
        study = run_variance(config, progress)
    if quiet:
        print(study.path)
        return
    if checkpoint:
        title = f"encoder-gradient variance at {checkpoint}, {config.samples} draws"
        extra = {"logit variance": "logit_variance", "logit vs rloo": "logit_variance_ratio"}
    else:
        where = f"{'θ' if latent == 'binary' else 'π'}={config.theta}"
        title = f"variance at {where}: {_toy_latents(toy_problem)}, {objective}, {config.samples} draws"
        extra = {"max |z|": "bias_max_z", "mean |z|": "bias_mean_z"}
    columns = {"variance": "variance", "vs rloo": "variance_ratio", "variance×evals": "cost_variance"}
    columns.update(extra)
    table = Table(title=title)
    for column in ("estimator", "K", "evals", *columns, "s/estimate", "α"):
        table.add_column(column, justify="left" if column == "estimator" else "right")
    for row in study.table.to_dict("records"):
        alpha_text = "–" if pd.isna(row["alpha_source"]) else f"{row['alpha']:.4g} ({row['alpha_source']})"
        table.add_row(
            row["estimator"],
            str(row["k"]),
            str(row["evals"]),
            *(_number(row[name], 3) for name in columns.values()),
            _number(row["seconds_per_estimate"], 2),
            alpha_text,
        )
    stdout.print(table)
    stdout.print(f"written to {study.path / 'variance.parquet'}")


@data_app.command("list")
def data_list() -> None:
    """The data sets, their files, and where they are looked for by default."""
    table = Table(title="dcvbench data sets")
    for column in ("name", "description", "files", "default --data-dir"):
        table.add_column(column)
    for name in dataset_names():
        info = dataset_info(name)
        files = ", ".join(info.files) or "embedded (no download)"
        location = "–" if info.embedded else str(default_data_dir(name))
        table.add_row(name, info.description, files, location)
    stdout.print(table)


@data_app.command("download")
@reports_user_errors
def data_download(
    name: Annotated[str, typer.Argument(help="Data set: mnist, fashion-mnist or omniglot.")],
    data_dir: Annotated[
        str | None, typer.Option(help="Where to put the files (default: see `dcvbench data list`).")
    ] = None,
    base_url: Annotated[str | None, typer.Option(help="A mirror to use instead of the defaults.")] = None,
) -> None:
    """Fetch a data set's canonical files, verifying their checksums (needs a network)."""
    from dcvbench.data import download

    if name not in dataset_names():
        raise DataError(f"unknown data set {name!r}; choose from: {', '.join(dataset_names())}")
    if dataset_info(name).embedded:
        stdout.print(f"{name} ships with dcvbench's dependencies: nothing to download")
        return
    for fetched in download(name, data_dir, base_url=base_url):
        verb = "already present and verified" if fetched.url is None else f"fetched from {fetched.url}"
        stdout.print(f"{fetched.path}: {verb}")


@app.command()
@reports_user_errors
def plot(
    directory: Annotated[
        str, typer.Argument(metavar="DIR", help="Directory of runs, searched at any depth.")
    ],
    out: Annotated[
        str | None, typer.Option(help="Where figures and summary go (default: DIR/plots).")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="Figure format: png, pdf or svg.")] = "png",
    baseline: Annotated[
        str | None, typer.Option(help="Directory of reference runs, overlaid dashed as '(baseline)'.")
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No table; print the files written, one a line.")
    ] = False,
) -> None:
    """Figures (variance, objective, α, time; variance studies) and a summary table of runs in DIR."""
    from dcvbench.plot import plot_results, summary_tables

    report = plot_results(directory, out, fmt=fmt, baseline=baseline)
    for skipped in report.skipped:
        print(f"dcvbench: {skipped}", file=sys.stderr)
    for warning in report.warnings:
        print(f"dcvbench: warning: {warning}", file=sys.stderr)
    written = [*report.figures, report.out_dir / "summary.md", report.out_dir / "summary.csv"]
    if quiet:
        for path in written:
            print(path)
        return
    for title, frame in summary_tables(report.summary, report.variance):
        table = Table(title=f"{title} (mean ± s.e. over seeds)")
        for column in frame.columns:
            left = column in ("estimator", "status")
            table.add_column(column, justify="left" if left else "right", no_wrap=not left)
        for row in frame.itertuples(index=False):
            table.add_row(*map(str, row))
        stdout.print(table)
    stdout.print(f"{len(report.figures)} figures in {report.out_dir}/:")
    for path in report.figures:
        stdout.print(f"  {path.name}")


@app.command()
@reports_user_errors
def sweep(
    spec: Annotated[
        str, typer.Argument(metavar="SPEC.toml", help="The job, its fixed options, the grid to cross.")
    ],
    out: Out = "results",
    backend: Annotated[
        str, typer.Option(help="local (runs at once on this machine) or dask (a cluster on 127.0.0.1).")
    ] = "local",
    workers: Annotated[
        int | None, typer.Option(help="Runs at once, each with cores/N threads (default: one per core).")
    ] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(metavar="ADDRESS", help="Run on this existing Dask cluster (tcp://HOST:8786) instead."),
    ] = None,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Start again the runs that failed or diverged before.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print each run's invocation, one a line; run nothing.")
    ] = False,
    quiet: Quiet = False,
) -> None:
    """A grid of toy, VAE or variance runs, skipping finished ones and resuming interrupted ones."""
    from dcvbench.jobs.sweep import SweepCounts, expand, load_spec, run_sweep

    parsed = load_spec(spec)
    runs = expand(parsed)
    if dry_run:
        for run in runs:
            print(run.command(out))
        return
    with RichProgress(quiet) as progress:
        progress.start("sweep", len(runs))

        def show(counts: SweepCounts) -> None:
            description = f"sweep: {counts.running} running, {counts.failed} failed"
            progress.bar.update(progress.task, completed=counts.done, description=description)

        results = run_sweep(
            runs,
            out,
            backend=backend,
            workers=workers,
            scheduler=scheduler,
            retry_failed=retry_failed,
            on_progress=show,
        )
    failed = [r for r in results if r.status in ("failed", "interrupted")]
    if quiet:
        for result in failed:
            print(f"dcvbench: {result.run.key}: {result.status}: {result.note}", file=sys.stderr)
        for result in results:
            if result.run_dir is not None:
                print(result.run_dir)
    else:
        table = Table(title=f"sweep: {parsed.title}", caption=f"{len(runs)} runs, {len(failed)} not finished")
        for column in ("run", "status", "run dir", "note"):
            table.add_column(column)
        for r in results:
            status = r.status if r.exit_code is None else f"{r.status} (exit {r.exit_code})"
            table.add_row(r.run.label, status, str(r.run_dir or "–"), r.note)
        stdout.print(table)
    if failed:
        raise typer.Exit(1)
