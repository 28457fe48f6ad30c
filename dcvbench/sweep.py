"""``dcvbench sweep``: a grid of runs, each exactly one ``dcvbench toy|vae|predict|variance`` invocation.

A spec is a TOML file::

    job = "toy"                      # toy, vae, predict or variance

    [options]                        # the same for every run: the command's option names
    dim = 200                        # (dashes or underscores), values as TOML values
    steps = 500

    [grid]                           # crossed: one run per combination, last axis fastest
    estimator = ["rloo", "rloo-dcv"]
    seed = [1, 2, 3, 4]

**Linked axes.** An axis whose values are all tables sets each table's options together; its name is
a free label, not an option. ``shape = [{classes = 8, latent_vars = 4}, {classes = 4, latent_vars =
24}]`` crossed with two estimators makes four runs, not the eight of two crossed axes: pairs that
belong together (a latent shape, an estimator with its own temperature) cannot be crossed. The
tables of one axis may set different options, since an option of one estimator (``gst_gap``) means
nothing to another: an option a table leaves out is the job's default there, as for any option the
spec leaves out, and the run's label (``classes=8 latent_vars=4``) and ``--dry-run`` show what each
run sets. Each option is set in one place only: ``[options]``, a plain axis or one linked axis.

Each run is the invocation a user could type (``dcvbench toy --dim 200 --steps 500 --estimator rloo
--seed 1 --out OUT -q``), started in a fresh Python process, so a sweep's runs are indistinguishable
from hand-made ones. A toy, VAE or predict run names one estimator and one seed (one run directory
each), so that every run can be skipped or resumed on its own.

The sweep knows a job's command line only through the :class:`JobCommand` the CLI hands it (its
option names and a parser to the job's configuration): this module never imports the CLI.

**Idempotence.** A run's *identity* is its configuration, as saved in its manifest (``config``),
without the fields that only say how it was invoked (:data:`~dcvbench.results.INVOCATION_FIELDS`),
and, for a toy or VAE run, its own ``estimator`` and ``seed``: so ``dcvbench toy --estimator rloo
--estimator disarm --seed 1 --seed 2`` typed by hand covers four runs of a sweep, and renaming an
option changes no identity. A sweep's run is configured by the job's own parser, without running it.

**Re-launching.** A run's directories are read with :func:`~dcvbench.results.run_status`: a manifest
saying ``running`` whose process on this host is gone (SIGKILL, the out-of-memory killer) is
``stale``. A run with a ``finished`` directory is skipped, and one whose process is still ``running``
is left to it; otherwise its newest directory decides (an older one is one that was started again).
An ``interrupted`` or ``stale`` toy, VAE or predict run with a checkpoint is resumed (``--resume
RUN_DIR``); one stopped before its first checkpoint, or a variance study, which cannot resume, is
started again in a new run directory, the old one left as it is (``plot`` takes the newest run of a
seed). A ``failed`` or ``diverged`` one is reported and left alone unless ``retry_failed`` (then
started again in a new directory, the old one kept). An invocation that failed before making a
directory (a usage error) leaves no trace and is simply tried again. A sweep is done when every run
is :data:`DONE`; each other run's result says what a re-launch does with it. Two grid points of one
identity (``k = [2, "2"]``) are one run.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor, as_completed
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

from dcvbench.checkpoints import CHECKPOINT
from dcvbench.config import check_run_fields, normalised_config
from dcvbench.results import (
    STALE,
    ResultsError,
    config_key,
    find_runs,
    prepare_output_root,
    read_manifest,
    read_trace,
    run_status,
)
from dcvbench.runtime import ConfigError

JOBS = ("toy", "vae", "predict", "variance")
BACKENDS = ("local", "dask")
# Set by the sweep for every run, never by a spec: where runs go, and how they report.
SWEEP_OPTIONS = ("out", "quiet", "resume")
# Jobs whose runs can be resumed, and whose invocation makes one run directory per (estimator, seed):
# a sweep gives them one of each per run, so each run directory is skipped or resumed on its own.
RESUMABLE = ("toy", "vae", "predict")
ONE_PER_RUN = ("estimator", "seed")
# Exit codes of a run stopped by SIGINT or SIGTERM: it marked itself interrupted (see cli.main).
INTERRUPTED_CODES = (130, 143)
# The statuses of a run that leave nothing to do: a sweep is done when all its runs end so. Any other
# (interrupted, stale, running, failed, diverged) is picked up again by a re-launch (see _plan).
DONE = ("finished", "resumed", "skipped")

Value = bool | int | float | str | list
Setting = dict[str, Value]  # the options that one value of a grid axis sets, by parameter name


@dataclass(frozen=True)
class JobCommand:
    """What a sweep needs of one job's command line; the CLI supplies it.

    ``params``: each parameter by name, as the command's parser describes it (``opts`` and
    ``secondary_opts``: its spellings; ``is_flag``; ``multiple``: repeatable). ``parse``: the
    arguments after the job's name, parsed (a :class:`ConfigError` if they cannot be). ``configure``:
    the job's configuration for parsed arguments, without running anything (a :class:`ConfigError`
    for a bad one).
    """

    params: Mapping[str, Any]
    parse: Callable[[Sequence[str]], Any]
    configure: Callable[[Any], Any]


@dataclass(frozen=True)
class SweepSpec:
    """A parsed, validated spec: the job, its fixed options and its grid axes, in file order.

    Each axis is its values, each as the options it sets: ``{"seed": 1}`` for a value of a plain axis
    (``seed = [1, 2]``), the table itself for a linked one (``shape = [{classes = 8, …}, …]``).
    """

    job: str
    options: dict[str, Value]
    grid: dict[str, list[Setting]]
    command: JobCommand = field(repr=False, compare=False)
    source: str = "<spec>"

    @property
    def title(self) -> str:
        """The job and its fixed options: what every run of the sweep shares."""
        return " ".join([self.job, *(f"{name}={_show(value)}" for name, value in self.options.items())])


@dataclass(frozen=True)
class SweepRun:
    """One run of a sweep: one invocation of the job, with one value of each grid axis."""

    job: str
    args: tuple[str, ...]  # the command line after the job name, without --out and -q
    key: str  # job and every option given, sorted by name: deterministic, readable
    label: str  # the grid values alone: what tells this run from the others of its sweep
    # See the module docstring; None when the job refuses its configuration: the run then fails as
    # any bad invocation does, and is reported.
    identity: tuple | None = field(repr=False)
    merged: tuple[str, ...] = ()  # the labels of later grid points that are this same run

    def argv(self, out: Path | str) -> list[str]:
        """The arguments of ``dcvbench`` that start this run, writing under ``out``."""
        return [self.job, *self.args, "--out", os.path.abspath(out), "-q"]

    def command(self, out: Path | str) -> str:
        """The invocation a user could type for this run (what ``--dry-run`` prints)."""
        return shlex.join(["dcvbench", *self.argv(out)])


@dataclass(frozen=True)
class RunResult:
    """How a run of the sweep ended, this time or (skipped, failed earlier) before."""

    run: SweepRun
    status: str  # one of DONE, or interrupted, stale, running, failed or diverged
    run_dir: Path | None
    exit_code: int | None = None
    # The last line a failed run wrote on stderr, how it was killed, or why it was (not) started.
    note: str = ""
    relaunch: str = ""  # for a run not done: what launching the sweep again does with it

    @property
    def done(self) -> bool:
        return self.status in DONE


@dataclass(frozen=True)
class SweepCounts:
    """Where a sweep stands, for a progress display."""

    total: int
    done: int
    running: int
    failed: int


# ---------------------------------------------------------------------------------------------
# Specs.


def load_spec(path: Path | str, commands: Mapping[str, JobCommand]) -> SweepSpec:
    """Read and validate a spec; anything wrong is a one-line :class:`ConfigError`, found here."""
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except OSError as error:
        raise ConfigError(f"cannot read sweep spec {path}: {error.strerror or error}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"sweep spec {path} is not valid TOML: {error}") from None
    except UnicodeDecodeError as error:  # TOML is UTF-8 by definition
        byte = error.object[error.start]
        raise ConfigError(
            f"sweep spec {path} is not UTF-8 text: byte 0x{byte:02x} at offset {error.start}"
        ) from None
    return parse_spec(data, commands, str(path))


def parse_spec(data: dict[str, Any], commands: Mapping[str, JobCommand], source: str = "<spec>") -> SweepSpec:
    """Validate a spec already read from TOML (see the module docstring for its form)."""
    unknown = set(data) - {"job", "options", "grid"}
    if unknown:
        raise ConfigError(
            f"{source}: unknown key {sorted(unknown)[0]!r}; a spec holds job, [options], [grid]"
        )
    job = data.get("job")
    if job not in JOBS:
        what = "names no job" if job is None else f"has unknown job {job!r}"
        raise ConfigError(f"{source} {what}; choose from: {', '.join(JOBS)}")
    params = commands[job].params
    options = _named(data.get("options", {}), "[options]", job, params, source)
    for name, value in options.items():
        _check_value(job, params[name], value, source)
    table = data.get("grid", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [grid] must be a table of option = [values]")
    grid = {label: _axis(label, values, job, params, source) for label, values in table.items()}
    # Each option is set in one place: otherwise a run's value would depend on which place wins.
    axis_of: dict[str, str | None] = dict.fromkeys(options)  # the axis setting each option; None: [options]
    for label, settings in grid.items():
        for name in dict.fromkeys(name for setting in settings for name in setting):
            if name in axis_of:
                first = "[options]" if axis_of[name] is None else f"[grid] {axis_of[name]}"
                raise ConfigError(f"{source}: {name} is set in both {first} and [grid] {label}; keep one")
            axis_of[name] = label
    if job in RESUMABLE:
        for name in ONE_PER_RUN:
            label = axis_of.get(name)
            if label is not None and any(name not in setting for setting in grid[label]):
                raise ConfigError(
                    f"{source}: a table of [grid] {label} leaves out {name}; "
                    f"a {job} sweep names one estimator and one seed in every run"
                )
        missing = [name for name in ONE_PER_RUN if name not in axis_of]
        if missing:
            raise ConfigError(
                f"{source}: a {job} sweep names one estimator and one seed per run; "
                f"add {' and '.join(missing)} to [options] or [grid]"
            )
    return SweepSpec(job, options, grid, commands[job], source)


def _axis(label: str, values: Any, job: str, params: Mapping[str, Any], source: str) -> list[Setting]:
    """One ``[grid]`` axis as the options each of its values sets, checked.

    A plain axis is named by its option (``seed = [1, 2]``); a linked axis, whose values are all
    tables, by a free label (``shape = [{classes = 8, latent_vars = 4}, …]``).
    """
    if not isinstance(values, list):
        raise ConfigError(f"{source}: [grid] {label} must be a list of values, got {values!r}")
    if not values:
        raise ConfigError(f"{source}: [grid] {label} is empty; give at least one value")
    tables = [isinstance(value, dict) for value in values]
    if any(tables) and not all(tables):
        raise ConfigError(
            f"{source}: [grid] {label} mixes tables and values; a linked axis holds only tables"
        )
    if all(tables):
        settings = [_named(value, f"[grid] {label}", job, params, source) for value in values]
        if not all(settings):
            raise ConfigError(f"{source}: [grid] {label} has an empty table; each sets at least one option")
    else:
        (name,) = _named({label: values}, "[grid]", job, params, source)
        settings = [{name: value} for value in values]
    repeated = [setting for i, setting in enumerate(settings) if setting in settings[:i]]
    if repeated:
        raise ConfigError(f"{source}: [grid] {label} repeats {_label(repeated[0])}")
    for setting in settings:
        for name, value in setting.items():
            _check_value(job, params[name], value, source)
    return settings


def expand(spec: SweepSpec) -> list[SweepRun]:
    """Every combination of the grid axes, as runs; each is parsed here, so bad values fail early.

    Grid points that configure the same run (``k = [2, "2"]``) are one run: see :func:`_merge_same`.
    """
    runs = []
    for settings in itertools.product(*spec.grid.values()):  # one value of each axis
        point = {name: value for setting in settings for name, value in setting.items()}
        chosen = {**spec.options, **point}
        params = spec.command.params
        args = tuple(arg for name, value in chosen.items() for arg in _arguments(params[name], value))
        try:
            parsed = spec.command.parse(args)
        except ConfigError as error:
            raise ConfigError(f"{spec.source}: {error}") from None
        try:
            identity = _configured_identity(spec.job, spec.command.configure(parsed))
        except ConfigError:
            identity = None
        runs.append(
            SweepRun(
                job=spec.job,
                args=args,
                key=" ".join([spec.job, *(f"{name}={_show(chosen[name])}" for name in sorted(chosen))]),
                label=_label(point) or spec.job,
                identity=identity,
            )
        )
    return _merge_same(runs)


def _merge_same(runs: list[SweepRun]) -> list[SweepRun]:
    """The runs with each one's later repeats merged into it (their labels kept in ``merged``).

    Two points are the same run when the job configures them alike (the same identity), or, when the
    job refuses them, when their command lines are the same: started twice, they would race to make
    the same run, and a re-launch would count it twice.
    """
    kept: dict[tuple, SweepRun] = {}  # by what makes a run the same; insertion order: the first kept
    for run in runs:
        same = ("identity", run.identity) if run.identity is not None else ("args", run.args)
        first = kept.setdefault(same, run)
        if first is not run:
            kept[same] = replace(first, merged=(*first.merged, run.label))
    return list(kept.values())


def merged_note(runs: Sequence[SweepRun]) -> str | None:
    """One line saying how many grid points were merged into an earlier one (None if none were)."""
    merged = [(run.label, label) for run in runs for label in run.merged]
    if not merged:
        return None
    kept, repeat = merged[0]
    return (
        f"duplicate grid points merged: {len(merged)} (each configures the same run as an earlier point; "
        f"first: {repeat}, the same run as {kept})"
    )


def _named(table: Any, section: str, job: str, params: Mapping[str, Any], source: str) -> dict[str, Value]:
    """A spec table with its names checked against the job's options and spelled as parameters."""
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: {section} must be a table of option = value")
    named: dict[str, Value] = {}
    for raw, value in table.items():
        name = raw.replace("-", "_")
        if name in SWEEP_OPTIONS:
            owner = "give --out to dcvbench sweep" if name == "out" else "the sweep sets it for every run"
            raise ConfigError(f"{source}: {section} {raw} is not a spec option ({owner})")
        if name not in params:
            valid = ", ".join(p.replace("_", "-") for p in params if p not in SWEEP_OPTIONS)
            raise ConfigError(f"{source}: unknown {job} option {raw!r} in {section}; choose from: {valid}")
        if name in named:
            raise ConfigError(f"{source}: {section} gives {raw} twice (dashes and underscores are the same)")
        named[name] = value
    return named


