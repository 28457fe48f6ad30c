"""``dcvbench variance``: all chosen estimators at one fixed point, side by side.

The point is either the toy at a fixed ``θ`` (for categorical latents: uniform class probabilities, or
seeded random logits away from them) or a VAE checkpoint with a fixed minibatch (the run's variance
snapshot batch), where the relaxed estimators use the run's own temperatures at that step and its KL
variant. For each K and each estimator, ``--samples`` independent estimates are
drawn there (vectorised, see :mod:`dcvbench.measure.variance`) and summarised in one row of
``variance.parquet``. Estimators at the same K draw from generators in the same state, so those
whose noise has the same shape see the same random numbers (paired comparisons).

At equal cost instead (``budgets``), each estimator is measured, per budget, at the largest K whose
estimate costs at most that many evaluations of f on the point's latents
(:func:`~dcvbench.config.budget_ks`): ``k`` and ``evals`` differ between estimators, ``budget`` is
the block's (null in a study by K), and ``rloo``, the reference of the ratios, runs at its own K there.

``rloo-dcv`` without a fixed ``--alpha`` is evaluated at the variance-optimal ``α*`` of that point,
estimated from a separate set of draws (``alpha_source = "optimal"`` in the table).

Where the exact gradient is known — the toys, and with ``exact`` a VAE checkpoint whose latent space
is small enough to enumerate (:mod:`dcvbench.measure.exact`) — the same draws give each estimator's
quality against it (:class:`~dcvbench.measure.variance.GradientQuality`): ``bias_norm``, ``mse`` and
``cosine``, each with its ``_se``; at a checkpoint, of the logit gradient over all rows (``g / B``, as
``logit_variance``). Without the exact gradient those columns are absent.

Estimators with learned state (RODEO's control network, RELAX's and REBAR's control, NVIL's
baselines, rloo-dcv's α) are measured as built, except at a VAE checkpoint of a run that trained the
same estimator: there the run's learned state is loaded from the checkpoint, so the variance is that
of the trained estimator. With ``tune_steps`` the others' learned parts (not a control variate's α,
set to its optimum) are first trained at the point for that many estimates, on draws of their own
(``estimator_state`` is ``"checkpoint"``, ``"tuned N steps"`` or ``"fresh"``; null for estimators
without state). A fresh ``rodeo`` is ``rloo`` exactly (its weights start at 0): tune it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
import torch

from dcvbench.checkpoints import CHECKPOINT, load_checkpoint, load_into
from dcvbench.config import VarianceConfig, budget_ks, check_estimators, theta_probability
from dcvbench.estimators import (
    REFERENCE_ESTIMATOR,
    ControlVariateEstimator,
    Estimator,
    build_estimator,
    estimator_info,
)
from dcvbench.estimators.registry import check_objective
from dcvbench.jobs import NoProgress, Progress
from dcvbench.jobs.toy import make_toy
from dcvbench.measure.exact import (
    USER_MAX_CODES,
    check_enumerable,
    enumerated_gradient,
    exact_logit_gradient,
    family_code_count,
)
from dcvbench.measure.vae_variance import resample_encoder_variance
from dcvbench.measure.variance import optimal_alpha, resample_variance
from dcvbench.objectives import Objective, ProblemShape
from dcvbench.problems.categorical_toy import random_categorical_logits
from dcvbench.problems.user import UserProblem, row_tiled
from dcvbench.results import Run, prepare_output_root, table_from_records
from dcvbench.runtime import (
    derive_seed,
    make_generator,
    provenance,
    resolve_device,
    resolve_dtype,
    torch_threads,
)
from dcvbench.user_code import file_sha256, load_user_problem

WARMUP_DRAWS = 4  # one small call first, so one-off start-up costs stay out of the timings


@dataclass(frozen=True)
class VarianceStudy:
    run_id: str
    path: Path
    table: pd.DataFrame


class FixedPoint(Protocol):
    """Where a study measures: what it says about itself, α*, and one estimator's statistics."""

    problem: str
    shape: ProblemShape  # what estimators are built for here
    device: torch.device  # where its logits are, and so its generators and estimators
    settings: Mapping[str, Any]  # what they are built with here (option name → value)

    def context(self) -> dict: ...

    def optimal_alpha(
        self, estimator: ControlVariateEstimator, k: int, draws: int, generator: torch.Generator
    ) -> float: ...

    def measure(
        self,
        estimator: Estimator,
        k: int,
        draws: int,
        generator: torch.Generator,
        on_draws: Callable[[int], None],
    ) -> dict: ...

    def restore(self, name: str, estimator: Estimator) -> bool:
        """Load the learned state this point holds for estimator ``name``; whether it did."""
        ...

    def tune(self, estimator: Estimator, k: int, steps: int, generator: torch.Generator) -> None:
        """Train the estimator's learned parts here: ``steps`` estimates, each followed by its update."""
        ...


