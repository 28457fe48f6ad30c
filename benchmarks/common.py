"""Measurements shared by the benchmark scripts (``run.py``): timings, arithmetic floors, memory.

Everything here measures in the calling process except :func:`measure_memory`, which runs each
measurement in a fresh process of its own (see there why). Timings are medians over repeats, and
the things compared with each other are *interleaved* — one step or one call of each in turn, in
an order that rotates — so load from elsewhere on the machine falls on all of them alike. Both the
wall time and the CPU time of the calling thread are kept: with one torch thread the latter is all
of the work and the least sensitive to other processes; with more threads it misses the others'
share, and only the wall time counts.
"""

from __future__ import annotations

import itertools
import math
import multiprocessing
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from dcvbench.estimators import Estimator, build_estimator, default_settings, get_estimator
from dcvbench.measure.vae_variance import resample_encoder_variance
from dcvbench.measure.variance import Moments, resample_variance
from dcvbench.problems.toy import make_objective
from dcvbench.problems.vae import HIDDEN, PIXELS, VAE, NegativeELBO
from dcvbench.runtime import provenance
from dcvbench.training import train_step

# The protocol of the double-CV VAE experiments (DESIGN §4.2): batch 100, 200 latent bits.
BATCH, LATENT = 100, 200
TOY_TARGET, TOY_THETA = 0.499, 0.7  # the published toy's t, at a θ away from ½ (as README's variance study)
PIXEL_DENSITY = 0.3  # about MNIST's share of lit pixels; the cost of a step does not depend on it


# -- provenance ---------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """The machine, versions and source revision a benchmark ran with."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu_model": cpu_model(),
        "cores": cores,
        **provenance(torch.device("cpu")),  # versions, platform, torch threads, git commit and dirty flag
    }


def load_average() -> list[float]:
    """The 1-, 5- and 15-minute load averages: how busy the machine was besides the benchmark."""
    return [round(load, 2) for load in os.getloadavg()]


# -- arithmetic ---------------------------------------------------------------------------------


def multiply_adds(arch: str, k: int, batch: int = BATCH, latent: int = LATENT) -> tuple[int, int]:
    """Matrix multiply-adds of one training step: ``(rloo, rloo-dcv)``.

    Per layer of width ``a → b`` and ``n`` rows: forward ``n·a·b``, weight gradient ``n·a·b``, input
    gradient ``n·a·b`` (needed for every layer but the first of each network — the encoder's input
    is data, and the decoder's input gradient is exactly what only ``rloo-dcv`` asks for). Elementwise
    work is not counted, so ``rloo-dcv / rloo`` is the floor of DESIGN §3.1.
    """
    widths = (PIXELS, latent) if arch == "linear" else (PIXELS, HIDDEN, HIDDEN, latent)
    encoder = [a * b for a, b in itertools.pairwise(widths)]  # per layer, input side first
    decoder = encoder[::-1]  # mirrored: its first layer takes the latents

    def network(rows: int, sizes: list[int]) -> int:
        # forward + weight gradients + input gradients of every layer but the first
        return rows * (2 * sum(sizes) + sum(sizes[1:]))

    common = network(batch, encoder) + network(k * batch, decoder)
    return common, common + k * batch * decoder[0]  # + the decoder's input gradient


# -- timing -------------------------------------------------------------------------------------


@dataclass
class Timings:
    """Seconds of repeated runs of one thing: wall and calling-thread CPU, in the order measured."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def add(self, wall: float, cpu: float) -> None:
        self.wall.append(wall)
        self.cpu.append(cpu)

    @property
    def wall_median(self) -> float:
        return statistics.median(self.wall)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu)


def timed(work: Callable[[], object], into: Timings) -> None:
    """Run ``work`` once and add its wall and thread-CPU seconds to ``into``."""
    wall, cpu = time.perf_counter(), time.thread_time()
    work()
    into.add(time.perf_counter() - wall, time.thread_time() - cpu)


def interleave(work: dict[str, Callable[[], object]], rounds: int, warmup: int = 0) -> dict[str, Timings]:
    """Run every item of ``work`` once per round, the order rotating each round; time all but the
    first ``warmup`` rounds. Round ``i`` of every item is measured under the same conditions, so
    ratios may be taken round by round (:func:`paired_ratio`)."""
    names = list(work)
    timings = {name: Timings() for name in names}
    for round_ in range(warmup + rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            if round_ < warmup:
                work[name]()
            else:
                timed(work[name], timings[name])
    return timings


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> dict[str, float]:
    """Median and quartiles of the round-by-round ratios ``numerator[i] / denominator[i]``: the
    spread says how far apart the two medians' ratio could be moved by noise."""
    ratios = [a / b for a, b in zip(numerator, denominator, strict=True)]
    if len(ratios) < 2:
        return {"median": ratios[0], "q1": ratios[0], "q3": ratios[0]}
    q1, median, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return {"median": median, "q1": q1, "q3": q3}


