"""Seconds to draw the toy's variance estimates, per estimator, measured in one process.

    python benchmarks/variance_throughput.py [--draws 2000] [--dim 200] [--k 2] [--repeats 5]

Prints, per estimator, the median wall time of one ``resample_variance`` call (all draws at once)
and its ratio to ``rloo``'s, measured in the same run so the ratios are comparable.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dcvbench.estimators import estimator_info, estimator_names, get_estimator
from dcvbench.measure.variance import resample_variance
from dcvbench.problems.toy import make_objective


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=200)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    objective = make_objective("separable", args.dim, 0.499)
    logits = torch.full((1, args.dim), 0.8, dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    timings = {}
    for name in estimator_names():
        try:
            estimator_info(name).check_k(args.k)
        except ValueError:
            continue
        estimator = get_estimator(name)
        resample_variance(estimator, logits, objective, args.k, 16, generator)  # warm-up
        runs = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            resample_variance(estimator, logits, objective, args.k, args.draws, generator)
            runs.append(time.perf_counter() - start)
        timings[name] = statistics.median(runs)
    print(f"{args.draws} draws, D={args.dim}, K={args.k}, {torch.get_num_threads()} torch threads")
    print(f"{'estimator':16s} {'seconds':>9s} {'vs rloo':>8s}")
    for name, seconds in timings.items():
        print(f"{name:16s} {seconds:9.4f} {seconds / timings['rloo']:8.2f}")


if __name__ == "__main__":
    main()
