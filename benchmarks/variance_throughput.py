"""Seconds to draw the toy's variance estimates, for every registered estimator, in one process.

    python benchmarks/variance_throughput.py [--draws 2000] [--dim 200] [--k 2] [--repeats 5]

Prints per estimator the median wall time of one ``resample_variance`` call (all draws, chunked
and vectorised; calls interleaved) and its ratio to ``rloo``'s. ``run.py`` measures the same for
the five main estimators, and how it grows with D and K.
"""

from __future__ import annotations

import argparse

import torch
from common import time_toy_variance

from dcvbench.estimators import EstimatorError, estimator_info, estimator_names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=200)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    names = []
    for name in estimator_names():
        try:
            estimator_info(name).check_k(args.k)
        except EstimatorError:
            continue
        names.append(name)
    timings = time_toy_variance(names, args.dim, args.k, args.draws, args.repeats)
    print(f"{args.draws} draws, D={args.dim}, K={args.k}, {torch.get_num_threads()} torch thread(s)")
    print(f"{'estimator':16s} {'seconds':>9s} {'vs rloo':>8s}")
    for name, t in timings.items():
        print(f"{name:16s} {t.wall_median:9.4f} {t.wall_median / timings['rloo'].wall_median:8.2f}")


if __name__ == "__main__":
    main()