def sign_test_above(ratios: Sequence[float], bar: float) -> dict:
    """One-sided paired sign test of "the step-by-step ratio is typically above ``bar``".

    Each interleaved round gives one ratio, measured under that round's conditions, so the rounds
    are the pairs: a load spike slows both sides of a round and leaves its ratio alone, and a sign
    test ignores how far a round is from the bar. Under the null hypothesis that the median ratio
    is at (or below) ``bar``, the number of rounds above it is at most Binomial(n, ½); ``p_value``
    is ``P(X ≥ above)``. A small p says the bar is missed beyond what noise explains.
    """
    n = len(ratios)
    above = sum(ratio > bar for ratio in ratios)
    p_value = sum(math.comb(n, i) for i in range(above, n + 1)) / 2**n
    return {"bar": bar, "rounds": n, "above": above, "p_value": p_value}


def step_ratio(arch: str, k: int, dcv: Timings, rloo: Timings) -> dict:
    """``rloo-dcv / rloo`` per training step (thread CPU and wall), beside the multiply-add floor."""
    rloo_macs, dcv_macs = multiply_adds(arch, k)
    cpu_ratio = dcv.cpu_median / rloo.cpu_median
    floor = dcv_macs / rloo_macs
    return {
        "cpu_ratio": cpu_ratio,
        "wall_ratio": dcv.wall_median / rloo.wall_median,
        "paired_cpu_ratio": paired_ratio(dcv.cpu, rloo.cpu),
        "macs_rloo": rloo_macs,
        "macs_rloo_dcv": dcv_macs,
        "floor": floor,
        "cpu_ratio_over_floor": cpu_ratio / floor,
        "check": sign_test_above(
            [a / b for a, b in zip(dcv.cpu, rloo.cpu, strict=True)], step_bar(arch, floor)
        ),
    }


def step_bar(arch: str, floor: float) -> float:
    """The cost bar of DESIGN §7 for ``rloo-dcv / rloo`` per VAE step: within 10 % of ``rloo`` for the
    nonlinear architecture, within 10 % of the multiply-add floor for the linear one."""
    return BAR_SLACK * (1.0 if arch == "nonlinear" else floor)


# -- the VAE ------------------------------------------------------------------------------------


BAR_SLACK = 1.10  # DESIGN §7: "within 10 %"


