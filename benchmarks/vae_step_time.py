"""Seconds per VAE training step, ``rloo-dcv`` against ``rloo`` (DESIGN §7): ``run.py``'s first
section on its own, for a quick look at one setting.

    python benchmarks/vae_step_time.py [--steps 50] [--k 2] [--arch linear nonlinear] [--threads 1]

Prints per architecture the median thread-CPU and wall milliseconds per step (batch 100, D = 200,
steps interleaved), the ``rloo-dcv / rloo`` ratios and the counted multiply-add floor.
"""

from __future__ import annotations

import argparse

import torch
from common import VaeTrainer, binary_images, step_ratio, time_vae_steps

NAMES = ("rloo", "rloo-dcv")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--arch", nargs="+", default=["linear", "nonlinear"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(f"batch 100, K={args.k}, D=200, {torch.get_num_threads()} torch thread(s)")
    print(f"{'arch':10s} {'estimator':9s} {'cpu ms':>8s} {'wall ms':>8s}")
    x = binary_images()
    for arch in args.arch:
        trainers = {name: VaeTrainer.build(name, arch, args.k) for name in NAMES}
        timings = time_vae_steps(trainers, args.steps, warmup=10, x=x)
        for name, t in timings.items():
            print(f"{arch:10s} {name:9s} {1e3 * t.cpu_median:8.2f} {1e3 * t.wall_median:8.2f}")
        ratio = step_ratio(arch, args.k, timings["rloo-dcv"], timings["rloo"])
        paired = ratio["paired_cpu_ratio"]
        print(
            f"{arch:10s} rloo-dcv / rloo: cpu {ratio['cpu_ratio']:.3f} (paired IQR {paired['q1']:.2f}–"
            f"{paired['q3']:.2f}), wall {ratio['wall_ratio']:.3f}; floor {ratio['floor']:.3f} "
            f"({ratio['macs_rloo'] / 1e6:.1f} M → {ratio['macs_rloo_dcv'] / 1e6:.1f} M multiply-adds); "
            f"cpu ratio / floor {ratio['cpu_ratio_over_floor']:.3f}"
        )


if __name__ == "__main__":
    main()
