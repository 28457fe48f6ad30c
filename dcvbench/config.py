"""Settings of each job as frozen dataclasses: one field per CLI option, saved verbatim in manifests.

Validation happens here, at construction, so that bad input is refused before anything is written;
each error names the bad value and, where there is a choice, the valid ones.

A setting whose default depends on another (the latent type's sizes, ``--theta``) is ``None`` when
not given and is filled in at construction, so a manifest records the values a run really used.
"""

from __future__ import annotations

import functools
import math
import numbers
import types
import typing
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from dcvbench.data import dataset_names
from dcvbench.data.sampler import TARGETS
from dcvbench.estimators import (
    EstimatorError,
    EstimatorInfo,
    check_settings,
    default_settings,
    estimator_info,
    estimator_names,
    estimator_options,
    start_temperature,
    temperature_problem,
)
from dcvbench.estimators.registry import did_you_mean
from dcvbench.latent import LATENT_TYPES
from dcvbench.objectives import ProblemShape
from dcvbench.problems.categorical_toy import CATEGORICAL_OBJECTIVES
from dcvbench.problems.predict import parse_arch as parse_predict_arch
from dcvbench.problems.toy import OBJECTIVES
from dcvbench.problems.vae import (
    BOUNDS,
    CLASSES,
    KL_VARIANTS,
    LATENT_BITS,
    PIXELS,
    PRIOR_TEMPERATURE,
    VARIABLES,
    parse_arch,
)
from dcvbench.runtime import DEFAULT_THREADS, DEVICES, DTYPES, ConfigError

# The default estimators of `dcvbench toy` per latent type: the paper's comparison plus the oracle
# baseline; for categorical latents the Gumbel-softmax relaxation stands in for DisARM, which has no
# categorical form.
TOY_DEFAULT_ESTIMATORS = {
    "binary": ("rloo", "rloo-dcv", "disarm", "exact-baseline"),
    "categorical": ("rloo", "rloo-dcv", "concrete", "exact-baseline"),
}
VARIANCE_DEFAULT_ESTIMATORS = {
    "binary": ("rloo", "rloo-dcv", "disarm"),
    "categorical": ("rloo", "rloo-dcv", "concrete"),
}
TOY_OBJECTIVES = {"binary": OBJECTIVES, "categorical": CATEGORICAL_OBJECTIVES}
TOY_CLASSES = 4  # the categorical toy's classes when not given (the example of issue #8)
# The largest |--target|: f = mean (b − t)² must keep its two values per bit, t² and (1 − t)², apart
# in float32 (their gap 2|t| over t²'s rounding error t²·2⁻²⁴ is 2²⁵/|t| > 30 up to here); far
# beyond it t² overflows (|t| > 1e154 in float64).
TARGET_BOUND = 1e6
DEFAULT_K = 2  # samples per estimate of the VAE and the variance study when neither K nor a budget is given
# Where a variance study puts categorical latents: seeded random logits (away from uniform), or uniform.
CATEGORICAL_THETAS = ("random", "uniform")


@dataclass(frozen=True)
class ToyProblem:
    """The toy objective and its latents: ``dim`` bits (DESIGN §4.1), or ``dim`` categorical
    variables of ``classes`` classes (§3.6; objectives of :mod:`dcvbench.problems.categorical_toy`)."""

    dim: int = 200
    target: float = 0.499  # binary objectives only: the categorical ones draw their targets
    objective: str = "separable"
    w_scale: float = 1.0  # quadratic-form: scale of the Gaussian W
    w_seed: int = 0  # quadratic-form's W and the categorical separable's targets: the same per seed
    latent: str = "binary"
    classes: int | None = None  # categorical: C (None: TOY_CLASSES); binary: none

    def __post_init__(self):
        _positive("--dim", self.dim)
        if not abs(self.target) <= TARGET_BOUND:  # NaN fails too
            raise ConfigError(f"--target must be in [-{TARGET_BOUND:g}, {TARGET_BOUND:g}], got {self.target}")
        _fill(self, "classes", latent_classes(self.latent, self.classes, TOY_CLASSES))
        objectives = TOY_OBJECTIVES[self.latent]
        if self.objective not in objectives:
            raise ConfigError(
                f"unknown objective {self.objective!r}{_for_latent(self.latent)}; "
                f"choose from: {', '.join(objectives)}"
            )
        _finite("--w-scale", self.w_scale)

    @property
    def shape(self) -> ProblemShape:
        """What the toy's estimators are built for: ``dim`` bits or categorical variables."""
        return ProblemShape(self.dim, classes=self.classes)


@dataclass(frozen=True)
class ToyConfig:
    """``dcvbench toy``: train the toy logits with each estimator, measuring variance as it goes."""

    problem: ToyProblem = field(default_factory=ToyProblem)
    estimators: tuple[str, ...] = TOY_DEFAULT_ESTIMATORS["binary"]
    k: int = 2
    steps: int = 2000
    lr: float = 0.01  # RMSprop(decay 0.9, ε 1e-7 outside the root), the published toy's optimiser
    maximize: bool = True  # the published toy maximises E f
    log_every: int = 10
    var_every: int = 20
    var_samples: int = 2000
    seeds: tuple[int, ...] = (0,)
    device: str = "auto"
    threads: int = DEFAULT_THREADS  # torch threads (not part of a run's identity: results.INVOCATION_FIELDS)
    dtype: str = "float64"  # the toy's gradients are ~1e-5: float64 keeps the variance exact
    # Every estimator option by name (dcvbench.estimators.estimator_options); not given: the toy's
    # defaults (the published toy's α optimiser, RMSprop at lr 5e-4).
    estimator_settings: dict[str, Any] = field(default_factory=lambda: default_settings("toy"))
    out: str = "results"
    checkpoint_every: int = 500  # a toy checkpoint is tiny; this bounds the work lost to a kill

    def __post_init__(self):
        check_estimators(self.estimators, self.k, "toy", self.problem.latent)
        _positive("--steps", self.steps)
        _positive("--lr", self.lr)
        _positive("--log-every", self.log_every)
        _positive("--var-every", self.var_every)
        _positive("--checkpoint-every", self.checkpoint_every)
        _at_least("--var-samples", self.var_samples, 2)
        _check_seeds(self.seeds)
        _check_runtime(self.device, self.dtype, self.threads)
        _fill(self, "estimator_settings", estimator_settings(self.estimator_settings, "toy"))
        _check_temperatures(self.estimators, self.estimator_settings)