class ObjectivePoint:
    """An objective ``f`` at its logits ``[B, *latent]``, evaluated as it is (no rows to tile); with
    the exact gradient ``[B, *latent]`` where it is known, the bias z and the quality columns
    (:class:`~dcvbench.measure.variance.GradientQuality`), else neither. What the toy and the user's
    problem share: only where the objective, the logits and the truth come from differs."""

    problem: str

    def __init__(
        self,
        objective: Objective,
        logits: torch.Tensor,
        exact: torch.Tensor | None,
        shape: ProblemShape,
        settings: Mapping[str, Any],
    ):
        self.objective = objective
        self.logits = logits  # [B, *latent]
        self.exact = exact  # [B, *latent] or None
        self.shape = shape
        self.settings = settings
        self.device = logits.device

    def optimal_alpha(self, estimator, k, draws, generator) -> float:
        return optimal_alpha(estimator, self.logits, self.objective, k, draws, generator)

    def measure(self, estimator, k, draws, generator, on_draws) -> dict:
        resample_variance(estimator, self.logits, self.objective, k, WARMUP_DRAWS, _warmup(self.logits))
        result = resample_variance(
            estimator, self.logits, self.objective, k, draws, generator, on_draws, exact=self.exact
        )
        against_exact = {}
        if self.exact is not None:
            z = result.bias_z(self.exact)
            against_exact = {
                "bias_max_z": float(z.max()),
                "bias_mean_z": float(z.mean()),
                **asdict(result.errors.quality),
            }
        return {
            "variance": result.variance,
            **against_exact,
            "seconds_per_estimate": result.seconds_per_estimate,
        }

    def restore(self, name, estimator) -> bool:
        return False  # an objective at logits is not a run: every estimator is measured as built

    def tune(self, estimator, k, steps, generator) -> None:
        for _ in range(steps):
            estimator.update(estimator(self.logits, self.objective, k, generator))


class ToyPoint(ObjectivePoint):
    """The toy at its study logits ``[1, *latent]`` (:func:`study_logits`), with its exact gradient."""

    problem = "toy"

    def __init__(self, config: VarianceConfig, device: torch.device):
        toy = make_toy(config.problem, device, resolve_dtype(config.dtype))
        logits = study_logits(config, device, resolve_dtype(config.dtype))
        exact = toy.exact_gradient(logits)
        super().__init__(toy.objective, logits, exact, config.problem.shape, config.estimator_settings)
        self.config = config

    def context(self) -> dict:
        problem = self.config.problem
        binary = problem.latent == "binary"
        return {
            "problem": "toy",
            "latent": problem.latent,
            "classes": problem.classes,
            "objective": problem.objective,
            "dim": problem.dim,
            "target": problem.target if binary else None,  # the categorical objectives draw their targets
            "theta": self.config.theta,
        }


class UserPoint(ObjectivePoint):
    """The user's own problem (:mod:`dcvbench.problems.user`), in its own dtype and on its own device.

    The exact gradient is the problem's when it gives one (``exact_gradient = "given"``); otherwise,
    with at most :data:`~dcvbench.measure.exact.USER_MAX_CODES` codes per row, the sum over every code
    (``"enumerated"``, :func:`~dcvbench.measure.exact.enumerated_gradient`); else there is none
    (``None``: no bias or quality columns). ``name`` says which objective it is (the
    ``FILE.py:NAME`` it was loaded from, or the function's name); ``source_sha256`` the digest of
    that file's bytes, when it came from one.
    """

    problem = "user"

    def __init__(
        self, user: UserProblem, settings: Mapping[str, Any], name: str, source_sha256: str | None = None
    ):
        shape = user.shape
        exact, self.exact_source = user.exact_gradient, "given"
        if exact is None:
            self.exact_source = None
            if family_code_count(shape.family, shape.event) <= USER_MAX_CODES:
                exact = enumerated_gradient(user.objective, user.logits, shape.family)
                exact, self.exact_source = exact.to(user.logits.dtype), "enumerated"
        super().__init__(row_tiled(user), user.logits, exact, shape, settings)
        self.user_objective = user.objective  # as given, with its hooks (row_tiled may wrap it)
        self.name = name
        self.source_sha256 = source_sha256

    def context(self) -> dict:
        return {
            "problem": "user",
            "latent": self.shape.latent_type,
            "classes": self.shape.classes,
            "objective": self.name,
            "objective_sha256": self.source_sha256,
            "dim": self.shape.latent,
            "rows": self.logits.shape[0],
            "dtype": str(self.logits.dtype).removeprefix("torch."),
            "exact_gradient": self.exact_source,
        }


