"""How many torch threads a job should use: whole jobs timed at each thread count, idle and loaded.

    python benchmarks/threads.py [--quick] [--rounds R] [--out FILE.json]

Each job is the library's own (:func:`~dcvbench.jobs.toy.run_toy`, :func:`~dcvbench.jobs.vae.run_vae`),
shortened: the toy of ``dcvbench toy --dim 200`` (its four estimators, variance every 20 steps) and
the default VAE on the embedded MNIST subset, linear and nonlinear (rloo and rloo-dcv). The thread
counts are interleaved in one process, round by round in alternating order, so the machine's other
load falls on all of them alike (``--threads`` is what the job sets: ``torch.set_num_threads``).

Two conditions: the machine as it is ("idle"; its load average is recorded), and loaded by one
busy process per core, each multiplying matrices on one thread, as other people's jobs on a shared
machine would. The table gives each (job, condition, threads) median wall seconds and its ratio to one
thread's. ``torch.get_num_threads()`` at start (one per core) is torch's default.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from common import load_average, machine_info

from dcvbench.config import ToyConfig, ToyProblem, VaeConfig
from dcvbench.jobs.toy import run_toy
from dcvbench.jobs.vae import run_vae

DEFAULT_OUT = Path(__file__).resolve().parent / "threads-results.json"


def jobs(quick: bool, out: Path) -> dict[str, Callable[[int], object]]:
    """Each job, as a function of its thread count."""
    toy_steps, vae_steps = (20, 10) if quick else (200, 200)

    def toy(threads: int) -> object:
        config = ToyConfig(problem=ToyProblem(dim=200), steps=toy_steps, threads=threads, out=str(out))
        return run_toy(config)

    def vae(arch: str) -> Callable[[int], object]:
        def run(threads: int) -> object:
            config = VaeConfig.for_protocol(
                "dcv",
                arch=arch,
                estimators=("rloo", "rloo-dcv"),
                steps=vae_steps,
                eval_every=vae_steps,
                var_every=vae_steps // 2,
                threads=threads,
                out=str(out),
            )
            return run_vae(config)

        return run

    return {"toy --dim 200": toy, "vae linear": vae("linear"), "vae nonlinear": vae("nonlinear")}


def busy(stop: multiprocessing.Event) -> None:
    """Another user's job: one thread multiplying matrices until told to stop."""
    torch.set_num_threads(1)
    a = torch.randn(256, 256)
    while not stop.is_set():
        a = torch.tanh(a @ a.T / 256)


def measure(job: Callable[[int], object], counts: list[int], rounds: int) -> dict[int, list[float]]:
    """Wall seconds of ``job`` at each thread count, interleaved round by round."""
    seconds: dict[int, list[float]] = {n: [] for n in counts}
    job(counts[0])  # warm-up: imports, data, allocator
    for r in range(rounds):
        for n in counts if r % 2 == 0 else reversed(counts):
            start = time.perf_counter()
            job(n)
            seconds[n].append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a few steps: check that it runs")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    counts = sorted({1, 2, cores})
    results = {
        "machine": machine_info(),
        "torch_default_threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "conditions": {},
    }
    print(
        f"{cores} cores; torch's default: {torch.get_num_threads()} threads; wall s (median of {args.rounds})"
    )
    print("\n| job | machine | threads | s | / 1 thread |\n|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        for condition in ("idle", "loaded"):
            stop = multiprocessing.Event()
            others = [multiprocessing.Process(target=busy, args=(stop,)) for _ in range(cores)]
            if condition == "loaded":
                for process in others:
                    process.start()
            rows = {"load_before": load_average(), "jobs": {}}
            for name, job in jobs(args.quick, Path(scratch)).items():
                seconds = measure(job, counts, args.rounds)
                base = statistics.median(seconds[1])
                rows["jobs"][name] = {str(n): s for n, s in seconds.items()}
                for n, s in seconds.items():
                    median = statistics.median(s)
                    print(f"| {name} | {condition} | {n} | {median:.1f} | {median / base:.2f} |")
            stop.set()
            for process in others:
                if process.is_alive():
                    process.join()
            rows["load_after"] = load_average()
            results["conditions"][condition] = rows
    results["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    if not args.quick:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