# A variance study's draws at a VAE checkpoint when not given: each estimate costs passes through the
# networks, so fewer than the toy's (VarianceConfig.samples).
CHECKPOINT_SAMPLES = 1000


@dataclass(frozen=True)
class VarianceConfig:
    """``dcvbench variance``: every estimator's variance and bias at one fixed point, side by side."""

    problem: ToyProblem = field(default_factory=ToyProblem)
    # Binary: one probability for every coordinate, or "random" (seeded); None: "0.5".
    # Categorical: "random" (seeded logits away from uniform) or "uniform"; None: "uniform".
    theta: str | None = None
    checkpoint: str | None = None  # a VAE run's checkpoint (or run directory): the point instead
    estimators: tuple[str, ...] = VARIANCE_DEFAULT_ESTIMATORS["binary"]
    # Every estimator at each K; None: (DEFAULT_K,), or none when budgets are given.
    ks: tuple[int, ...] | None = None
    # Equal cost instead: per budget, each estimator at the largest K whose estimate costs at most that
    # many evaluations of f (budget_ks); exclusive with ks.
    budgets: tuple[int, ...] = ()
    samples: int = 20000
    seed: int = 0
    device: str = "auto"
    threads: int = DEFAULT_THREADS  # torch threads (not part of a run's identity: results.INVOCATION_FIELDS)
    dtype: str = "float64"  # the toy's; a VAE checkpoint is measured in its own precision
    estimator_settings: dict[str, Any] = field(default_factory=lambda: default_settings("variance"))
    out: str = "results"
    exact: bool = False  # at a checkpoint: the exact gradient by enumeration, for bias norm, MSE, cosine
    # Estimates (each followed by the estimator's update) that train an estimator's learned parts at
    # the point before it is measured; 0: as built, or as its checkpoint's run left them.
    tune_steps: int = 0
    # The user's problem instead of the toy: "path/to/file.py:make_problem" (dcvbench.problems.user),
    # whose file the job imports, running its code.
    objective: str | None = None

    def __post_init__(self):
        if self.ks is None:
            _fill(self, "ks", () if self.budgets else (DEFAULT_K,))
        if self.ks and self.budgets:
            raise ConfigError("--budget sets each estimator's K: give --k or --budget, not both")
        if not self.ks and not self.budgets:
            raise ConfigError("give at least one --k or --budget")
        if self.exact and self.checkpoint is None:
            raise ConfigError("--exact is for a --checkpoint: the toy's exact gradient is always known")
        if self.objective is not None and self.checkpoint is not None:
            raise ConfigError("--objective FILE.py:NAME measures your problem, --checkpoint a VAE: give one")
        # At a checkpoint or the user's problem the latent type (and a budget's K) is known once the run's
        # manifest is read or the problem made (the job checks the estimators again then); here they need
        # only exist for some latent type. A user's objective is a function of b, as the toy's.
        toy = self.checkpoint is None and self.objective is None
        latent = self.problem.latent if toy else None
        problem = "vae" if self.checkpoint is not None else "toy" if toy else "user"
        for k in self.ks or (None,):
            check_estimators(self.estimators, k, problem, latent)
        for budget in self.budgets:
            _check_budget(budget)
            if toy:
                budget_ks(self.estimators, budget, self.problem.shape)
        _at_least("--samples", self.samples, 2)
        _at_least("--tune-steps", self.tune_steps, 0)
        _check_seeds((self.seed,))
        if self.problem.latent == "binary":
            _fill(self, "theta", "0.5" if self.theta is None else self.theta)
            theta_probability(self.theta)
        else:
            _fill(self, "theta", "uniform" if self.theta is None else self.theta)
            if self.theta not in CATEGORICAL_THETAS:
                raise ConfigError(
                    f"--theta {self.theta!r}: categorical latents take {' or '.join(CATEGORICAL_THETAS)}, "
                    "not a probability"
                )
        _check_runtime(self.device, self.dtype, self.threads)
        _fill(self, "estimator_settings", estimator_settings(self.estimator_settings, "variance"))
        _check_temperatures(self.estimators, self.estimator_settings)


@dataclass(frozen=True)
class VaeProtocol:
    """The optimisation settings of one published VAE protocol (DESIGN §4.2)."""

    batch_size: int
    encoder_lr: float
    decoder_lr: float
    learn_prior: bool
    prior_lr: float
    center_inputs: bool
    init_output_bias: bool


