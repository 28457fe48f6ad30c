"""Options shared by several commands, and the estimators' own options, generated from the registry.

Defaults come from the configuration dataclasses of :mod:`dcvbench.config` (``ToyProblem.dim``), an
estimator option's from :func:`~dcvbench.estimators.default_settings` of the job: the command line
never writes a default of its own.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any

import typer

from dcvbench.config import ANNEAL_SCHEDULES, TOY_CLASSES, TOY_OBJECTIVES, VAR_METHODS, ToyProblem, VaeConfig
from dcvbench.data import dataset_names
from dcvbench.estimators import default_settings, estimator_info, estimator_names, estimator_options
from dcvbench.estimators.options import Option, flag_of
from dcvbench.estimators.registry import option_users
from dcvbench.latent import LATENT_TYPES
from dcvbench.problems.vae import BOUNDS
from dcvbench.runtime import DEVICES, DTYPES, ConfigError


def choices(values: Iterable[str]) -> str:
    """``[binary|categorical]``: the metavar of an option with fixed values, for ``--help``. The
    library checks the value (one line naming the valid ones), so it stays a plain string here."""
    return "[" + "|".join(values) + "]"


# Panels that group a job's options in its --help, in this order.
PROBLEM = "Problem"  # the toy's objective, or a model's data, architecture and latents
ESTIMATORS = "Estimators"
RELAXATION = (
    f"Relaxation ({', '.join(name for name in estimator_names() if estimator_info(name).relaxation)})"
)
TRAINING = "Training"
MEASUREMENT = "Measurement"
RUN = "Run"

Latent = Annotated[
    str,
    typer.Option(
        metavar=choices(LATENT_TYPES),
        help="Latent type: binary, or categorical (one-hot, C classes each).",
        rich_help_panel=PROBLEM,
    ),
]
Dim = Annotated[
    int, typer.Option(help="Latent variables: D bits, or N categorical variables.", rich_help_panel=PROBLEM)
]
ToyClasses = Annotated[
    int | None,
    typer.Option(
        help="Categorical latents: classes per variable C.",
        show_default=f"{TOY_CLASSES} for categorical latents",
        rich_help_panel=PROBLEM,
    ),
]
Target = Annotated[
    float, typer.Option(help="Target t of the binary toy objectives.", rich_help_panel=PROBLEM)
]
Objective = Annotated[
    str,
    typer.Option(
        metavar="NAME",
        help=f"Toy objective: {', '.join(TOY_OBJECTIVES['binary'])} (separable: the published one); "
        f"categorical latents: {' or '.join(TOY_OBJECTIVES['categorical'])}.",
        rich_help_panel=PROBLEM,
    ),
]
WScale = Annotated[
    float, typer.Option(help="quadratic-form: scale of the Gaussian matrix W.", rich_help_panel=PROBLEM)
]
WSeed = Annotated[
    int,
    typer.Option(
        help="quadratic-form's W and the categorical targets: their seed (same for every run).",
        rich_help_panel=PROBLEM,
    ),
]
Device = Annotated[
    str,
    typer.Option(
        metavar=choices(DEVICES), help="auto: CUDA when available, else the CPU.", rich_help_panel=RUN
    ),
]
Dtype = Annotated[
    str,
    typer.Option(
        metavar=choices(DTYPES),
        help="Floating-point type (float64, the toy's default: its gradients are ~1e-5).",
        rich_help_panel=RUN,
    ),
]
Threads = Annotated[
    int,
    typer.Option(
        help="Torch threads (1: measured fastest on a shared machine; docs/performance.md#threads).",
        rich_help_panel=RUN,
    ),
]
Out = Annotated[
    str,
    typer.Option(
        metavar="DIR", help="Directory under which each run gets its own directory.", rich_help_panel=RUN
    ),
]
Quiet = Annotated[
    bool,
    typer.Option(
        "--quiet", "-q", help="No progress or tables; print run directories only.", rich_help_panel=RUN
    ),
]
CheckpointEvery = Annotated[
    int,
    typer.Option(
        help="Checkpoint (atomically, for --resume) every N steps, at a flushed row.", rich_help_panel=RUN
    ),
]
# The options of the model-training jobs (vae, predict), their defaults the job's config's.
Dataset = Annotated[
    str,
    typer.Option(
        metavar="NAME",
        help=f"Data set: {', '.join(dataset_names())} (mnist-subset ships with dcvbench; the others: "
        "dcvbench data download).",
        rich_help_panel=PROBLEM,
    ),
]
DataDir = Annotated[
    str | None,
    typer.Option(
        metavar="DIR",
        help="Directory of the data set's files.",
        show_default="see dcvbench data list",
        rich_help_panel=PROBLEM,
    ),
]
Bound = Annotated[
    str | None,
    typer.Option(
        "--objective",
        metavar=choices(BOUNDS),
        help="elbo (m = 1) or iwae (the K-sample bound, m = K: vimco, concrete).",
        show_default="each estimator's own; vimco: iwae, the rest: elbo",
        rich_help_panel=ESTIMATORS,
    ),
]
Steps = Annotated[int, typer.Option(help="Training steps.", rich_help_panel=TRAINING)]
LogEvery = Annotated[
    int,
    typer.Option(help="Write a row (training bound, α, s/step) every N steps.", rich_help_panel=MEASUREMENT),
]
EvalEvery = Annotated[int, typer.Option(help="Held-out bounds every N steps.", rich_help_panel=MEASUREMENT)]
EvalSamples = Annotated[
    int, typer.Option(help="Samples per datum of the held-out bound.", rich_help_panel=MEASUREMENT)
]
VarEvery = Annotated[int, typer.Option(help="Resample variance every N steps.", rich_help_panel=MEASUREMENT)]
VarMethod = Annotated[
    str,
    typer.Option(
        metavar=choices(VAR_METHODS),
        help="Gradient variance by a running average, by resampling, or both (docs/measurement.md).",
        rich_help_panel=MEASUREMENT,
    ),
]
VarSamples = Annotated[
    int, typer.Option(help="Estimates drawn for the resample variance.", rich_help_panel=MEASUREMENT)
]
Seeds = Annotated[
    list[int] | None,
    typer.Option(
        "--seed",
        help="Seed (repeatable: one run per seed).",
        show_default=", ".join(map(str, VaeConfig.seeds)),
        rich_help_panel=RUN,
    ),
]
Anneal = Annotated[
    str,
    typer.Option(
        metavar=choices(ANNEAL_SCHEDULES),
        help="Temperature schedule: none, or exp: λ_t = max(floor, λ_0·exp(−rate·t)).",
        rich_help_panel=RELAXATION,
    ),
]
AnnealRate = Annotated[
    float, typer.Option(help="--anneal exp: decay rate per step.", rich_help_panel=RELAXATION)
]
AnnealFloor = Annotated[
    float, typer.Option(help="--anneal exp: the lowest temperature.", rich_help_panel=RELAXATION)
]
Resume = Annotated[
    str | None,
    typer.Option(
        metavar="RUN_DIR",
        help="Continue this run from its last checkpoint, with its own configuration (only --threads "
        "and --quiet may be given).",
        rich_help_panel=RUN,
    ),
]


def estimator_choice(defaults: str) -> Any:
    """A job's ``--estimator`` option (every registered name), its default ``defaults`` in words."""
    return Annotated[
        list[str] | None,
        typer.Option(
            metavar="NAME",
            help=f"Estimator (repeatable): {', '.join(estimator_names())}.",
            show_default=defaults,
            rich_help_panel=ESTIMATORS,
        ),
    ]


