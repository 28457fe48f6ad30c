#!/usr/bin/env bash
# The gradient-quality comparison: every estimator's variance, bias norm, MSE and cosine against the
# exact gradient, on the toys and at enumerable VAE checkpoints. From the repository root:
#   bash baselines/gradient-quality/run.sh            (about 10 minutes on 2 cores)
set -euo pipefail
out=baselines/gradient-quality/runs
categorical="reinforce reinforce-ema rloo rloo-dcv muprop exact-baseline concrete st st-concrete reinmax gumbel-rao gst nvil"
binary="reinforce reinforce-ema rloo rloo-dcv muprop exact-baseline arm disarm arms concrete st st-concrete reinmax gumbel-rao gst rebar relax nvil"
each() { for name in $1; do printf -- "--estimator %s " "$name"; done; }

# The toys: a nonlinear objective (quadratic-form), seeded random logits away from uniform.
dcvbench variance --latent categorical --dim 10 --classes 8 --objective quadratic-form --theta random \
    --k 2 --k 8 --samples 5000 $(each "$categorical") --out "$out/toy" -q
dcvbench variance --latent binary --dim 20 --objective quadratic-form --theta random \
    --k 2 --k 8 --samples 5000 $(each "$binary") --out "$out/toy" -q

# Enumerable VAEs on the embedded MNIST subset, trained by rloo-dcv, then measured at their checkpoint
# against the exact gradient (every code enumerated): 4 variables × 8 classes (ReinMax's diagnostic
# setting, 4,096 codes) and 12 bits (4,096 codes).
cat_run=$(dcvbench vae --latent categorical --latent-vars 4 --classes 8 --arch nonlinear --estimator rloo-dcv \
    --steps 2000 --out "$out/train" -q)
bin_run=$(dcvbench vae --latent binary --latent-vars 12 --arch nonlinear --estimator rloo-dcv \
    --steps 2000 --out "$out/train" -q)
vae_categorical=${categorical/exact-baseline /}
vae_binary=${binary/exact-baseline /}
# K = 2 and 1000 draws: a draw at a checkpoint costs passes through the networks (and the encoder's
# parameter gradient); gumbel-rao with 10 conditional draws, not its default 100, for the same reason.
dcvbench variance --checkpoint "$cat_run" --exact --k 2 --samples 1000 --rao-samples 10 \
    $(each "$vae_categorical") --out "$out/vae" -q
dcvbench variance --checkpoint "$bin_run" --exact --k 2 --samples 1000 --rao-samples 10 \
    $(each "$vae_binary") --out "$out/vae" -q
