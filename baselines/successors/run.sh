#!/usr/bin/env bash
# The double control variate's unbiased successors (DESIGN §3.8) at equal cost, and the RODEO figure.
# From the repository root:
#   bash baselines/successors/run.sh variance   # equal-budget variance tables (about 45 minutes)
#   bash baselines/successors/run.sh training   # the VAE training comparison (about 20 minutes)
set -euo pipefail
out=baselines/successors/runs
binary="rloo rloo-dcv rodeo indecater disarm arms muprop relax"
categorical="rloo rloo-dcv rodeo carms indecater muprop"
each() { for name in $1; do printf -- "--estimator %s " "$name"; done; }

variance() {
    # The toys: a nonlinear objective (quadratic-form) at seeded random logits. Budgets of one and of
    # four IndeCateR outer samples: 1 + M evaluations each (M = 20 bit flips; 4 × 7 class changes).
    # The learned parts (rodeo's network and weights, relax's control) are trained at the point first.
    dcvbench variance --latent binary --dim 20 --objective quadratic-form --theta random \
        --budget 21 --budget 84 --samples 5000 --tune-steps 2000 $(each "$binary") --out "$out/toy" -q
    dcvbench variance --latent categorical --dim 4 --classes 8 --objective quadratic-form --theta random \
        --budget 29 --budget 116 --samples 5000 --tune-steps 2000 $(each "$categorical") --out "$out/toy" -q

    # Enumerable VAEs on the embedded MNIST subset (12 bits; 4 variables × 8 classes: 4,096 codes each),
    # trained 2000 steps by rodeo, measured at their checkpoint against the exact gradient: rodeo with
    # the run's learned state, relax tuned there.
    bin_run=$(dcvbench vae --latent binary --latent-vars 12 --arch nonlinear --estimator rodeo \
        --steps 2000 --out "$out/train" -q)
    cat_run=$(dcvbench vae --latent categorical --latent-vars 4 --classes 8 --arch nonlinear \
        --estimator rodeo --steps 2000 --out "$out/train" -q)
    dcvbench variance --checkpoint "$bin_run" --exact --budget 13 --budget 52 --samples 1000 \
        --tune-steps 500 $(each "$binary") --out "$out/vae" -q
    dcvbench variance --checkpoint "$cat_run" --exact --budget 29 --budget 58 --samples 1000 \
        --tune-steps 500 $(each "$categorical") --out "$out/vae" -q
    find "$out/train" -name checkpoint.pt -delete
}

training() {
    dcvbench sweep baselines/successors/grid.toml --workers 2 --out "$out/training" -q
    find "$out/training" -name checkpoint.pt -delete
}

"${1:?say variance or training}"