VAE_PROTOCOLS = {
    # Double-CV / RODEO: batch 100, Adam 1e-3 for both networks, fixed Bernoulli(½) prior.
    "dcv": VaeProtocol(
        100, 1e-3, 1e-3, learn_prior=False, prior_lr=1e-2, center_inputs=False, init_output_bias=False
    ),
    # DisARM / ARMS: batch 50, Adam 1e-4, learned prior (SGD 1e-2), mean-centred inputs, decoder
    # output bias at the logit of the mean image. Its numbers are not comparable with "dcv"'s.
    "disarm": VaeProtocol(
        50, 1e-4, 1e-4, learn_prior=True, prior_lr=1e-2, center_inputs=True, init_output_bias=True
    ),
}
VAR_METHODS = ("ema", "resample", "both")
# Temperature schedules of the relaxed estimators: constant, or λ_t = max(floor, λ_0·exp(−rate·t)).
ANNEAL_SCHEDULES = ("none", "exp")


class TrainsBounds:
    """What the model jobs (``vae``, ``predict``) share: ``objective`` (what each estimator trains),
    each run's K and the checks of the training loop's settings."""

    estimators: tuple[str, ...]
    objective: str | None
    latent: str
    k: int | None
    budget: int | None

    def run_k(self, estimator: str, shape: ProblemShape) -> int:
        """The K of a run of ``estimator`` whose (first) stochastic layer has latents of ``shape``:
        ``k``, or with a ``budget`` the largest K whose estimate costs at most that many evaluations
        of f (:func:`budget_ks`)."""
        if self.budget is None:
            return self.k
        return budget_ks((estimator,), self.budget, shape)[estimator]

    def _check_objective(self) -> None:
        if self.objective is None:
            return
        if self.objective not in BOUNDS:
            raise ConfigError(f"unknown --objective {self.objective!r}; choose from: {', '.join(BOUNDS)}")
        for name in self.estimators:
            bounds = estimator_info(name, self.latent).bounds
            if self.objective not in bounds:
                trains = " or ".join(bounds)
                raise ConfigError(f"{name} does not train --objective {self.objective}; it trains {trains}")

    def bound(self, estimator: str) -> str:
        """What ``estimator`` trains in this run: ``objective``, or (not given) the estimator's own."""
        return self.objective or estimator_info(estimator, self.latent).bounds[0]

    def _check_training(self, job: str) -> None:
        """The settings of the training loop both jobs run (jobs/trainer.py); fills in the estimator
        settings of ``job``."""
        for option, value in (
            ("--steps", self.steps),
            ("--batch-size", self.batch_size),
            ("--encoder-lr", self.encoder_lr),
            ("--decoder-lr", self.decoder_lr),
            ("--log-every", self.log_every),
            ("--eval-every", self.eval_every),
            ("--eval-samples", self.eval_samples),
            ("--var-every", self.var_every),
            ("--checkpoint-every", self.checkpoint_every),
        ):
            _positive(option, value)
        if self.var_method not in VAR_METHODS:
            raise ConfigError(
                f"unknown --var-method {self.var_method!r}; choose from: {', '.join(VAR_METHODS)}"
            )
        _at_least("--var-samples", self.var_samples, 2)
        _check_seeds(self.seeds)
        _check_runtime(self.device, "float32", self.threads)
        _fill(self, "estimator_settings", estimator_settings(self.estimator_settings, job))
        _check_temperatures(self.estimators, self.estimator_settings, self.anneal, self.anneal_floor)

    def start_temperatures(self) -> dict[str, float]:
        """``{"concrete's temperature": λ_0, …}``: where each chosen estimator with a temperature starts."""
        starts = {name: start_temperature(name, self.estimator_settings) for name in self.estimators}
        return {f"{name}'s temperature": start for name, start in starts.items() if start is not None}