def binary_images(batch: int = BATCH, seed: int = 0) -> Tensor:
    """A fixed minibatch of binary 28×28 "images" ``[B, P]`` (data does not change the cost)."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, PIXELS, generator=generator) < PIXEL_DENSITY).float()


def vae_model(
    arch: str, latent: int = LATENT, compile_modules: bool = False, classes: int | None = None
) -> VAE:
    """A freshly initialised VAE (``latent`` bits, or variables of ``classes`` classes), the same
    weights each call; optionally its encoder and decoder wrapped in ``torch.compile`` (parameters
    and the model's methods stay as they are)."""
    model = VAE(latent, classes=classes, arch=arch, generator=torch.Generator().manual_seed(1))
    if compile_modules:
        model.encoder = torch.compile(model.encoder)
        model.decoder = torch.compile(model.decoder)
    return model


@dataclass
class VaeTrainer:
    """One estimator's own model copy, optimisers (Adam lr 1e-3, as the jobs) and noise stream."""

    model: VAE
    estimator: Estimator
    k: int
    encoder_optimizer: torch.optim.Optimizer
    decoder_optimizer: torch.optim.Optimizer
    generator: torch.Generator
    # Several stochastic layers: one estimator per layer above the first, unless it trains the chain.
    upper_estimators: tuple[Estimator, ...] = ()
    bound: str = "elbo"

    @classmethod
    def build(
        cls,
        name: str,
        arch: str,
        k: int,
        latent: int = LATENT,
        compile_modules: bool = False,
        classes: int | None = None,
    ) -> VaeTrainer:
        model = vae_model(arch, latent, compile_modules, classes)
        settings = default_settings("vae")
        estimator = build_estimator(name, settings, model.problem_shape)
        layers = () if estimator.info.trains_chain else range(2, model.depth + 1)
        return cls(
            model,
            estimator,
            k,
            torch.optim.Adam(model.encoder_parameters(), lr=1e-3),
            torch.optim.Adam(model.generative_parameters(), lr=1e-3),
            torch.Generator().manual_seed(2),
            tuple(build_estimator(name, settings, model.layer_shape(layer)) for layer in layers),
            estimator.info.bounds[0],
        )

    def step(self, x: Tensor) -> None:
        train_step(
            self.model,
            self.estimator,
            x,
            self.k,
            self.generator,
            self.encoder_optimizer,
            self.decoder_optimizer,
            bound=self.bound,
            upper_estimators=self.upper_estimators,
        )


def time_vae_steps(trainers: dict[str, VaeTrainer], steps: int, warmup: int, x: Tensor) -> dict[str, Timings]:
    """Seconds per training step on the minibatch ``x`` of each trainer (each its own model copy),
    steps interleaved."""
    return interleave({name: _bind(trainer.step, x) for name, trainer in trainers.items()}, steps, warmup)


def encoder_variance_by_backward(
    model: VAE, estimator: Estimator, x: Tensor, k: int, draws: int, generator: torch.Generator
) -> Moments:
    """The reference for :func:`resample_encoder_variance`: what one writes without it — per draw,
    one estimate on the minibatch and one backward pass through the encoder (its graph kept).

    Moments are merged every 10 draws, as the library does per chunk, so both hold about as much.
    """
    rows = x.shape[0]
    logits = model.encode(x)  # [B, D], the graph kept for M backward passes
    f = NegativeELBO(model, x, logits, generative_grads=False)
    params = model.encoder_parameters()
    moments: Moments | None = None
    pending: list[Tensor] = []
    for draw in range(draws):
        grad = estimator(logits, f, k, generator).grad  # [B, D]
        per_param = torch.autograd.grad(logits, params, grad / rows, retain_graph=True)
        pending.append(torch.cat([g.reshape(-1) for g in per_param]))  # [P]
        if len(pending) == 10 or draw == draws - 1:
            chunk = Moments.of(torch.stack(pending))
            moments = chunk if moments is None else moments.merge(chunk)
            pending.clear()
    return moments


def encoder_variance_resampled(
    model: VAE, estimator: Estimator, x: Tensor, k: int, draws: int, generator: torch.Generator
) -> Moments:
    """The library's path: chunks of draws in one estimator call each, one vmapped VJP per chunk."""
    return resample_encoder_variance(model, estimator, x, k, draws, generator).param_moments


# How the encoder-gradient variance at a snapshot is measured: the library, and the reference.
VAE_VARIANCE_METHODS: dict[str, Callable[..., Moments]] = {
    "resample": encoder_variance_resampled,
    "backward": encoder_variance_by_backward,
}


def time_vae_variance(
    arch: str, k: int, names: Sequence[str], draws: int, repeats: int, batch: int = BATCH
) -> tuple[dict[tuple[str, str], Timings], dict[tuple[str, str], float]]:
    """Seconds for ``draws`` encoder-gradient estimates at a fixed snapshot (a freshly initialised
    model and one minibatch), by the library's batched path and by the M-backward reference,
    interleaved; and the variance each measured (the same quantity, from different draws)."""
    model, x = vae_model(arch), binary_images(batch)
    estimators = {name: get_estimator(name) for name in names}
    variances: dict[tuple[str, str], float] = {}

    def work(name: str, method: str) -> Callable[[], None]:
        def measure() -> None:
            generator = torch.Generator().manual_seed(3)
            moments = VAE_VARIANCE_METHODS[method](model, estimators[name], x, k, draws, generator)
            variances[name, method] = float(moments.variance.mean())

        return measure

    for method in VAE_VARIANCE_METHODS.values():  # first calls pay one-off costs (allocator, vmap)
        method(model, estimators[names[0]], x, k, 2, torch.Generator().manual_seed(0))
    jobs = {(name, method): work(name, method) for name in names for method in VAE_VARIANCE_METHODS}
    return interleave(jobs, repeats), variances


# -- the toy ------------------------------------------------------------------------------------


def toy_point(dim: int) -> Tensor:
    """Logits ``[1, D]`` (float64, as the toy job) with every θ_d = ``TOY_THETA``."""
    return torch.full((1, dim), float(torch.logit(torch.tensor(TOY_THETA))), dtype=torch.float64)


def time_toy_variance(names: Sequence[str], dim: int, k: int, draws: int, repeats: int) -> dict[str, Timings]:
    """Seconds for one variance measurement of ``draws`` estimates (``resample_variance``: chunked,
    vectorised) on the published toy at dimension ``dim``, per estimator, interleaved."""
    objective, logits = make_objective("separable", dim, TOY_TARGET), toy_point(dim)
    generators = {name: torch.Generator().manual_seed(0) for name in names}
    estimators = {name: get_estimator(name) for name in names}
    for name in names:  # first calls pay one-off costs; a few draws suffice
        resample_variance(estimators[name], logits, objective, k, 16, generators[name])
    jobs = {
        name: _bind(resample_variance, estimators[name], logits, objective, k, draws, generators[name])
        for name in names
    }
    return interleave(jobs, repeats)


def _bind(function: Callable, *args) -> Callable[[], object]:
    return lambda: function(*args)


# -- memory -------------------------------------------------------------------------------------


def _rss_kib() -> tuple[int, int]:
    """This process's resident set size now and at its peak (KiB): ``VmRSS`` and ``VmHWM``."""
    status = dict(
        line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line
    )
    return int(status["VmRSS"].split()[0]), int(status["VmHWM"].split()[0])


def _memory_task(task: str, options: dict, tiny: bool = False) -> Callable[[], object]:
    """Set up ``task`` (model, data, estimator) and return the work whose peak memory is measured;
    ``tiny``: the same work on 2 rows, 2 draws, D = 8 for the toy."""
    name, k = options["estimator"], options["k"]
    batch, draws, dim = (2, 2, 8) if tiny else (BATCH, options.get("draws"), options.get("dim"))
    if task == "vae_step":
        trainer, x = VaeTrainer.build(name, options["arch"], k), binary_images(batch)
        # A few steps: the optimisers' state is allocated at the first.
        return lambda: [trainer.step(x) for _ in range(3)]
    if task == "vae_variance":
        model, x = vae_model(options["arch"]), binary_images(batch)
        method = VAE_VARIANCE_METHODS[options["method"]]
        generator = torch.Generator().manual_seed(3)
        return _bind(method, model, get_estimator(name), x, k, draws, generator)
    if task == "toy_variance":
        objective, logits = make_objective("separable", dim, TOY_TARGET), toy_point(dim)
        generator = torch.Generator().manual_seed(0)
        return _bind(resample_variance, get_estimator(name), logits, objective, k, draws, generator)
    raise ValueError(f"unknown memory task {task!r}; choose from: vae_step, vae_variance, toy_variance")


def _peak_memory_child(task: str, options: dict, threads: int) -> dict:
    """In a fresh process: set up, note the resident memory, run the work, note the peak."""
    torch.set_num_threads(threads)
    # First the same work on a tiny scale: resident memory counts the pages of torch's libraries as
    # code first runs, tens of MiB that would otherwise land on whichever work ran a kernel first.
    _memory_task(task, options, tiny=True)()
    work = _memory_task(task, options)
    before, _ = _rss_kib()
    work()
    _, peak = _rss_kib()
    # Not ru_maxrss: Linux carries it across exec, so a spawned child starts with its parent's peak
    # (the forked copy of the parent it replaced); VmHWM belongs to this process's own memory map.
    # The pid shows that no two measurements shared a process.
    return {
        "task": task,
        **options,
        "peak_mib": peak / 1024,
        "work_mib": (peak - before) / 1024,
        "pid": os.getpid(),
    }


def measure_memory(jobs: Sequence[tuple[str, dict]], threads: int, workers: int = 2) -> list[dict]:
    """Peak resident memory of each ``(task, options)``, each measured in a fresh spawned process.

    Why a process each: a process's peak only grows, and the allocator keeps freed memory, so in
    one process a later measurement would reuse an earlier one's pages and read as free;
    tracemalloc does not see torch's allocations. The peak is ``VmHWM`` of ``/proc/self/status``
    (Linux only). ``peak_mib`` is the child's whole peak (Python, torch and the set-up included);
    ``work_mib`` is what the measured work added to the memory resident after its set-up (model,
    optimisers, data, estimator).
    Memory does not depend on timing, so ``workers`` children run at a time.
    """
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, maxtasksperchild=1) as pool:
        # chunksize 1: a pool hands its workers chunks of tasks, and a chunk is one "task" to
        # maxtasksperchild, so larger chunks would measure several in one process.
        work = [(task, options, threads) for task, options in jobs]
        return pool.starmap(_peak_memory_child, work, chunksize=1)