class VaePoint:
    """A VAE checkpoint and its run's fixed snapshot minibatch; the variance is the encoder's. With
    ``exact`` (an enumerable latent space), the quality columns of the logit gradient ``g / B``."""

    problem = "vae"

    def __init__(self, config: VarianceConfig, device: torch.device):
        from dcvbench.data import load_dataset
        from dcvbench.jobs.vae import evaluation_data, load_checkpointed_model

        self.model, run_config, self.manifest = load_checkpointed_model(config.checkpoint, device)
        self.device = device
        path = Path(config.checkpoint)
        self.checkpoint = path / CHECKPOINT if path.is_dir() else path
        # The run's estimator and its learned state (λ, s, ψ; baselines; α) as the checkpoint saved it.
        self.estimator_state = load_checkpoint(self.checkpoint, device).get("estimator")
        dataset = load_dataset(run_config.dataset, run_config.data_dir)
        self.run_config = run_config
        # The run's own targets: binarised pixels, or the intensities themselves.
        self.x = evaluation_data(
            dataset, run_config.batch_size, device, run_config.targets
        ).snapshot  # [B, P]
        with torch.no_grad():
            self.logits = self.model.encode(self.x)  # [B, *latent]
        self.shape = self.model.problem_shape
        # The relaxation as the run trained it at this step: its temperatures (annealed or not), its KL;
        # a run whose estimator has no temperature leaves the run's --temperature (None: each its own).
        step, trained = self.manifest["checkpoint_step"], self.manifest["estimator"]
        posterior, prior = run_config.temperatures(step, trained)
        if posterior is None:
            posterior = run_config.estimator_settings["temperature"]
        self.settings = {**config.estimator_settings, "temperature": posterior}
        # The bound a multi-sample-capable estimator trains: the run's --objective (else the ELBO).
        self.relaxation = {
            "prior_temperature": prior,
            "kl": run_config.kl,
            "bound": run_config.objective or "elbo",
        }
        # With --exact, the truth the quality columns compare the logit gradient with, by enumeration.
        self.exact = None
        if config.exact:
            check_enumerable(self.model)
            self.exact = exact_logit_gradient(self.model, self.x, **self.relaxation)  # [B, *latent]

    def context(self) -> dict:
        return {
            "problem": "vae",
            "latent": self.run_config.latent,
            "latent_vars": self.run_config.latent_vars,
            "classes": self.run_config.classes,
            "dataset": self.run_config.dataset,
            "arch": self.run_config.arch,
            "checkpoint_run": self.manifest["run_id"],
            "checkpoint_step": self.manifest["checkpoint_step"],
        }

    def optimal_alpha(self, estimator, k, draws, generator) -> float:
        objective = self.model.objective(
            self.x, self.logits, generative_grads=False, generator=generator, **self.relaxation
        )
        return optimal_alpha(estimator, self.logits, objective, k, draws, generator)

    def measure(self, estimator, k, draws, generator, on_draws) -> dict:
        model, x = self.model, self.x
        resample_encoder_variance(model, estimator, x, k, WARMUP_DRAWS, _warmup(x), **self.relaxation)
        result = resample_encoder_variance(
            model, estimator, x, k, draws, generator, **self.relaxation, on_draws=on_draws, exact=self.exact
        )
        quality = {} if result.logit_errors is None else asdict(result.logit_errors.quality)
        return {
            "variance": result.param_variance,
            "logit_variance": result.logit_variance,
            **quality,
            "seconds_per_estimate": result.seconds_per_estimate,
        }

    def restore(self, name, estimator) -> bool:
        if name != self.manifest["estimator"] or self.estimator_state is None:
            return False
        load_into(estimator, self.estimator_state, self.checkpoint, f"the {name} estimator of its run")
        return True

    def tune(self, estimator, k, steps, generator) -> None:
        for _ in range(steps):
            # A fresh objective each step: with several stochastic layers it samples those below.
            objective = self.model.objective(
                self.x, self.logits, generative_grads=False, generator=generator, **self.relaxation
            )
            estimator.update(estimator(self.logits, objective, k, generator))