@dataclass(frozen=True)
class VaeConfig(TrainsBounds):
    """``dcvbench vae``: train a VAE with binary (DESIGN §4.2) or categorical (§3.6) latents with each
    estimator."""

    dataset: str = "mnist-subset"
    data_dir: str | None = None
    # What the VAE is trained and scored on: dynamically binarised images, or the grey levels as soft
    # Bernoulli targets (the ReinMax paper's MNIST; its bounds are not comparable with binarised ones).
    targets: str = "binarized"
    arch: str = "linear"  # or a name in the Concrete paper's notation: 200H~200H~784V, …
    latent: str = "binary"
    # D bits (of the first stochastic layer) or N categorical variables; None: 200 bits (or the
    # width the architecture's name gives), 20 variables.
    latent_vars: int | None = None
    classes: int | None = None  # categorical: C (None: 10, as the Gumbel-softmax paper); binary: none
    k: int | None = None  # None: DEFAULT_K, or none when a budget is given
    # Equal cost instead of k: each estimator trains at the largest K whose estimate (of the first
    # stochastic layer) costs at most this many evaluations of f (run_k); its run's manifest says which.
    budget: int | None = None
    estimators: tuple[str, ...] = ("rloo-dcv",)
    # What the estimators train: "elbo" (m = 1) or "iwae" (the K-sample bound, m = K); None: each its
    # own (the ELBO; VIMCO's is the K-sample bound). An estimator that cannot train it is refused.
    objective: str | None = None
    protocol: str = "dcv"
    steps: int = 2000
    batch_size: int = 100
    encoder_lr: float = 1e-3
    decoder_lr: float = 1e-3
    learn_prior: bool = False
    prior_lr: float = 1e-2
    center_inputs: bool = False
    init_output_bias: bool = False
    log_every: int = 50
    eval_every: int = 500
    eval_samples: int = 100  # importance samples per datum for the held-out bound (really, not K)
    var_every: int = 250
    var_method: str = "both"
    var_samples: int = 100
    checkpoint_every: int = 500
    seeds: tuple[int, ...] = (0,)
    device: str = "auto"
    threads: int = DEFAULT_THREADS  # torch threads (not part of a run's identity: results.INVOCATION_FIELDS)
    # Every estimator option (not given: the VAE's defaults, α by Adam at 1e-3); its temperature is
    # the posterior's (concrete, st-concrete).
    estimator_settings: dict[str, Any] = field(default_factory=lambda: default_settings("vae"))
    # The relaxation (concrete, st-concrete; DESIGN §3.3); the prior's temperature, as the posterior's,
    # is the commonly used default.
    prior_temperature: float = PRIOR_TEMPERATURE
    kl: str = "relaxed"  # concrete's latent term: Concrete densities, or the analytic discrete KL
    anneal: str = "none"
    anneal_rate: float = 1e-4  # per step: 2/3 → 0.55 over 2,000 steps, → the floor by ~2,900
    anneal_floor: float = 0.5  # the Gumbel-softmax paper's floor (Jang, Gu & Poole 2017)
    out: str = "results"

    @classmethod
    def for_protocol(cls, protocol: str = "dcv", **overrides) -> VaeConfig:
        """The protocol's settings, with any explicit ``overrides`` (``None`` means "not given")."""
        if protocol not in VAE_PROTOCOLS:
            raise ConfigError(f"unknown protocol {protocol!r}; choose from: {', '.join(VAE_PROTOCOLS)}")
        given = {name: value for name, value in overrides.items() if value is not None}
        return cls(protocol=protocol, **{**asdict(VAE_PROTOCOLS[protocol]), **given})

    def __post_init__(self):
        if self.dataset not in dataset_names():
            raise ConfigError(f"unknown dataset {self.dataset!r}; choose from: {', '.join(dataset_names())}")
        if self.protocol not in VAE_PROTOCOLS:
            raise ConfigError(f"unknown protocol {self.protocol!r}; choose from: {', '.join(VAE_PROTOCOLS)}")
        if self.targets not in TARGETS:
            raise ConfigError(f"unknown --targets {self.targets!r}; choose from: {', '.join(TARGETS)}")
        _fill(self, "classes", latent_classes(self.latent, self.classes, CLASSES))
        self._check_arch()
        self._check_k()
        self._check_objective()
        _positive("--latent-vars", self.latent_vars)
        _positive("--prior-lr", self.prior_lr)
        self._check_training("vae")
        self._check_relaxation()

    def _check_arch(self) -> None:
        """A known architecture whose first layer is ``latent_vars`` wide (filled from the name)."""
        default = LATENT_BITS if self.latent == "binary" else VARIABLES
        if self.latent_vars is not None:
            _positive("--latent-vars", self.latent_vars)
        try:
            layout = parse_arch(self.arch, default if self.latent_vars is None else self.latent_vars, PIXELS)
        except ValueError as error:
            raise ConfigError(f"--arch: {error}") from None
        if self.latent_vars is None:
            _fill(self, "latent_vars", layout.widths[0])
        elif layout.widths[0] != self.latent_vars:
            raise ConfigError(
                f"--arch {self.arch} has {layout.widths[0]} latents next to the pixels, but --latent-vars "
                f"is {self.latent_vars}; drop one of them"
            )
        if layout.depth > 1 and self.latent != "binary":
            raise ConfigError(f"--arch {self.arch} has {layout.depth} stochastic layers: binary latents only")
        if layout.depth > 1 and self.kl == "analytic":
            raise ConfigError(
                f"--kl analytic is for one stochastic layer; --arch {self.arch} has {layout.depth}"
            )

    def _check_k(self) -> None:
        """A K for every estimator, or a budget that each one's cheapest estimate fits; not both."""
        if self.budget is None:
            _fill(self, "k", DEFAULT_K if self.k is None else self.k)
            check_estimators(self.estimators, self.k, "vae", self.latent)
            return
        if self.k is not None:
            raise ConfigError(
                f"--budget {self.budget} sets each estimator's K: give --k or --budget, not both"
            )
        _check_budget(self.budget)
        check_estimators(self.estimators, None, "vae", self.latent)
        budget_ks(self.estimators, self.budget, ProblemShape(self.latent_vars, classes=self.classes))

    @property
    def depth(self) -> int:
        """The number of stochastic layers of ``arch``."""
        return parse_arch(self.arch, self.latent_vars, PIXELS).depth

    def _check_relaxation(self) -> None:
        _positive("--prior-temperature", self.prior_temperature)
        _check_temperature("--prior-temperature", self.prior_temperature)
        if self.kl not in KL_VARIANTS:
            raise ConfigError(f"unknown --kl {self.kl!r}; choose from: {', '.join(KL_VARIANTS)}")
        starts = self.start_temperatures()
        if self.kl == "relaxed" and any(estimator_info(n).relaxation == "relaxed" for n in self.estimators):
            starts["--prior-temperature"] = self.prior_temperature  # the relaxed prior's density
        _check_anneal(self.anneal, self.anneal_rate, self.anneal_floor, starts)

    def temperatures(self, step: int, estimator: str) -> tuple[float | None, float]:
        """The (posterior, prior) temperatures of training step ``step`` (1-based; 0: the start) for a
        run of ``estimator`` (posterior ``None`` for an estimator without a temperature).

        Constant without annealing; with ``anneal="exp"`` each is ``max(floor, λ_0·exp(−rate·step))``,
        a function of the step alone, so a resumed run anneals exactly as an uninterrupted one.
        """
        posterior = start_temperature(estimator, self.estimator_settings)
        anneal = functools.partial(_annealed, self.anneal, self.anneal_rate, self.anneal_floor, step=step)
        return None if posterior is None else anneal(posterior), anneal(self.prior_temperature)