def _check_value(job: str, param: Any, value: Any, source: str) -> None:
    """One run's value of an option: a TOML scalar, or a list of them for a repeatable option."""
    # A toy, VAE or predict run names one estimator and one seed, though the command repeats them.
    many = param.multiple and not (job in RESUMABLE and param.name in ONE_PER_RUN)
    for item in value if isinstance(value, list) and many else [value]:
        if isinstance(item, list):
            raise ConfigError(f"{source}: {param.name} takes one value per run; list several in [grid]")
        if not isinstance(item, bool | int | float | str):
            raise ConfigError(f"{source}: {param.name}: {item!r} is not a number, string or boolean")


def _arguments(param: Any, value: Value) -> list[str]:
    """The command-line arguments that set ``param`` to ``value``."""
    if param.is_flag and isinstance(value, bool):
        if value:
            return [param.opts[0]]
        return [param.secondary_opts[0]] if param.secondary_opts else []
    values = value if isinstance(value, list) else [value]
    return [arg for item in values for arg in (param.opts[0], _show(item))]


def _label(setting: Setting) -> str:
    """``classes=8 latent_vars=4``: options and their values, as a run's label shows them."""
    return " ".join(f"{name}={_show(value)}" for name, value in setting.items())


def _show(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(map(_show, value))
    return str(value)


# ---------------------------------------------------------------------------------------------
# Identity: what makes two runs the same run (see the module docstring).


def identity(job: str, config: Mapping[str, Any], estimator: str | None, seed: int | None) -> tuple:
    """A run's identity from its configuration (a manifest's ``config``) and, for a toy or VAE run,
    its own estimator and seed."""
    if job in RESUMABLE:
        return (job, estimator, seed, config_key(config))
    return (job, config_key(config))


def _configured_identity(job: str, config: Any) -> tuple:
    """The identity of the one run of a sweep's configuration (one estimator and seed, if any)."""
    values = asdict(config)
    if job in RESUMABLE:
        return identity(job, values, config.estimators[0], config.seeds[0])
    return identity(job, values, None, None)


def _manifest_identity(job: str, manifest: dict[str, Any]) -> tuple:
    """The identity of a run directory, from its manifest; ConfigError if its config is not valid."""
    check_run_fields(manifest)  # a hand-edited estimator, seed or status: not a run this sweep made
    config = normalised_config(job, manifest["config"])  # as this version saves it
    return identity(job, config, manifest.get("estimator"), manifest.get("seed"))


# ---------------------------------------------------------------------------------------------
# What is already there, and what to do about it.


@dataclass(frozen=True)
class _Step:
    """What a sweep does for one run: start it (``argv``), or report it as it is (``result``)."""

    run: SweepRun
    action: str  # in a few words, for the table's column of what a re-launch does
    argv: list[str] | None = None
    resuming: Path | None = None
    result: RunResult | None = None
    note: str = ""  # why a run is started again in a new directory: its result's note if it finishes


def existing_runs(root: Path, job: str) -> dict[tuple, list[tuple[Path, dict]]]:
    """The run directories below ``root`` made by ``dcvbench JOB``, by identity, oldest first."""
    found: dict[tuple, list[tuple[Path, dict]]] = {}
    for path in find_runs(root):
        try:
            manifest = read_manifest(path)
        except ResultsError:
            continue  # not a run this sweep could have made; `dcvbench plot` reports it
        if manifest.get("job") != job or not isinstance(manifest.get("config"), dict):
            continue
        try:
            key = _manifest_identity(job, manifest)
        except ConfigError:
            continue  # made by a dcvbench whose configurations differ from this one's
        found.setdefault(key, []).append((path, manifest))
    for runs in found.values():
        runs.sort(key=lambda run: str(run[1].get("started")))
    return found


def _plan(run: SweepRun, matches: list[tuple[Path, dict]], out: Path, retry_failed: bool) -> _Step:
    """Skip, resume, report or start ``run``, given the run directories that are the same run (oldest
    first): see the module docstring."""
    statuses = [(path, run_status(manifest)) for path, manifest in matches]
    newest = {status: path for path, status in statuses}
    if "finished" in newest:
        return _Step(run, "skip it", result=RunResult(run, "skipped", newest["finished"]))
    if "running" in newest:
        note = "another process is running it (or ran it on another host, where it cannot be checked)"
        result = RunResult(run, "running", newest["running"], note=note)
        return _Step(run, "leave it to its process", result=result)
    if not statuses:
        return _Step(run, "start it", argv=run.argv(out))
    path, status = statuses[-1]
    if status in ("interrupted", STALE):
        if run.job in RESUMABLE and (path / CHECKPOINT).is_file():
            return _Step(run, "resume it", argv=[run.job, "--resume", str(path), "-q"], resuming=path)
        why = "stopped before its first checkpoint" if run.job in RESUMABLE else f"{run.job} cannot resume"
        # Started again from scratch in a new directory: the old one keeps its rows apart, and is no
        # longer the newest (plot takes the newest run of a seed, a re-launch the newest directory).
        return _Step(run, "start it again", argv=run.argv(out), note=f"{why} ({path}): started again")
    if status in ("failed", "diverged") and not retry_failed:
        note = f"{status} earlier; --retry-failed starts it again"
        action = "report it (--retry-failed: start it again)"
        return _Step(run, action, result=RunResult(run, status, path, note=note))
    return _Step(run, "start it again", argv=run.argv(out))


# ---------------------------------------------------------------------------------------------
# Running.


def run_sweep(
    runs: Sequence[SweepRun],
    out: Path | str,
    *,
    backend: str = "local",
    workers: int | None = None,
    scheduler: str | None = None,
    retry_failed: bool = False,
    on_progress: Callable[[SweepCounts], None] | None = None,
) -> list[RunResult]:
    """Run every run of a sweep that is not done yet; return one result per run, in order.

    ``backend="local"`` runs ``workers`` runs at a time on this machine (default: one per usable
    core); ``"dask"`` runs them on a Dask ``LocalCluster`` of ``workers`` single-threaded worker
    processes on 127.0.0.1, or, given ``scheduler`` (``tcp://HOST:8786``), on that existing
    cluster, whose workers must see ``out`` at the same path. A failed run does not stop the others;
    each result not :data:`DONE` says in ``relaunch`` what launching the sweep again does with it.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose from: {', '.join(BACKENDS)}")
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    if scheduler is not None and workers is not None:
        raise ConfigError(
            "--workers sizes a local pool or cluster; an existing cluster (--scheduler) has its own"
        )
    if backend == "dask" or scheduler is not None:
        _dask()  # a missing dask is a usage error, found before anything is written
    root = prepare_output_root(os.path.abspath(out))  # absolute: workers may start elsewhere
    found = existing_runs(root, runs[0].job) if runs else {}
    steps = [_plan(run, found.get(run.identity, []), root, retry_failed) for run in runs]
    results = [step.result for step in steps]
    todo = [i for i, step in enumerate(steps) if step.argv is not None]
    launched: dict[int, Launched] = {}
    report = on_progress or (lambda counts: None)
    with _executor(backend, workers or usable_cores(), scheduler) as (executor, slots, task):
        futures = {executor.submit(task, steps[i].argv): i for i in todo}
        failed = 0
        report(SweepCounts(len(runs), len(runs) - len(todo), min(slots, len(todo)), 0))
        for done, future in enumerate(as_completed(futures), start=1):
            i = futures[future]
            try:
                launched[i] = future.result()
            except Exception as error:  # the worker running it died or could not start it
                launched[i] = Launched(code=None, run_dirs=(), error=f"{type(error).__name__}: {error}")
            failed += launched[i].code != 0
            waiting = len(todo) - done
            report(SweepCounts(len(runs), len(runs) - waiting, min(slots, waiting), failed))
    if not launched and all(result.done for result in results):
        return results
    now = existing_runs(root, runs[0].job)  # once: what the runs left, and what a re-launch does then
    before = {path for matches in found.values() for path, _ in matches}
    for i, ended in launched.items():
        # A run that failed or was killed after making its directory did not print it: its new one.
        made = [path for path, _ in now.get(steps[i].run.identity, []) if path not in before]
        run_dir = _printed_dir(steps[i], ended) or (made[-1] if made and ended.code != 0 else None)
        results[i] = _outcome(steps[i], ended, run_dir)
    for i, result in enumerate(results):
        if not result.done:
            again = _plan(result.run, now.get(result.run.identity, []), root, retry_failed)
            results[i] = replace(result, relaunch=again.action)
    return results


def _printed_dir(step: _Step, launched: Launched) -> Path | None:
    """The run directory a started run printed (``-q``: at its end), or the one it resumed."""
    return Path(launched.run_dirs[-1]) if launched.run_dirs else step.resuming


def _outcome(step: _Step, launched: Launched, run_dir: Path | None) -> RunResult:
    """How a started run ended: its manifest's status (see ``run_status``: a run killed with its
    manifest ``running`` is ``stale``), or where it made no run directory, what its exit code says."""
    code = launched.code
    exit_code = None if code == 0 else code
    if run_dir is None:
        status = "finished" if code == 0 else "interrupted" if code in INTERRUPTED_CODES else "failed"
        return RunResult(step.run, status, None, exit_code, note=launched.error or step.note)
    try:
        status = run_status(read_manifest(run_dir))
    except ResultsError as error:  # its directory was removed or spoilt meanwhile
        return RunResult(step.run, "failed", run_dir, exit_code, note=str(error))
    if status == "finished" and step.resuming:
        status = "resumed"
    if status in DONE:
        note = step.note
    elif status == STALE and code is not None and code < 0:
        note = f"killed (signal {-code}) {_last_flushed(run_dir)}"
    else:
        note = launched.error or step.note
    return RunResult(step.run, status, run_dir, exit_code, note=note)


def _last_flushed(run_dir: Path) -> str:
    """Where a killed run's trace ends: ``at step N``, its last row on disk."""
    trace = read_trace(run_dir, on_unreadable=lambda part, reason: None)
    return f"at step {int(trace['step'].max())}" if len(trace) else "before its first row was written"