def with_estimator_options(job: str) -> Callable[[Callable], Callable]:
    """Give a job's command one typed option per registered estimator option.

    Each option is spelled ``option.flag``, defaults to the job's default, and its help names the
    estimators that use it, so an estimator that declares a new option needs no edit here. Typer
    reads the command's ``__signature__``: the options are added to it, and the wrapper drops their
    values before calling the command, which reads them from the context (:func:`estimator_settings`).
    """
    options = estimator_options(job)
    defaults = default_settings(job)

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command, eval_str=True)  # Typer takes a __signature__ as it is
        taken = set(options) & set(signature.parameters)
        if taken:
            raise RuntimeError(f"estimator option {sorted(taken)[0]!r} clashes with a {job} option")
        added = [
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=defaults[name],
                annotation=_annotation(option, option_users(name), job),
            )
            for name, option in options.items()
        ]

        @functools.wraps(command)
        def wrapper(*args, **kwargs):
            return command(*args, **{name: value for name, value in kwargs.items() if name not in options})

        wrapper.__signature__ = signature.replace(parameters=[*signature.parameters.values(), *added])
        return wrapper

    return decorate


def estimator_settings(params: Mapping[str, Any], job: str) -> dict[str, Any]:
    """The estimator options among a ``job`` command's parsed ``params``: its ``estimator_settings``."""
    return {name: params[name] for name in estimator_options(job)}