@dataclass(frozen=True)
class PredictConfig(TrainsBounds):
    """``dcvbench predict``: structured prediction (the Concrete paper's §5.2) with each estimator.

    The lower half of a binarised digit from its upper half through one or two layers of binary
    units (:class:`~dcvbench.problems.predict.Predictor`); trained as the VAE is (Adam, batch 100:
    the double-CV protocol's settings), scored by the K-sample bound on ``log p(x_lower | x_upper)``
    with ``eval_samples`` samples (its negative is the test NLL).
    """

    dataset: str = "mnist-subset"
    data_dir: str | None = None
    arch: str = "392V-240H-240H-392V"
    k: int = 2
    estimators: tuple[str, ...] = ("rloo-dcv",)
    # "elbo": E log p(x_l|h) (m = 1); "iwae": log (1/K) Σ_k p(x_l|h_k) (m = K); None: each its own.
    objective: str | None = None
    steps: int = 2000
    batch_size: int = 100
    encoder_lr: float = 1e-3
    decoder_lr: float = 1e-3
    log_every: int = 50
    eval_every: int = 500
    eval_samples: int = 100  # samples per datum of the held-out bound (the test NLL's)
    var_every: int = 250
    var_method: str = "both"
    var_samples: int = 100
    checkpoint_every: int = 500
    seeds: tuple[int, ...] = (0,)
    device: str = "auto"
    threads: int = DEFAULT_THREADS  # torch threads (not part of a run's identity: results.INVOCATION_FIELDS)
    estimator_settings: dict[str, Any] = field(default_factory=lambda: default_settings("predict"))
    anneal: str = "none"
    anneal_rate: float = 1e-4
    anneal_floor: float = 0.5
    out: str = "results"

    # Not options: structured prediction's latents are bits, its relaxation has no densities (the
    # prior is the proposal, so they cancel), no prior is learned and every estimator runs at k.
    latent = "binary"
    budget = None
    kl = "relaxed"
    prior_lr = 0.0

    def __post_init__(self):
        if self.dataset not in dataset_names():
            raise ConfigError(f"unknown dataset {self.dataset!r}; choose from: {', '.join(dataset_names())}")
        try:
            parse_predict_arch(self.arch, PIXELS)
        except ValueError as error:
            raise ConfigError(f"--arch: {error}") from None
        check_estimators(self.estimators, self.k, "predict", "binary")
        self._check_straight_through()
        self._check_objective()
        self._check_training("predict")
        _check_anneal(self.anneal, self.anneal_rate, self.anneal_floor, self.start_temperatures())

    def _check_straight_through(self) -> None:
        """Refuse an estimator that would leave a layer untrained.

        Applied layer by layer, an estimator of ``∇_{h_l} f`` alone (straight-through) sees ``f``
        with the layers below held at their samples; here ``f = −log p(x_lower | h_L)`` depends on
        ``h_l`` for ``l < L`` only through those samples, so its gradient there is zero.
        """
        if parse_predict_arch(self.arch, PIXELS).depth == 1:
            return
        for name in self.estimators:
            info = estimator_info(name, "binary")
            if info.needs_input_grad and not info.unbiased and not info.trains_chain:
                raise ConfigError(
                    f"{name} estimates from ∇_h f alone, which is zero above the last layer of "
                    f"{self.arch} (the layers below are held at their samples): choose a one-layer arch"
                )

    def temperatures(self, step: int, estimator: str) -> tuple[float | None, None]:
        """(λ at training step ``step`` for a run of ``estimator``, ``None``): the engine's (posterior,
        prior) pair; there is no prior density to relax here. Annealed as the VAE's
        (:meth:`VaeConfig.temperatures`)."""
        start = start_temperature(estimator, self.estimator_settings)
        if start is None:
            return None, None
        return _annealed(self.anneal, self.anneal_rate, self.anneal_floor, start, step), None


@dataclass(frozen=True)
class UserTrainingConfig:
    """One ``dcvbench train`` job (:mod:`dcvbench.jobs.user_training`): every (seed, estimator) run
    of the user's model.

    ``model`` is what the manifest records of the model (``path.py:make_model`` on the command
    line, the function's qualified name from Python); ``name`` starts the run directories' names and
    names the runs' group in ``plot``. Estimators take the ``vae`` job's options and defaults; whether
    one suits the model's latents and objective is checked once the model is built.
    """

    model: str
    name: str = "user"
    estimators: tuple[str, ...] = ("rloo", "rloo-dcv")
    k: int = DEFAULT_K
    steps: int = 500
    lr: float = 1e-2
    log_every: int = 25
    eval_every: int = 100
    seeds: tuple[int, ...] = (0,)
    device: str = "auto"
    threads: int = DEFAULT_THREADS
    estimator_settings: dict[str, Any] = field(default_factory=dict)
    out: str = "runs"

    def __post_init__(self):
        check_estimators(self.estimators, self.k, "user", None)
        for option in ("steps", "log_every", "eval_every"):
            _at_least(f"--{option.replace('_', '-')}", getattr(self, option), 1)
        _positive("--lr", self.lr)
        _check_seeds(self.seeds)
        _check_runtime(self.device, "float32", self.threads)
        _fill(self, "estimator_settings", estimator_settings(self.estimator_settings, "vae"))
        _check_temperatures(self.estimators, self.estimator_settings)


