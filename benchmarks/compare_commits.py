"""Seconds per VAE training step of every estimator at two commits, interleaved.

    python benchmarks/compare_commits.py BEFORE AFTER [--rounds 6] [--steps 20] [--out FILE.json]

Checks out both commits into temporary worktrees and, round after round, alternates one worker
process per commit (``BEFORE, AFTER, AFTER, BEFORE, …``), each timing ``--steps`` interleaved
training steps of every VAE estimator (binary latents, batch 100, D = 200, K = 2, nonlinear and
linear; one torch thread) after a warm-up. Alternating processes puts both commits under the same
machine load; the table reports, per estimator, the median over rounds of each worker's median
thread-CPU seconds per step, and the ratio AFTER / BEFORE with the range of the per-round ratios.

A worker builds what the ``vae`` job builds — the model, its Adam optimisers, the estimator from
the job's default settings — through whichever API its commit has (the core was rebuilt between the
two commits this script was written for: issue #13).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ESTIMATORS = [
    "reinforce", "reinforce-ema", "rloo", "rloo-dcv", "muprop", "arm", "disarm", "arms", "concrete",
    "st-concrete", "relax", "rebar", "vimco", "nvil",
]  # fmt: skip
ARCHS = ("nonlinear", "linear")

WORKER = r"""
import json, sys, time
import torch
torch.set_num_threads(1)
root, steps, warmup = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
names, archs = sys.argv[4].split(","), sys.argv[5].split(",")
sys.path[:0] = [root, root + "/benchmarks"]
# An editable install's import hook would resolve dcvbench's submodules in the installed tree.
sys.meta_path = [finder for finder in sys.meta_path if "editable" not in repr(finder).lower()]
import dcvbench
assert dcvbench.__file__.startswith(root), dcvbench.__file__
from common import binary_images, interleave, vae_model
from dcvbench.estimators import build_estimator
try:  # after the rebuild
    from dcvbench.estimators import default_settings
    settings = default_settings("vae")
except ImportError:
    from dcvbench.estimators import EstimatorSettings
    settings = EstimatorSettings()
try:  # after the rebuild
    from dcvbench.training import train_step
except ImportError:
    from dcvbench.problems.vae import train_step


def optimizer(params, lr):  # the vae job's, at both commits
    return torch.optim.Adam(params, lr=lr)

import inspect
for used in (build_estimator, train_step, vae_model):  # every piece from this commit's tree
    assert inspect.getfile(used).startswith(root), inspect.getfile(used)
x = binary_images()
result = {}
for arch in archs:
    work = {}
    for name in names:
        model = vae_model(arch)
        estimator = build_estimator(name, settings, model.problem_shape)
        encoder = optimizer(model.encoder_parameters(), 1e-3)
        decoder = optimizer(model.decoder_parameters(), 1e-3)
        generator = torch.Generator().manual_seed(2)
        def step(model=model, estimator=estimator, encoder=encoder, decoder=decoder, generator=generator):
            train_step(model, estimator, x, 2, generator, encoder, decoder)
        work[name] = step
    timings = interleave(work, steps, warmup)
    result[arch] = {name: t.cpu_median for name, t in timings.items()}
print(json.dumps(result))
"""


def worktree(commit: str, into: Path) -> Path:
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(into), commit], check=True
    )
    return into


def run_worker(tree: Path, steps: int, warmup: int) -> dict:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            WORKER,
            str(tree),
            str(steps),
            str(warmup),
            ",".join(ESTIMATORS),
            ",".join(ARCHS),
        ],
        capture_output=True,
        text=True,
        check=False,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    if done.returncode:
        raise SystemExit(f"worker at {tree} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    labels = {"before": args.before, "after": args.after}
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as scratch:
        trees = {label: worktree(commit, Path(scratch) / label) for label, commit in labels.items()}
        try:
            for round_ in range(args.rounds):
                order = ("before", "after") if round_ % 2 == 0 else ("after", "before")
                for label in order:
                    runs[label].append(run_worker(trees[label], args.steps, args.warmup))
                print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
        finally:
            for tree in trees.values():
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False
                )
    rows = []
    ratio = f"after / before (range over {args.rounds} rounds)"
    print(f"| arch | estimator | before ms/step | after ms/step | {ratio} |")
    print("|---|---|---|---|---|")
    for arch in ARCHS:
        for name in ESTIMATORS:
            before = [run[arch][name] for run in runs["before"]]
            after = [run[arch][name] for run in runs["after"]]
            ratios = [a / b for a, b in zip(after, before, strict=True)]
            row = {
                "arch": arch,
                "estimator": name,
                "before_s": statistics.median(before),
                "after_s": statistics.median(after),
                "ratio_median": statistics.median(ratios),
                "ratio_min": min(ratios),
                "ratio_max": max(ratios),
            }
            rows.append(row)
            print(
                f"| {arch} | {name} | {1e3 * row['before_s']:.2f} | {1e3 * row['after_s']:.2f} | "
                f"{row['ratio_median']:.3f} ({row['ratio_min']:.3f}–{row['ratio_max']:.3f}) |"
            )
    if args.out:
        args.out.write_text(json.dumps({"commits": labels, "rounds": args.rounds, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