@contextmanager
def _executor(backend: str, workers: int, scheduler: str | None) -> Iterator[tuple[Executor, int, Callable]]:
    """An executor, how many runs it runs at once, and the task that runs one ``argv`` on it."""
    if backend == "dask" or scheduler is not None:
        with _dask_executor(workers, scheduler) as started:
            yield started
        return
    processes = RunProcesses()
    # Threads suffice to drive the runs: each only waits on its run's process.
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dcvbench-sweep")
    task = functools.partial(launch, threads=max(1, usable_cores() // workers), processes=processes)
    try:
        yield pool, workers, task
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        processes.stop()
        raise
    finally:
        pool.shutdown(wait=True)


@contextmanager
def _dask_executor(workers: int, scheduler: str | None) -> Iterator[tuple[Executor, int, Callable]]:
    """A Dask client's executor: on a new ``LocalCluster`` on 127.0.0.1, or on ``scheduler``'s cluster."""
    distributed = _dask()
    cluster = None
    if scheduler is None:
        # One single-threaded worker process per slot: a worker never takes a second run while one
        # of its runs is going, and the runs share the cores as the local backend's do.
        with _sigint_ignored():
            cluster = distributed.LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
                silence_logs=logging.ERROR,
            )
    try:
        client = distributed.Client(cluster if cluster is not None else scheduler, timeout="10s")
    except (OSError, ValueError) as error:
        if cluster is not None:
            cluster.close()
        raise ConfigError(f"cannot reach the Dask scheduler at {scheduler}: {error}") from None
    try:
        slots: dict[str, int] = {}
        for address, nthreads in client.nthreads().items():
            host = distributed.comm.get_address_host(address)
            slots[host] = slots.get(host, 0) + nthreads
        executor = client.get_executor(pure=False)  # pure=False: a run is never a cached result
        sweep = uuid.uuid4().hex  # names this sweep's runs on the workers, to stop them
        task = functools.partial(launch_on_dask_worker, slots=slots, sweep=sweep)
        try:
            yield executor, max(1, sum(slots.values())), task
        except BaseException:
            executor.shutdown(wait=False)  # cancels the runs not started yet
            # The running ones mark themselves interrupted. A worker already gone cannot be asked: its
            # runs (own sessions) go on to their end, and a re-launch then finds them finished.
            with suppress(Exception):
                client.run(stop_dask_runs, sweep)
            raise
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ignore SIGINT while a LocalCluster starts: its worker processes inherit that, so a Ctrl-C at the
    terminal stops the sweep alone, which then stops the runs through the workers (stop_dask_runs),
    instead of killing the workers and leaving their runs going."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set signal handlers
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _dask():
    """The ``distributed`` package, imported only for the Dask backend (an optional extra)."""
    try:
        import distributed
        import distributed.comm
    except ImportError:
        raise ConfigError("the dask backend needs dask.distributed: pip install 'dcvbench[dask]'") from None
    return distributed


# ---------------------------------------------------------------------------------------------
# Starting one run: ``dcvbench ARGS`` in a fresh Python process, here or on a Dask worker.


@dataclass(frozen=True)
class Launched:
    """What one invocation did: its exit code, the run directories it printed, its last error line."""

    code: int | None  # negative: killed by that signal; None: it never ended (its Dask worker died)
    run_dirs: tuple[str, ...]
    error: str


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def launch(argv: Sequence[str], threads: int, processes: RunProcesses) -> Launched:
    """Run ``dcvbench ARGV`` in a fresh Python process with ``threads`` math threads; wait for it.

    A fresh process per run isolates runs (a crash, a leak, torch's global thread pool) and sets the
    thread count before torch starts: N runs at once get cores // N threads each, so together they
    never oversubscribe the machine (``--threads``, unless the spec sets it; the environment for the
    other libraries). ``processes`` tracks the run, so that its sweep can stop it.
    """
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    if not any(arg == "--threads" or arg.startswith("--threads=") for arg in argv):
        argv = [*argv, "--threads", str(threads)]
    code, stdout, stderr = processes.run([sys.executable, "-m", "dcvbench", *argv], env)
    errors = [line for line in stderr.splitlines() if line.strip()]
    run_dirs = tuple(line for line in stdout.splitlines() if line.strip())  # what -q prints
    return Launched(code, run_dirs, errors[-1] if errors else "")


class RunProcesses:
    """The runs a sweep has started in this process, so that stopping the sweep stops them cleanly.

    Each run starts in its own session: a Ctrl-C at the terminal then reaches the sweep alone, which
    passes exactly one SIGTERM to each run (a second signal during a run's clean-up could cut short
    the flush that marks it ``interrupted``).
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.live: set[subprocess.Popen] = set()
        self.stopping = False

    def run(self, command: list[str], env: dict[str, str]) -> tuple[int, str, str]:
        """Run ``command`` to its end (exit code, stdout, stderr), unless the sweep is stopping."""
        with self.lock:
            if self.stopping:
                return 130, "", "dcvbench: the sweep was stopped before this run started"
            process = subprocess.Popen(
                command,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
            self.live.add(process)
        try:
            stdout, stderr = process.communicate()
        finally:
            with self.lock:
                self.live.discard(process)
        return process.returncode, stdout, stderr

    def stop(self) -> None:
        """Stop the running runs (they mark themselves interrupted) and refuse new ones."""
        with self.lock:
            self.stopping = True
            for process in self.live:
                process.terminate()


# On a Dask worker: the runs each sweep has started from this worker process, by sweep, so that a
# stopped sweep can stop its runs there (Client.run(stop_dask_runs, sweep)).
_WORKER_RUNS: dict[str, RunProcesses] = {}
_WORKER_LOCK = threading.Lock()


def launch_on_dask_worker(argv: list[str], slots: dict[str, int], sweep: str) -> Launched:
    """The task of a Dask worker: start the run there, sharing that host's cores among its runs."""
    from distributed import get_worker
    from distributed.comm import get_address_host

    # A host the client did not see when the sweep began gets one thread per run: never oversubscribed.
    host = get_address_host(get_worker().address)
    threads = max(1, usable_cores() // slots[host]) if host in slots else 1
    return launch(argv, threads, _worker_runs(sweep))


def stop_dask_runs(sweep: str) -> None:
    """Stop the runs of ``sweep`` on this Dask worker, and refuse those it has not started yet."""
    _worker_runs(sweep).stop()


def _worker_runs(sweep: str) -> RunProcesses:
    with _WORKER_LOCK:
        return _WORKER_RUNS.setdefault(sweep, RunProcesses())