def toy_config_from_dict(values: dict) -> ToyConfig:
    """Rebuild a :class:`ToyConfig` from its manifest form (``asdict``), validating it again."""
    return _config_from_dict(ToyConfig, "toy", values)


def predict_config_from_dict(values: dict) -> PredictConfig:
    """Rebuild a :class:`PredictConfig` from its manifest form (``asdict``), validating it again."""
    return _config_from_dict(PredictConfig, "predict", values)


def vae_config_from_dict(values: dict) -> VaeConfig:
    """Rebuild a :class:`VaeConfig` from its manifest form (``asdict``), validating it again.

    Manifests written before categorical latents hold the number of latent bits as ``latent``.
    """
    if isinstance(values, Mapping) and _is_whole(values.get("latent")):
        values = {**values, "latent": "binary", "latent_vars": values["latent"]}
    return _config_from_dict(VaeConfig, "vae", values)


def variance_config_from_dict(values: dict) -> VarianceConfig:
    """Rebuild a :class:`VarianceConfig` from its manifest form (``asdict``), validating it again."""
    return _config_from_dict(VarianceConfig, "variance", values)


CONFIG_FROM_DICT = {
    "toy": toy_config_from_dict,
    "vae": vae_config_from_dict,
    "predict": predict_config_from_dict,
    "variance": variance_config_from_dict,
}


def normalised_config(job: str, values: dict) -> dict:
    """A manifest's ``config`` as this version's configuration would save it: migrated, validated,
    options added since filled in, options not of the job dropped. What ``sweep`` and ``plot`` compare,
    so that two runs of one configuration are one series whichever dcvbench wrote them. A
    :class:`ConfigError` if it is no valid configuration of ``job``.
    """
    if job not in CONFIG_FROM_DICT:
        raise ConfigError(f"unknown job {job!r} in the manifest; choose from: {', '.join(CONFIG_FROM_DICT)}")
    return asdict(CONFIG_FROM_DICT[job](values))


# What a reader of a run's manifest relies on besides its ``config``, and the type of each: the run it
# is (resume, sweep, plot) and how far it got. Present in every manifest dcvbench has written.
RUN_FIELDS = {"run_id": str, "job": str, "estimator": str, "k": int, "seed": int}
# Written by some versions or only once something happened (a resume): checked when present.
OPTIONAL_RUN_FIELDS = {
    "config": dict,
    "status": str,
    "last_step": int | None,
    "started": str | None,
    "resumes": list,
    "process": dict,
}


def check_run_fields(manifest: Mapping[str, Any]) -> None:
    """Refuse a run's manifest (``run.json``) whose bookkeeping fields are missing or of the wrong
    type: a hand-edited or damaged manifest is a :class:`ConfigError` naming the field, never a crash
    further on."""
    for name in RUN_FIELDS:
        if name not in manifest:
            raise ConfigError(f"it has no {name!r}")
    for name, kind in (RUN_FIELDS | OPTIONAL_RUN_FIELDS).items():
        if name in manifest and not _conforms(manifest[name], kind):
            raise ConfigError(f"{name} must be {_kind_name(kind)}, got {manifest[name]!r}")


def run_config(job: str, manifest: Mapping[str, Any], where: Path | str):
    """The configuration of the ``job`` run whose manifest (read from ``where``) is ``manifest``,
    validated as :func:`normalised_config` does, with the fields that say which run of it this is.

    A manifest edited by hand, damaged, or written by a dcvbench whose configurations differ is a
    one-line :class:`ConfigError` naming ``where`` and the field: missing keys, values of the wrong
    type, an estimator or a seed the configuration does not run.
    """
    try:
        check_run_fields(manifest)
        if job not in CONFIG_FROM_DICT or manifest["job"] != job:
            raise ConfigError(f"it is no {job} run (its job is {manifest['job']!r})")
        if "config" not in manifest:
            raise ConfigError("it has no 'config'")
        config = CONFIG_FROM_DICT[job](manifest["config"])
        for name, runs in (("estimator", config.estimators), ("seed", config.seeds)):
            if manifest[name] not in runs:
                raise ConfigError(f"its {name} {manifest[name]!r} is not one its config runs ({runs})")
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None
    return config


def _config_from_dict(cls, job: str, values: Mapping[str, Any]):
    """``cls`` from ``asdict`` output: nested dataclasses rebuilt, JSON lists back to tuples.

    ``estimator_settings`` is taken as saved, less the options that are not the job's (a variance
    study's manifest written before options knew their jobs holds α's learning rate, which it never
    used); an option the manifest does not hold (one added since) takes the job's default. A
    manifest edited by hand or written by another version is a :class:`ConfigError` naming the
    field (``config.problem.dim must be a whole number, got 'x'``), not a crash.
    """
    values = _typed_fields(cls, values, "config")
    if "estimator_settings" in values:
        others = set(estimator_options()) - set(estimator_options(job))  # unknown names stay, and fail
        values["estimator_settings"] = {
            name: value for name, value in values["estimator_settings"].items() if name not in others
        }
    try:
        return cls(**values)
    except (TypeError, ValueError) as error:  # a value of the right type that a check cannot compare
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(f"the run's manifest holds no valid {cls.__name__}: {error}") from None