def _annotation(option: Option, users: list[str], job: str) -> Any:
    """``Annotated[float | None, typer.Option("--alpha", help="rloo-dcv: …")]``: the option for Typer."""
    kind = option.kind | None if option.optional else option.kind
    return Annotated[
        kind,
        typer.Option(
            option.flag,
            metavar=None if option.choices is None else choices(option.choices),
            help=f"{', '.join(users)}: {option.help_for(job)}.",
            show_default=option.shown_default or True,
            rich_help_panel=ESTIMATORS,
        ),
    ]


def refuse_options_with_resume(ctx: typer.Context) -> None:
    """``--resume`` continues a run with the configuration in its manifest, so a run option given
    beside it would be silently ignored: refuse it instead (``--quiet`` only changes the report, and
    ``--threads`` only the speed: the machine may have changed, see :func:`resume_threads`)."""
    for param in ctx.command.params:
        if param.name in ("resume", "quiet", "threads"):
            continue
        if given(ctx, param.name):
            raise ConfigError(
                f"--resume continues a run with its own configuration; drop {param.opts[0]} "
                f"(start a new run to change it)"
            )


def resume_threads(ctx: typer.Context) -> int | None:
    """The ``--threads`` of a resumed run: as given, or ``None`` (not given) to keep the run's own."""
    return ctx.params["threads"] if given(ctx, "threads") else None


# Job options that only some estimators read, by what they relax (EstimatorInfo.relaxation): the
# relaxed prior and its KL are concrete's objective; every relaxation anneals its temperature.
RELAXATION_OPTIONS = {
    "prior_temperature": ("relaxed",),
    "kl": ("relaxed",),
    "anneal": ("relaxed", "straight-through"),
    "anneal_rate": ("relaxed", "straight-through"),
    "anneal_floor": ("relaxed", "straight-through"),
}
# Job options that do something only beside certain values of another (as ``Option.only_with``).
JOB_OPTIONS_ONLY_WITH = {
    "prior_temperature": {"kl": ("relaxed",)},
    "anneal_rate": {"anneal": ("exp",)},
    "anneal_floor": {"anneal": ("exp",)},
    "w_scale": {"objective": ("quadratic-form",)},
}


def refuse_contradictions(ctx: typer.Context, job: str) -> None:
    """Refuse an option given beside a value of another under which it does nothing
    (``--alpha-learning optimal`` with ``--alpha -0.1``, which fixes α): one line, exit 2.

    The rules are the estimator options' ``only_with`` and :data:`JOB_OPTIONS_ONLY_WITH`. Call it
    once the configuration is built, so that a bad value is named first.
    """
    p = ctx.params
    rules = {name: option.only_with for name, option in estimator_options(job).items()}
    rules.update(JOB_OPTIONS_ONLY_WITH)
    for name, only_with in rules.items():
        if name not in p or not given(ctx, name):
            continue
        for other, allowed in only_with.items():
            if other not in p or p[other] in allowed:
                continue
            if allowed == (None,):
                condition = f"when {flag_of(other)} is not given"
            else:
                condition = f"with {flag_of(other)} {' or '.join(map(str, allowed))}"
            remedy = "drop one of them" if given(ctx, other) else f"drop {flag_of(name)}"
            raise ConfigError(
                f"{flag_of(name)} {p[name]} does nothing with {flag_of(other)} {p[other]}: it applies "
                f"only {condition}; {remedy}"
            )


