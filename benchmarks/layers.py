"""Seconds per training step with several stochastic layers: what each estimator costs there.

    python benchmarks/layers.py [--quick] [--out FILE.json]

For each architecture of the Concrete paper's density estimation (one and two stochastic layers,
linear and nonlinear; batch 100, K = 2), every estimator trains its own copy of the same model on the
same minibatch, steps interleaved in one process with one torch thread (benchmarks/common.py), and
the table gives each one's median step and its ratio to ``rloo``'s (the median of the round-by-round
ratios, with quartiles). An estimator applied layer by layer evaluates ``f`` K times per layer
(2K on two layers); ``concrete`` and ``vimco`` train the whole chain from K evaluations.
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import torch
from common import VaeTrainer, binary_images, load_average, machine_info, paired_ratio, time_vae_steps

ARCHS = ("200H-784V", "200H~784V", "200H-200H-784V", "200H~200H~784V")
ESTIMATORS = ("rloo", "rloo-dcv", "disarm", "nvil", "concrete", "vimco", "relax")
K = 2
DEFAULT_OUT = Path(__file__).resolve().parent / "layers-results.json"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a few steps: check that it runs")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    steps, warmup = (3, 1) if args.quick else (60, 10)
    x = binary_images()
    results = {"machine": machine_info(), "load_before": load_average(), "k": K, "steps": steps, "archs": {}}
    print(
        f"K = {K}, batch {x.shape[0]}, {steps} interleaved steps, one thread; s/step (median), ratio to rloo"
    )
    for arch in ARCHS:
        trainers = {name: VaeTrainer.build(name, arch, K) for name in ESTIMATORS}
        timings = time_vae_steps(trainers, steps, warmup, x)
        rows = {}
        print(f"\n{arch}\n\n| estimator | s/step | / rloo (median [q1, q3]) |\n|---|---|---|")
        for name, timing in timings.items():
            ratio = paired_ratio(timing.cpu, timings["rloo"].cpu)
            rows[name] = {"cpu_median": timing.cpu_median, "wall_median": timing.wall_median, "ratio": ratio}
            print(
                f"| {name} | {timing.cpu_median * 1e3:.1f} ms | "
                f"{ratio['median']:.2f} [{ratio['q1']:.2f}, {ratio['q3']:.2f}] |"
            )
        results["archs"][arch] = rows
    results["load_after"] = load_average()
    results["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    if not args.quick:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