def _typed_fields(cls, values: Any, where: str) -> dict[str, Any]:
    """``values`` (a manifest's form of dataclass ``cls``) as ``cls``'s arguments: each of the right
    type for its field, JSON lists as tuples, nested dataclasses built; a :class:`ConfigError`
    naming the field (``where``, dotted) otherwise."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where} must be a mapping of option names to values, got {values!r}")
    hints = _field_types(cls)
    arguments = {}
    for name, value in values.items():
        if name not in hints:
            raise ConfigError(f"{where}.{name} is no setting of {cls.__name__}: written by another version?")
        kind = hints[name]
        if is_dataclass(kind):
            arguments[name] = kind(**_typed_fields(kind, value, f"{where}.{name}"))
            continue
        if isinstance(value, list) and tuple in map(typing.get_origin, (kind, *typing.get_args(kind))):
            value = tuple(value)  # JSON has lists only
        if not _conforms(value, kind):
            raise ConfigError(f"{where}.{name} must be {_kind_name(kind)}, got {value!r}")
        arguments[name] = value
    return arguments


@functools.cache
def _field_types(cls) -> dict[str, Any]:
    """The type of each field of dataclass ``cls``, evaluated (this module postpones annotations)."""
    hints = typing.get_type_hints(cls)
    return {item.name: hints[item.name] for item in fields(cls)}


def _conforms(value: Any, kind: Any) -> bool:
    """Whether ``value`` is of type ``kind``: a whole number (not a bool) for ``int``, any real
    number for ``float``, the element type throughout for ``tuple[X, ...]``, string keys for
    ``dict[str, Any]``."""
    origin, arguments = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, option) for option in arguments)
    if kind is Any:
        return True
    if kind is type(None):
        return value is None
    if kind is int:
        return _is_whole(value)
    if kind is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if origin is tuple:
        return isinstance(value, tuple) and all(_conforms(item, arguments[0]) for item in value)
    if origin is dict:
        return isinstance(value, Mapping) and all(isinstance(key, str) for key in value)
    return isinstance(value, origin or kind)


def _kind_name(kind: Any) -> str:
    """``kind`` in words for messages: ``a whole number``, ``a list of strings``, ``… or null``."""
    origin, arguments = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_kind_name(option) for option in arguments)
    if origin is tuple:
        return f"a list of {_kind_name(arguments[0]).removeprefix('a ')}s"
    names = {int: "a whole number", float: "a number", str: "a string", bool: "true or false"}
    names |= {type(None): "null", dict: "a mapping", list: "a list"}
    return names.get(origin or kind, f"a {getattr(kind, '__name__', kind)}")


def _is_whole(value: Any) -> bool:
    """A whole number: an integer that is not a bool (JSON's ``true`` is no K)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def theta_probability(theta: str) -> float | None:
    """``--theta`` as a probability in (0, 1), or ``None`` for ``random``."""
    if theta == "random":
        return None
    try:
        value = float(theta)
    except ValueError:
        raise ConfigError(f"--theta must be a probability in (0, 1) or 'random', got {theta!r}") from None
    if not 0.0 < value < 1.0:
        raise ConfigError(f"--theta must be in (0, 1) (open interval), got {value}")
    return value


def latent_classes(latent: str, classes: int | None, default: int) -> int | None:
    """The classes of a ``latent`` type: ``None`` for binary latents, ``classes`` (``default`` when
    not given) for categorical ones, at least 2."""
    if latent not in LATENT_TYPES:
        raise ConfigError(f"unknown --latent {latent!r}; choose from: {', '.join(LATENT_TYPES)}")
    if latent == "binary":
        if classes is not None:
            raise ConfigError(
                f"--classes {classes} applies to categorical latents only; add --latent categorical "
                "or drop --classes"
            )
        return None
    classes = default if classes is None else classes
    _at_least("--classes", classes, 2)
    return classes


def check_estimators(names: tuple[str, ...], k: int | None, problem: str, latent: str | None) -> None:
    """Refuse estimators that are not registered for ``latent`` latents (``None``: for any latent
    type), whose rule on K excludes ``k`` (``None``: a budget sets each one's K, see :func:`budget_ks`),
    or that do not run on ``problem``."""
    if not names:
        raise ConfigError("give at least one --estimator")
    if k is not None:
        _fits_int64("--k", k)
    for name in names:
        info = _estimator_info(name, latent)
        if k is not None:
            try:
                info.check_k(k)
            except EstimatorError as error:
                raise ConfigError(f"--k {k}: {error}") from None
        if problem not in info.problems:
            names = info.problems
            listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
            raise ConfigError(
                f"{name} runs on the {listed} problem{'s' if len(names) > 1 else ''} only, not {problem}"
            )


def budget_ks(names: tuple[str, ...], budget: int, shape: ProblemShape) -> dict[str, int]:
    """Each estimator's K under ``budget``: the largest K it allows whose estimate costs at most
    ``budget`` evaluations of f on latents of ``shape`` (:meth:`EstimatorInfo.k_for_budget`), so that
    estimators compared at one budget cost the same, up to the rounding of K. A :class:`ConfigError`
    names an estimator whose cheapest estimate costs more, and what that costs."""
    ks = {}
    for name in names:
        info = estimator_info(name, shape.latent_type)
        k = info.k_for_budget(budget, shape)
        if k is None:
            smallest = info.min_k + info.min_k % 2 if info.even_k else info.min_k
            raise ConfigError(
                f"--budget {budget} is below {name}'s cheapest estimate: {info.evals(smallest, shape)} "
                f"evaluations of f at K={smallest} (it costs {info.evals_rule()})"
            )
        ks[name] = k
    return ks


def _estimator_info(name: str, latent: str | None) -> EstimatorInfo:
    latents = LATENT_TYPES if latent is None else (latent,)
    for candidate in latents:
        if name in estimator_names(candidate):
            return estimator_info(name, candidate)
    valid = ", ".join(estimator_names(latent or "binary"))
    if latent is not None and any(name in estimator_names(other) for other in LATENT_TYPES):
        raise ConfigError(f"{name} has no {latent} version; for {latent} latents choose from: {valid}")
    hint = did_you_mean(name, estimator_names(latent or "binary"))
    raise ConfigError(f"unknown estimator {name!r}{_for_latent(latent)}; {hint}")


def _for_latent(latent: str | None) -> str:
    """`` for categorical latents`` in messages; nothing for binary latents, the default."""
    return "" if latent in (None, "binary") else f" for {latent} latents"


def _fill(config, name: str, value) -> None:
    """Set a frozen dataclass's field at construction: a default that depends on another field."""
    object.__setattr__(config, name, value)


def _check_runtime(device: str, dtype: str, threads: int) -> None:
    _positive("--threads", threads)
    if device not in DEVICES:
        raise ConfigError(f"unknown device {device!r}; choose from: {', '.join(DEVICES)}")
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; choose from: {', '.join(DTYPES)}")


def estimator_settings(given: Mapping[str, Any], job: str) -> dict[str, Any]:
    """Every estimator option's value for ``job``: ``given`` over the job's defaults, validated by
    the options themselves (an unknown option or a bad value is a one-line :class:`ConfigError`)."""
    try:
        check_settings(given, job)
    except EstimatorError as error:
        raise ConfigError(str(error)) from None
    return {**default_settings(job), **given}


def _check_anneal(anneal: str, rate: float, floor: float, starts: Mapping[str, float]) -> None:
    """A known schedule, a rate ≥ 0 and a floor below each starting temperature (``{option: λ_0}``)."""
    if anneal not in ANNEAL_SCHEDULES:
        raise ConfigError(f"unknown --anneal {anneal!r}; choose from: {', '.join(ANNEAL_SCHEDULES)}")
    if not (math.isfinite(rate) and rate >= 0):
        raise ConfigError(f"--anneal-rate must be ≥ 0, got {rate}")
    _positive("--anneal-floor", floor)
    if anneal == "exp":
        # max(floor, λ_0·exp(−rate·t)) would *raise* a temperature that starts below the floor.
        for option, start in starts.items():
            if floor > start:
                raise ConfigError(
                    f"--anneal-floor {floor} is above {option} {start}: annealing only lowers a "
                    "temperature; lower the floor"
                )


def _check_temperatures(
    estimators: tuple[str, ...], settings: Mapping[str, Any], anneal: str = "none", floor: float = 0.0
) -> None:
    """Each chosen estimator's temperature suits it (ReinMax: λ ≥ 1), and so does the floor that an
    annealed one comes down to."""
    for name in estimators:
        start = start_temperature(name, settings)
        if start is None:
            continue  # no temperature
        reached = {"--temperature": start} | ({"--anneal-floor": floor} if anneal != "none" else {})
        for option, value in reached.items():
            _check_temperature(option, value)
            problem = temperature_problem(name, {"temperature": value})
            if problem is not None:
                raise ConfigError(f"{option} {value:g}: {problem}")


# The smallest temperature: float32's smallest normal number (2⁻¹²⁶ ≈ 1.2e-38). The relaxations divide
# logits by λ, so a smaller one makes them infinite in the model jobs' float32 (and below ~1e-308 in
# float64 too): a run that could only diverge, or silently train on hard samples.
TEMPERATURE_MIN = 2.0**-126


def _check_temperature(option: str, value: float) -> None:
    if value < TEMPERATURE_MIN:
        raise ConfigError(f"{option} must be at least 2**-126 (float32's smallest normal), got {value:g}")


def _annealed(anneal: str, rate: float, floor: float, start: float, step: int) -> float:
    """``λ_0`` without annealing; with ``"exp"``, ``max(floor, λ_0·exp(−rate·step))``: a function of
    the step alone, so a resumed run anneals exactly as an uninterrupted one."""
    if anneal == "none":
        return start
    return max(floor, start * math.exp(-rate * step))


# Whole numbers are stored as int64 (trace columns, torch sizes): each is below 2⁶³. Seeds, fed to
# numpy's SeedSequence, which refuses negative entropy, are whole numbers in [0, 2⁶³).
INT64_BOUND = 2**63


def _check_seeds(seeds: tuple[int, ...]) -> None:
    if not seeds:
        raise ConfigError("give at least one --seed")
    for seed in seeds:
        if not (isinstance(seed, int) and 0 <= seed < INT64_BOUND):
            raise ConfigError(f"--seed must be a whole number from 0 to 2**63 - 1, got {seed}")


def _check_budget(budget: int) -> None:
    _fits_int64("--budget", budget)
    if not isinstance(budget, int) or budget < 1:
        raise ConfigError(f"--budget must be a positive whole number of evaluations of f, got {budget}")


def _finite(option: str, value: float) -> None:
    if not math.isfinite(value):
        raise ConfigError(f"{option} must be finite, got {value}")


def _positive(option: str, value: float) -> None:
    _fits_int64(option, value)
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{option} must be positive, got {value}")


def _at_least(option: str, value: int, minimum: int) -> None:
    _fits_int64(option, value)
    if value < minimum:
        raise ConfigError(f"{option} must be at least {minimum}, got {value}")


def _fits_int64(option: str, value: float) -> None:
    """Refuse a whole number of 2⁶³ or more: sizes, counts and steps become torch sizes and trace
    columns, both int64 (torch would fail with "Overflow when unpacking long"), and a float check
    such as ``math.isfinite`` overflows on them."""
    if _is_whole(value) and value >= INT64_BOUND:
        raise ConfigError(f"{option} must be at most 2**63 - 1, got {value}")
