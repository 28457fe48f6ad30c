"""Seconds per VAE training step, ``rloo-dcv`` against ``rloo`` (DESIGN §7), measured in one process.

    python benchmarks/vae_step_time.py [--steps 50] [--batch 100] [--k 2] [--latent 200]
                                       [--arch linear nonlinear] [--threads N]

Both estimators train their own copy of the same model on the same minibatch; their steps are
interleaved (alternating which goes first), so load from elsewhere on the machine falls on both
alike. Prints per architecture the median wall time and the median CPU time of this thread per
step, and the ``rloo-dcv / rloo`` ratios. With one torch thread the CPU time is the least sensitive
to other processes; the bar for the nonlinear architecture is a ratio ≤ 1.10, for the linear one
≤ 1.10 × its arithmetic floor (≈ 4/3 at K = 2: one more decoder-sized matrix product, §3.1).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import torch

from dcvbench.estimators import get_estimator
from dcvbench.problems.vae import BinaryVAE, train_step

NAMES = ("rloo", "rloo-dcv")
WARMUP = 10


def measure(arch: str, args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    """Median (wall, thread-CPU) seconds per step for each estimator."""
    x = (torch.rand(args.batch, 784, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    runs = {}
    for name in NAMES:
        model = BinaryVAE(latent=args.latent, arch=arch, generator=torch.Generator().manual_seed(1))
        runs[name] = (
            model,
            get_estimator(name),
            torch.optim.Adam(model.encoder_parameters(), lr=1e-3),
            torch.optim.Adam(model.generative_parameters(), lr=1e-3),
            torch.Generator().manual_seed(2),
        )
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in NAMES}
    for step in range(WARMUP + args.steps):
        for name in NAMES if step % 2 else NAMES[::-1]:
            model, estimator, encoder_optimizer, decoder_optimizer, generator = runs[name]
            wall, cpu = time.perf_counter(), time.thread_time()
            train_step(model, estimator, x, args.k, generator, encoder_optimizer, decoder_optimizer)
            if step >= WARMUP:
                times[name].append((time.perf_counter() - wall, time.thread_time() - cpu))
    return {
        name: (statistics.median(t[0] for t in runs_), statistics.median(t[1] for t in runs_))
        for name, runs_ in times.items()
    }


def multiply_adds(arch: str, k: int, batch: int, latent: int, pixels: int = 784, hidden: int = 200):
    """Matrix multiply-adds of one training step: ``(rloo, rloo-dcv)``.

    Per layer of width ``a → b`` and ``n`` rows: forward ``n·a·b``, weight gradient ``n·a·b``, input
    gradient ``n·a·b`` (needed for every layer but the first of each network — the encoder's input
    is data, and the decoder's input gradient is exactly what only ``rloo-dcv`` asks for). Elementwise
    work is not counted, so the ratio is the floor DESIGN §3.1 speaks of.
    """
    widths = (pixels, latent) if arch == "linear" else (pixels, hidden, hidden, latent)
    encoder = [a * b for a, b in itertools.pairwise(widths)]  # per layer, input side first
    decoder = encoder[::-1]  # mirrored: its first layer takes the latents

    def network(rows: int, sizes: list[int]) -> int:
        # forward + weight gradients + input gradients of every layer but the first
        return rows * (2 * sum(sizes) + sum(sizes[1:]))

    common = network(batch, encoder) + network(k * batch, decoder)
    return common, common + k * batch * decoder[0]  # + the decoder's input gradient


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--latent", type=int, default=200)
    parser.add_argument("--arch", nargs="+", default=["linear", "nonlinear"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"batch {args.batch}, K={args.k}, D={args.latent}, {torch.get_num_threads()} torch threads")
    print(f"{'arch':10s} {'estimator':9s} {'wall ms':>8s} {'cpu ms':>8s} {'wall ×':>7s} {'cpu ×':>7s}")
    for arch in args.arch:
        medians = measure(arch, args)
        base_wall, base_cpu = medians["rloo"]
        for name, (wall, cpu) in medians.items():
            print(
                f"{arch:10s} {name:9s} {1e3 * wall:8.2f} {1e3 * cpu:8.2f} "
                f"{wall / base_wall:7.3f} {cpu / base_cpu:7.3f}"
            )
        rloo_macs, dcv_macs = multiply_adds(arch, args.k, args.batch, args.latent)
        floor = dcv_macs / rloo_macs
        measured = medians["rloo-dcv"][1] / base_cpu
        print(
            f"{arch:10s} counted multiply-adds: rloo {rloo_macs / 1e6:.1f} M, rloo-dcv {dcv_macs / 1e6:.1f} M"
            f" → floor {floor:.3f}; measured cpu ratio / floor = {measured / floor:.3f}"
        )


if __name__ == "__main__":
    main()
