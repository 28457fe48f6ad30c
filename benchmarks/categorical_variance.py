"""The categorical toy's variance table (issue #8): every categorical estimator at one point, in one process.

    python benchmarks/categorical_variance.py [--variables 50] [--classes 4] [--scale 3] [--k 2 --k 4]
        [--objective separable] [--draws 20000] [--seed 0]

At seeded random logits (uniform on ``[−scale, scale]``: class probabilities away from uniform),
each estimator draws ``draws`` independent estimates (``resample_variance``) and the table gives the
mean per-coordinate variance, its ratio to ``rloo``'s, the largest ``|bias| / s.e.`` against the exact
gradient and the seconds per estimate. (That z needs every class to be drawn several times: a class
never drawn leaves its coordinates with a standard error estimated from draws that never saw it, far
too small, and an unbiased estimator then shows a large spurious z — keep ``scale`` moderate.)
``rloo-dcv`` is evaluated at the variance-optimal ``α*`` of the point, estimated from separate draws,
as ``dcvbench variance`` does for binary latents.
"""

from __future__ import annotations

import argparse

import torch

from dcvbench.estimators import EstimatorError, estimator_info, estimator_names, get_estimator
from dcvbench.measure.variance import optimal_alpha, resample_variance
from dcvbench.problems.categorical_toy import (
    CATEGORICAL_OBJECTIVES,
    categorical_exact_gradient,
    make_categorical_objective,
    random_categorical_logits,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variables", type=int, default=50)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--scale", type=float, default=3.0, help="logits uniform on [−scale, scale]")
    parser.add_argument("--k", type=int, action="append", help="repeat for several K (default: 2 and 4)")
    parser.add_argument("--objective", choices=CATEGORICAL_OBJECTIVES, default="separable")
    parser.add_argument("--draws", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    logits = random_categorical_logits(args.variables, args.classes, scale=args.scale, seed=args.seed)
    f = make_categorical_objective(args.objective, args.variables, args.classes, seed=args.seed)
    exact = categorical_exact_gradient(f, logits)
    probs = torch.softmax(logits, -1)
    largest = float(probs.max(-1).values.mean())
    print(
        f"categorical toy: {args.objective}, N={args.variables}, C={args.classes}, "
        f"logits U(−{args.scale}, {args.scale}) (mean largest class probability {largest:.2f}), "
        f"{args.draws} draws, {torch.get_num_threads()} torch thread(s)"
    )
    print(
        f"{'estimator':16s} {'K':>2s} {'variance':>10s} {'vs rloo':>8s} {'max z':>6s} {'s/estimate':>11s}  α"
    )
    for k in args.k or [2, 4]:
        rows = []  # (name, result, α)
        for index, name in enumerate(estimator_names("categorical")):
            try:
                estimator_info(name, "categorical").check_k(k)
            except EstimatorError:
                continue
            estimator = get_estimator(name, latent="categorical")
            alpha = ""
            if name == "rloo-dcv":
                tune = torch.Generator().manual_seed(args.seed + 10_000 + k)
                estimator.set_alpha(optimal_alpha(estimator, logits, f, k, args.draws, tune))
                alpha = f"{float(estimator.alpha.detach()):.3f}"
            generator = torch.Generator().manual_seed(args.seed + 100 * k + index)
            rows.append((name, resample_variance(estimator, logits, f, k, args.draws, generator), alpha))
        reference = next(result.variance for name, result, _ in rows if name == "rloo")
        for name, result, alpha in rows:
            print(
                f"{name:16s} {k:2d} {result.variance:10.3e} {result.variance / reference:8.3f} "
                f"{float(result.bias_z(exact).max()):6.1f} {result.seconds_per_estimate:11.2e}  {alpha}"
            )


if __name__ == "__main__":
    main()
