"""Options shared by several commands, and the estimators' own options, generated from the registry.

Defaults come from the configuration dataclasses of :mod:`dcvbench.config` (``ToyProblem.dim``), an
estimator option's from :func:`~dcvbench.estimators.default_settings` of the job: the command line
never writes a default of its own.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Annotated, Any

import typer

from dcvbench.config import TOY_CLASSES, ToyProblem
from dcvbench.estimators import default_settings, estimator_options
from dcvbench.estimators.options import Option
from dcvbench.estimators.registry import option_users
from dcvbench.runtime import ConfigError

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
CheckpointEvery = Annotated[
    int, typer.Option(help="Checkpoint (atomically, for --resume) every N steps, at a flushed row.")
]
# The options of the model-training jobs (vae, predict), their defaults the job's config's.
Dataset = Annotated[
    str, typer.Option(help="mnist-subset (embedded, default), mnist, fashion-mnist or omniglot.")
]
DataDir = Annotated[str | None, typer.Option(help="Directory of the data set's files.")]
Bound = Annotated[
    str | None,
    typer.Option(
        "--objective",
        help=(
            "elbo (m = 1) or iwae (the K-sample bound, m = K: vimco, concrete). "
            "Default: each estimator's own (vimco: iwae; the rest: elbo)."
        ),
    ),
]
Steps = Annotated[int, typer.Option(help="Training steps.")]
LogEvery = Annotated[int, typer.Option(help="Write a row (training bound, α, s/step) every N steps.")]
EvalEvery = Annotated[int, typer.Option(help="Held-out bounds every N steps.")]
EvalSamples = Annotated[int, typer.Option(help="Samples per datum of the held-out bound.")]
VarEvery = Annotated[int, typer.Option(help="Resample variance every N steps.")]
VarMethod = Annotated[str, typer.Option(help="ema, resample or both (docs/measurement.md).")]
VarSamples = Annotated[int, typer.Option(help="Estimates drawn for the resample variance.")]
Seeds = Annotated[list[int] | None, typer.Option("--seed", help="Seed (repeatable: one run per seed).")]
Anneal = Annotated[
    str, typer.Option(help="concrete, st-concrete: none, or exp: λ_t = max(floor, λ_0·exp(−rate·t)).")
]
AnnealRate = Annotated[float, typer.Option(help="--anneal exp: decay rate per step.")]
AnnealFloor = Annotated[float, typer.Option(help="--anneal exp: the lowest temperature.")]
Resume = Annotated[
    str | None,
    typer.Option(
        metavar="RUN_DIR",
        help="Continue this run directory from its last checkpoint, with its own configuration.",
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
    return Annotated[kind, typer.Option(option.flag, help=f"{', '.join(users)}: {option.help_for(job)}")]


def refuse_options_with_resume(ctx: typer.Context) -> None:
    """``--resume`` continues a run with the configuration in its manifest, so a run option given
    beside it would be silently ignored: refuse it instead (``--quiet`` only changes the report)."""
    for param in ctx.command.params:
        if param.name in ("resume", "quiet"):
            continue
        if given(ctx, param.name):
            raise ConfigError(
                f"--resume continues a run with its own configuration; drop {param.opts[0]} "
                f"(start a new run to change it)"
            )


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
    shared += ("device", "anneal", "anneal_rate", "anneal_floor", "out")
    return {
        **{name: p[name] for name in shared},
        "estimators": tuple(p["estimator"] or config.estimators),
        "seeds": tuple(p["seed"] or config.seeds),
        "encoder_lr": p["lr"] if p["encoder_lr"] is None else p["encoder_lr"],
        "decoder_lr": p["lr"] if p["decoder_lr"] is None else p["decoder_lr"],
        "estimator_settings": estimator_settings(p, job),
    }