def refuse_lr_overridden(ctx: typer.Context) -> None:
    """``--lr`` sets the learning rates that ``--encoder-lr`` and ``--decoder-lr`` do not: beside
    both it sets none."""
    if all(given(ctx, name) for name in ("lr", "encoder_lr", "decoder_lr")):
        raise ConfigError("--lr does nothing beside both --encoder-lr and --decoder-lr; drop one of them")


def warn_unused_options(ctx: typer.Context, estimators: Iterable[str]) -> None:
    """Warn once, on stderr, about each option given that none of the chosen ``estimators`` uses
    (``--temperature`` with ``--estimator rloo``): the run would silently ignore it."""
    chosen = list(estimators)
    for name in ctx.params:
        users = option_users(name) if name in estimator_options() else _relaxation_users(name)
        if users is None or not given(ctx, name) or set(users) & set(chosen):
            continue
        print(
            f"dcvbench: warning: {flag_of(name)} is used by {', '.join(users)}; none of the chosen "
            f"estimators ({', '.join(chosen)}) uses it",
            file=sys.stderr,
        )


def _relaxation_users(name: str) -> list[str] | None:
    """The estimators that read the job option ``name`` (:data:`RELAXATION_OPTIONS`); ``None``: all."""
    if name not in RELAXATION_OPTIONS:
        return None
    kinds = RELAXATION_OPTIONS[name]
    return [estimator for estimator in estimator_names() if estimator_info(estimator).relaxation in kinds]


def refuse_given(ctx: typer.Context, names: Iterable[str], why: str) -> None:
    """Refuse, in one line, the first of the options ``names`` given on the command line: ``why``
    says what makes it meaningless, and the message ends ``; drop --option``."""
    for name in names:
        if given(ctx, name):
            raise ConfigError(f"{why}; drop {flag_of(name)}")


def given(ctx: typer.Context, name: str) -> bool:
    """Whether parameter ``name`` was given on the command line (not left at its default)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"


def toy_problem(ctx: typer.Context) -> ToyProblem:
    """The toy problem of a ``toy`` or ``variance`` command line."""
    p = ctx.params
    return ToyProblem(
        dim=p["dim"],
        target=p["target"],
        objective=p["objective"],
        w_scale=p["w_scale"],
        w_seed=p["w_seed"],
        latent=p["latent"],
        classes=p["classes"],
    )


def refuse_target_with_categorical(ctx: typer.Context, problem: ToyProblem) -> None:
    """The categorical objectives draw their targets (from ``--w-seed``): a ``--target`` would be ignored."""
    if problem.latent == "categorical" and given(ctx, "target"):
        raise ConfigError(
            "--target applies to binary latents only: the categorical objectives draw their targets "
            "from --w-seed; drop --target"
        )


def toy_latents(problem: ToyProblem) -> str:
    """``D=200, t=0.499`` or ``N=50 categorical, C=4``: the latents of a toy, for titles."""
    if problem.latent == "binary":
        return f"D={problem.dim}, t={problem.target}"
    return f"N={problem.dim} categorical, C={problem.classes}"


def training_options(p: Mapping[str, Any], job: str, config: type) -> dict[str, Any]:
    """The options ``vae`` and ``predict`` share, from their parsed command line ``p``, as keyword
    arguments of their configuration class ``config`` (whose defaults fill repeatable options left
    out). The learning rates fall back on ``--lr``."""
    shared = ("dataset", "data_dir", "arch", "k", "objective", "steps", "batch_size", "log_every")
    shared += ("eval_every", "eval_samples", "var_every", "var_method", "var_samples", "checkpoint_every")
    shared += ("device", "threads", "anneal", "anneal_rate", "anneal_floor", "out")
    return {
        **{name: p[name] for name in shared},
        "estimators": tuple(p["estimator"] or config.estimators),
        "seeds": tuple(p["seed"] or config.seeds),
        "encoder_lr": p["lr"] if p["encoder_lr"] is None else p["encoder_lr"],
        "decoder_lr": p["lr"] if p["decoder_lr"] is None else p["decoder_lr"],
        "estimator_settings": estimator_settings(p, job),
    }