def fixed_point(config: VarianceConfig, problem: UserProblem | None = None) -> FixedPoint:
    """Where ``config`` measures: a VAE checkpoint, the user's ``problem`` (or the one its
    ``objective`` file makes: importing it runs its code), or the toy."""
    if config.checkpoint:
        return VaePoint(config, resolve_device(config.device))
    if problem is not None:
        return UserPoint(problem, config.estimator_settings, function_name(problem.objective))
    if config.objective is not None:
        problem = load_user_problem(config.objective)
        digest = file_sha256(config.objective, "--objective")
        return UserPoint(problem, config.estimator_settings, config.objective, digest)
    return ToyPoint(config, resolve_device(config.device))


def function_name(objective: Callable) -> str:
    """What a table calls an objective given as a function: its qualified name, or its class's."""
    return getattr(objective, "__qualname__", type(objective).__qualname__)


def study_logits(config: VarianceConfig, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The toy's point: ``η = logit(θ)`` ``[1, D]``, θ constant or seeded-random in (0.05, 0.95);
    for categorical latents ``[1, N, C]``, zero (uniform) or seeded random logits in ``[−3, 3]``
    (:func:`~dcvbench.problems.categorical_toy.random_categorical_logits`)."""
    dim = config.problem.dim
    if config.problem.latent == "categorical":
        classes = config.problem.classes
        if config.theta == "uniform":
            return torch.zeros(1, dim, classes, device=device, dtype=dtype)
        seed = derive_seed(config.seed, "variance", "theta")
        return random_categorical_logits(dim, classes, seed=seed, device=device, dtype=dtype)
    theta = theta_probability(config.theta)
    if theta is None:
        generator = make_generator(torch.device("cpu"), config.seed, "variance", "theta")
        probs = 0.05 + 0.9 * torch.rand(1, dim, generator=generator, dtype=torch.float64)
    else:
        probs = torch.full((1, dim), theta, dtype=torch.float64)
    return torch.logit(probs).to(device=device, dtype=dtype)


@dataclass(frozen=True)
class Block:
    """Estimators side by side in the table: each at its K, all at one K (``budget`` ``None``) or
    each at the largest K within ``budget`` evaluations of f; the reference ``rloo`` included where
    it can run, since every ratio of the block is to it."""

    label: str  # for progress: "K=2", "budget 8"
    budget: int | None
    ks: dict[str, int]  # estimator → K


def blocks(config: VarianceConfig, point: FixedPoint) -> list[Block]:
    """The table's blocks at ``point``: one per K, or one per budget; a ``ConfigError`` for an
    estimator that a K or a budget excludes there, or that does not run on its problem, and an
    ``EstimatorError`` for one that needs a hook the user's objective lacks (``info.requires``)."""
    shape = point.shape
    reference = estimator_info(REFERENCE_ESTIMATOR)
    found = []
    for k in config.ks:
        check_estimators(config.estimators, k, point.problem, shape.latent_type)
        ks = dict.fromkeys(config.estimators, k)
        found.append(Block(f"K={k}", None, _with_reference(ks, k if k >= reference.min_k else None)))
    if config.budgets:
        check_estimators(config.estimators, None, point.problem, shape.latent_type)
    for budget in config.budgets:
        ks = budget_ks(config.estimators, budget, shape)
        found.append(
            Block(f"budget {budget}", budget, _with_reference(ks, reference.k_for_budget(budget, shape)))
        )
    if isinstance(point, UserPoint):
        for name in config.estimators:
            check_objective(name, point.user_objective, shape.latent_type)
    return found


def _with_reference(ks: dict[str, int], reference_k: int | None) -> dict[str, int]:
    """``ks`` and the reference ``rloo`` at ``reference_k``, unless chosen already or it cannot run
    there (``None``)."""
    if reference_k is None or REFERENCE_ESTIMATOR in ks:
        return ks
    return {**ks, REFERENCE_ESTIMATOR: reference_k}


def run_variance(
    config: VarianceConfig, progress: Progress | None = None, problem: UserProblem | None = None
) -> VarianceStudy:
    """Measure every (K or budget, estimator) of ``config`` at its point, with ``config.threads``
    torch threads; write and return the table. ``problem``: the user's, made already (``compare``),
    in place of the toy."""
    progress = progress or NoProgress()
    with torch_threads(config.threads):
        point = fixed_point(config, problem)
        device = point.device
        measured_in = blocks(config, point)  # at a checkpoint the run's latents are known only now
        root = prepare_output_root(config.out)
        manifest = {
            "job": "variance",
            "config": asdict(config),
            "point": point.context(),
            "device": str(device),
            "versions": provenance(device),
        }
        identity = {"problem": point.problem, "seed": config.seed}
        kind = "" if point.shape.latent_type == "binary" else "-categorical"
        with Run.create(
            root, f"variance-{point.problem}{kind}-seed{config.seed}", identity, (), manifest
        ) as run:
            records = []
            progress.plan(len(measured_in), sum(len(block.ks) for block in measured_in) * config.samples)
            for block in measured_in:
                measured = len(block.ks)
                progress.start(f"variance {block.label}: {measured} estimators", measured * config.samples)
                rows = {}
                for name, k in block.ks.items():
                    rows[name] = _measure(config, point, name, k, block.budget, device, progress.advance)
                reference = rows.get(REFERENCE_ESTIMATOR)
                for name in config.estimators:
                    row = rows[name]
                    for column in ("variance", "logit_variance"):
                        if column in row:
                            base = reference[column] if reference else None
                            ratio = variance_ratio(row[column], base)
                            row[column.replace("variance", "variance_ratio")] = ratio
                    records.append({"run_id": run.run_id, **point.context(), **row})
            table = table_from_records(records)
            run.write_table("variance.parquet", table)
        return VarianceStudy(run.run_id, run.path, table.to_pandas())


def variance_ratio(variance: float, reference: float | None) -> float | None:
    """``variance / reference``, or ``None`` (undefined) without a reference or where its variance is
    0: at ``θ`` near 0 or 1 every draw of ``rloo`` can be the same code, and its estimate a constant."""
    if reference is None or not reference > 0:
        return None
    return variance / reference


def _measure(
    config: VarianceConfig,
    point: FixedPoint,
    name: str,
    k: int,
    budget: int | None,
    device: torch.device,
    on_draws: Callable[[int], None],
) -> dict:
    info = estimator_info(name)
    estimator = build_estimator(name, point.settings, point.shape).to(device)
    restored = point.restore(name, estimator)
    # Learned parts trained at the point on draws of their own (α of a control variate has its optimum).
    tuned = (
        config.tune_steps > 0
        and not restored
        and bool(estimator.state_dict())
        and not isinstance(estimator, ControlVariateEstimator)
    )
    if tuned:
        point.tune(
            estimator, k, config.tune_steps, make_generator(device, config.seed, "variance", "train", k)
        )
    alpha_source = None
    if isinstance(estimator, ControlVariateEstimator):
        alpha_source = "fixed"
        if config.estimator_settings["alpha"] is None:
            tune_generator = make_generator(device, config.seed, "variance", "tune", k)
            estimator.set_alpha(point.optimal_alpha(estimator, k, config.samples, tune_generator))
            alpha_source = "optimal"
    generator = make_generator(device, config.seed, "variance", k)
    measured = point.measure(estimator, k, config.samples, generator, on_draws)
    evals = info.evals(k, point.shape)
    return {
        "estimator": name,
        "k": k,
        "evals": evals,
        "budget": budget,
        "unbiased": info.unbiased,
        **measured,
        "cost_variance": measured["variance"] * evals,
        "alpha": float(estimator.alpha.detach()) if alpha_source else None,
        "alpha_source": alpha_source,
        "estimator_state": _state_source(estimator, restored, tuned, config.tune_steps),
        "samples": config.samples,
        "seed": config.seed,
    }


def _state_source(estimator: Estimator, restored: bool, tuned: bool, steps: int) -> str | None:
    """Where the measured estimator's learned state came from (``None``: it has none)."""
    if not estimator.state_dict():
        return None
    if restored:
        return "checkpoint"
    return f"tuned {steps} steps" if tuned else "fresh"


def _warmup(like: torch.Tensor) -> torch.Generator:
    """A throw-away stream for the warm-up call, so the measured draws do not depend on it."""
    return torch.Generator(device=like.device).manual_seed(0)
