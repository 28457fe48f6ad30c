"""Bad input across the whole CLI: one line on stderr, exit code 2, and nothing written or changed.

Each row is one invocation and a fragment its message must contain. Around each, every path below
the runs and data the rows point at, and below the test's own directory (the working directory,
where a default ``--out`` would land, and the ``--out`` given), is snapshotted, contents included,
and must be unchanged.
"""

import functools
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from dcvbench.checkpoints import CHECKPOINT
from dcvbench.cli import main
from dcvbench.config import ToyConfig, ToyProblem, VaeConfig
from dcvbench.data.mnist import IDX_FILES
from dcvbench.jobs.toy import run_toy
from dcvbench.jobs.vae import run_vae
from dcvbench.plot.runs import load_results
from dcvbench.results import MANIFEST
from dcvbench.sweep import existing_runs
from tests.test_checkpoints import ShellCommand

SHELL_REFUSED = f"refused: it holds a pickled Python object ({os.system.__module__}.system)"
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
TINY_VAE = VaeConfig.for_protocol(
    "dcv", latent_vars=8, batch_size=20, steps=2, var_samples=4, eval_samples=2, device="cpu"
)


class Arbitrary:
    """Any class at all: a checkpoint that pickles one must be refused, never unpickled."""


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> dict[str, Path]:
    """Real runs, damaged copies of them, bad data and blockers: what the rows point at."""
    root = tmp_path_factory.mktemp("bad-input")
    places = {"root": root, "empty": root / "empty"}
    places["empty"].mkdir()
    places["blocker"] = root / "blocker"
    places["blocker"].write_text("precious")

    places["corrupt_data"] = root / "corrupt-mnist"
    places["corrupt_data"].mkdir()
    for name in IDX_FILES:
        (places["corrupt_data"] / name).write_bytes(b"not gzip, not IDX")

    (linear,) = run_vae(replace(TINY_VAE, out=str(root / "runs")))
    (nonlinear,) = run_vae(replace(TINY_VAE, arch="nonlinear", out=str(root / "runs")))
    (toy,) = run_toy(ToyConfig(ToyProblem(dim=4), ("rloo",), steps=2, device="cpu", out=str(root / "runs")))
    categorical = replace(TINY_VAE, latent="categorical", latent_vars=4, classes=3, out=str(root / "runs"))
    (categorical,) = run_vae(categorical)
    places.update(linear=linear.path, toy_run=toy.path, categorical=categorical.path)
    # The toy run as if stopped before its first checkpoint (a finished one resumes as a no-op).
    places["toy_no_ckpt"] = root / "toy-no-checkpoint"
    shutil.copytree(toy.path, places["toy_no_ckpt"])
    manifest = json.loads((toy.path / MANIFEST).read_text())
    (places["toy_no_ckpt"] / MANIFEST).write_text(json.dumps({**manifest, "status": "interrupted"}))

    def damaged_copy(name: str, checkpoint: bytes | None) -> Path:
        """A copy of the linear run, marked interrupted (so resumable), with another checkpoint."""
        copy = root / name
        shutil.copytree(linear.path, copy)
        manifest = json.loads((copy / MANIFEST).read_text())
        (copy / MANIFEST).write_text(json.dumps({**manifest, "status": "interrupted"}))
        if checkpoint is None:
            (copy / CHECKPOINT).unlink()
        else:
            (copy / CHECKPOINT).write_bytes(checkpoint)
        return copy

    places["mismatch"] = damaged_copy("mismatch", (nonlinear.path / CHECKPOINT).read_bytes())
    places["corrupt_ckpt"] = damaged_copy("corrupt-checkpoint", b"\x80\x02 not a checkpoint")
    pickled = root / "pickled.pt"
    torch.save({"step": 2, "model": {}, "payload": Arbitrary()}, pickled)
    places["pickled"] = damaged_copy("pickled", pickled.read_bytes())
    shell = root / "shell.pt"  # a real attack, made harmless: os.system creates a file below root
    torch.save({"step": 2, "model": {}, "payload": ShellCommand(root / "code-ran")}, shell)
    places["shell"] = damaged_copy("shell", shell.read_bytes())
    places["no_ckpt"] = damaged_copy("no-checkpoint", None)

    places["latin1_spec"] = root / "latin1.toml"  # TOML is UTF-8: 0xe9 is 'é' in Latin-1 only
    places["latin1_spec"].write_bytes(b'job = "toy"\n# caf\xe9\n')
    # An images header whose 2³¹·2³¹·4 elements are 2⁶⁴: 0 in int64 arithmetic, the 16 bytes given.
    places["overflow_data"] = root / "overflow-mnist"
    shutil.copytree(places["corrupt_data"], places["overflow_data"])
    header = (0x0803).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (2**31, 2**31, 4))
    (places["overflow_data"] / IDX_FILES[0]).write_bytes(header)

    # Hand-edited manifests: of the resumable VAE run, and of the finished toy run (whose resume is a
    # no-op, but only once its manifest has been read).
    for name, changes in HAND_EDITED.items():
        places[f"edited_{name}"] = edited_manifest(root / f"edited-{name}", linear.path, changes)
    places["edited_toy"] = edited_manifest(
        root / "edited-toy", toy.path, {"config": ["rloo"], "status": "finished"}
    )
    # Checkpoints whose entries have the wrong type.
    state = torch.load(linear.path / CHECKPOINT, weights_only=True)
    for name, changes in BAD_ENTRIES.items():
        wrong = root / f"{name}.pt"
        torch.save({**state, **changes}, wrong)
        places[f"entry_{name}"] = damaged_copy(f"entry-{name}", wrong.read_bytes())
    # The user's own objective and model (variance --objective, train --objective).
    places["user_problem"] = root / "problem.py"
    places["user_problem"].write_text(USER_PROBLEM)
    places["bandit"] = Path(__file__).resolve().parents[1] / "docs" / "examples" / "bandit.py"
    return places


USER_PROBLEM = """
import torch

def make_problem():
    return (lambda b: b.sum((-2, -1))), torch.zeros(2, 1, 3, dtype=torch.float64)

def bits():
    return (lambda b: b.sum(-1)), torch.zeros(2, 3, dtype=torch.float64)

def wrong_shape():
    return (lambda b: b.sum((-2, -1))[0]), torch.zeros(2, 1, 3, dtype=torch.float64)

def boom():
    raise RuntimeError("no data")
"""


# A field of the manifest (None: removed; a dotted name: inside config) → its hand-edited value.
HAND_EDITED = {
    "no_config": {"config": None},
    "config_list": {"config": [1, 2]},
    "k_two": {"config.k": "two"},
    "k_float": {"config.k": 2.5},
    "seed_x": {"seed": "x"},
    "estimator_3": {"estimator": 3},
    "status_5": {"status": 5},
    "last_step_a": {"last_step": "a"},
    "no_k": {"k": None},
    "settings_list": {"config.estimator_settings": [1]},
    "other_seed": {"seed": 7},
}
# Checkpoint entries of the wrong type.
BAD_ENTRIES = {
    "step_str": {"step": "x"},
    "step_float": {"step": 2.5},
    "step_past": {"step": 10**6},
    "generator_float": {"train_generator": torch.zeros(8)},
    "optimizer_list": {"encoder_optimizer": [1]},
}


def edited_manifest(copy: Path, run: Path, changes: dict) -> Path:
    """A copy of ``run`` marked interrupted, its manifest edited by hand as ``changes`` says."""
    shutil.copytree(run, copy)
    manifest = {**json.loads((copy / MANIFEST).read_text()), "status": "interrupted"}
    for name, value in changes.items():
        *parents, key = name.split(".")
        edited = functools.reduce(lambda values, parent: values[parent], parents, manifest)
        if value is None:
            del edited[key]
        else:
            edited[key] = value
    (copy / MANIFEST).write_text(json.dumps(manifest))
    return copy


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path below ``root`` with its contents (``None`` for a directory)."""
    return {
        str(path.relative_to(root)): path.read_bytes() if path.is_file() else None
        for path in sorted(root.rglob("*"))
    }


CASES = [
    # toy
    (["toy", "--estimator", "nope", "--out", "{out}"], "unknown estimator 'nope'; choose from:"),
    (["toy", "--estimator", "rloo", "--k", "1", "--out", "{out}"], "K must be ≥ 2 for rloo, got 1"),
    (["toy", "--estimator", "disarm", "--k", "3", "--out", "{out}"], "K must be even for disarm, got 3"),
    (["toy", "--dim", "0", "--out", "{out}"], "--dim must be positive, got 0"),
    (["toy", "--steps", "0", "--out", "{out}"], "--steps must be positive, got 0"),
    (["toy", "--var-samples", "1", "--out", "{out}"], "--var-samples must be at least 2, got 1"),
    (["toy", "--checkpoint-every", "0", "--out", "{out}"], "--checkpoint-every must be positive, got 0"),
    (["toy", "--temperature", "0", "--out", "{out}"], "--temperature must be positive, got 0"),
    (["toy", "--objective", "cubic", "--out", "{out}"], "unknown objective 'cubic'; choose from:"),
    (["toy", "--alpha", "nan", "--out", "{out}"], "--alpha must be finite, got nan"),
    pytest.param(["toy", "--device", "cuda", "--out", "{out}"], "CUDA is not available", marks=NO_CUDA),
    (["toy", "--device", "tpu", "--out", "{out}"], "unknown device 'tpu'; choose from: auto, cpu, cuda"),
    (["toy", "--dtype", "float16", "--out", "{out}"], "unknown dtype 'float16'"),
    (["toy", "--dim", "abc", "--out", "{out}"], "Invalid value for '--dim'"),
    (["toy", "--no-such-option"], "No such option: --no-such-option"),
    (["toy", "--out", "{blocker}"], "is a file, not a directory"),
    (["toy", "--out", "{blocker}/below"], "cannot write to --out"),
    (["toy", "--resume", "{empty}"], "run.json is missing"),
    (["toy", "--resume", "{linear}"], "is not a toy run (its job is 'vae')"),
    (["toy", "--resume", "{toy_no_ckpt}"], "has no checkpoint.pt to resume from"),
    (["toy", "--resume", "{toy_run}", "--steps", "10"], "drop --steps"),
    # toy, categorical latents
    (
        ["toy", "--latent", "foo", "--out", "{out}"],
        "unknown --latent 'foo'; choose from: binary, categorical",
    ),
    (
        ["toy", "--latent", "categorical", "--classes", "1", "--out", "{out}"],
        "--classes must be at least 2, got 1",
    ),
    (["toy", "--classes", "3", "--out", "{out}"], "--classes 3 applies to categorical latents only"),
    (
        ["toy", "--latent", "categorical", "--estimator", "disarm", "--out", "{out}"],
        "disarm has no categorical version; for categorical latents choose from: reinforce, reinforce-ema,",
    ),
    (
        ["toy", "--latent", "categorical", "--estimator", "nope", "--out", "{out}"],
        "unknown estimator 'nope' for categorical latents; choose from:",
    ),
    (
        ["toy", "--latent", "categorical", "--objective", "sum-square", "--out", "{out}"],
        "unknown objective 'sum-square' for categorical latents; choose from: separable, quadratic-form",
    ),
    (["toy", "--latent", "categorical", "--target", "0.3", "--out", "{out}"], "--target applies to binary"),
    (["toy", "--resume", "{toy_run}", "--latent", "categorical"], "drop --latent"),
    # vae
    (["vae", "--estimator", "nope", "--out", "{out}"], "unknown estimator 'nope'; choose from:"),
    (["vae", "--estimator", "rloo", "--k", "1", "--out", "{out}"], "K must be ≥ 2 for rloo, got 1"),
    (["vae", "--estimator", "arm", "--k", "3", "--out", "{out}"], "K must be even for arm, got 3"),
    (["vae", "--estimator", "exact-baseline", "--out", "{out}"], "runs on the toy and user problems only"),
    (["vae", "--latent-vars", "0", "--out", "{out}"], "--latent-vars must be positive, got 0"),
    (["vae", "--batch-size", "0", "--out", "{out}"], "--batch-size must be positive, got 0"),
    (["vae", "--steps", "-3", "--out", "{out}"], "--steps must be positive, got -3"),
    (["vae", "--eval-samples", "0", "--out", "{out}"], "--eval-samples must be positive, got 0"),
    (["vae", "--var-samples", "1", "--out", "{out}"], "--var-samples must be at least 2, got 1"),
    (["vae", "--estimator", "concrete", "--temperature", "-1", "--out", "{out}"], "--temperature must be"),
    (["vae", "--prior-temperature", "0", "--out", "{out}"], "--prior-temperature must be positive, got 0.0"),
    (["vae", "--kl", "exact", "--out", "{out}"], "unknown --kl 'exact'; choose from: relaxed, analytic"),
    (["vae", "--anneal", "linear", "--out", "{out}"], "unknown --anneal 'linear'; choose from: none, exp"),
    (["vae", "--anneal-rate", "-1", "--out", "{out}"], "--anneal-rate must be ≥ 0, got -1.0"),
    (["vae", "--anneal-rate", "fast", "--out", "{out}"], "Invalid value for '--anneal-rate'"),
    (["vae", "--anneal-floor", "0", "--out", "{out}"], "--anneal-floor must be positive, got 0.0"),
    (
        ["vae", "--estimator", "concrete", "--anneal", "exp", "--temperature", "0.4", "--out", "{out}"],
        "--anneal-floor 0.5 is above concrete's temperature 0.4: annealing only lowers a temperature",
    ),
    (["vae", "--resume", "{corrupt_ckpt}", "--anneal", "exp"], "drop --anneal"),
    (["vae", "--dataset", "cifar", "--out", "{out}"], "unknown dataset 'cifar'; choose from:"),
    (["vae", "--dataset", "mnist", "--data-dir", "{empty}", "--out", "{out}"], "missing"),
    (
        ["vae", "--dataset", "mnist", "--data-dir", "{corrupt_data}", "--out", "{out}"],
        "train-images-idx3-ubyte.gz",
    ),
    (["vae", "--batch-size", "5000", "--out", "{out}"], "exceeds the 4000 training images"),
    (
        ["vae", "--arch", "conv", "--out", "{out}"],
        "unknown architecture 'conv'; choose from: linear, nonlinear, 200H-784V",
    ),
    (["vae", "--protocol", "iwae", "--out", "{out}"], "unknown protocol 'iwae'; choose from: dcv, disarm"),
    (["vae", "--var-method", "bogus", "--out", "{out}"], "unknown --var-method 'bogus'"),
    pytest.param(["vae", "--device", "cuda", "--out", "{out}"], "CUDA is not available", marks=NO_CUDA),
    (["vae", "--out", "{blocker}"], "is a file, not a directory"),
    (["vae", "--resume", "{empty}"], "run.json is missing"),
    (["vae", "--resume", "{toy_run}"], "is not a vae run (its job is 'toy')"),
    (["vae", "--resume", "{no_ckpt}"], "has no checkpoint.pt to resume from"),
    (["vae", "--resume", "{corrupt_ckpt}"], "cannot load checkpoint"),
    (["vae", "--resume", "{pickled}"], "holds a pickled Python object (tests.test_bad_input.Arbitrary)"),
    (["vae", "--resume", "{mismatch}"], "does not fit its linear run: Unexpected key(s)"),
    (["vae", "--resume", "{corrupt_ckpt}", "--latent-vars", "16"], "drop --latent-vars"),
    # vae, categorical latents
    (
        ["vae", "--latent", "foo", "--out", "{out}"],
        "unknown --latent 'foo'; choose from: binary, categorical",
    ),
    (
        ["vae", "--latent", "categorical", "--classes", "1", "--out", "{out}"],
        "--classes must be at least 2, got 1",
    ),
    (["vae", "--classes", "10", "--out", "{out}"], "--classes 10 applies to categorical latents only"),
    (
        ["vae", "--latent", "categorical", "--latent-vars", "0", "--out", "{out}"],
        "--latent-vars must be positive",
    ),
    (
        ["vae", "--latent", "categorical", "--estimator", "disarm", "--out", "{out}"],
        "disarm has no categorical version",
    ),
    (
        ["vae", "--latent", "categorical", "--estimator", "exact-baseline", "--out", "{out}"],
        "toy and user problems only",
    ),
    # variance
    (["variance", "--estimator", "nope", "--out", "{out}"], "unknown estimator 'nope'; choose from:"),
    (["variance", "--estimator", "rloo", "--k", "1", "--out", "{out}"], "K must be ≥ 2 for rloo, got 1"),
    (["variance", "--estimator", "disarm", "--k", "3", "--out", "{out}"], "K must be even for disarm, got 3"),
    (["variance", "--samples", "1", "--out", "{out}"], "--samples must be at least 2, got 1"),
    (["variance", "--tune-steps", "-1", "--out", "{out}"], "--tune-steps must be at least 0, got -1"),
    (["variance", "--theta", "1.5", "--out", "{out}"], "--theta must be in (0, 1)"),
    (["variance", "--theta", "abc", "--out", "{out}"], "--theta must be a probability in (0, 1) or 'random'"),
    (["variance", "--objective", "cubic", "--out", "{out}"], "unknown objective 'cubic'"),
    (["variance", "--problem", "vae-ish", "--out", "{out}"], "unknown problem 'vae-ish'"),
    (["variance", "--problem", "vae", "--out", "{out}"], "--problem vae needs --checkpoint"),
    (["variance", "--checkpoint", "{empty}", "--out", "{out}"], "no checkpoint at"),
    (["variance", "--checkpoint", "{mismatch}", "--out", "{out}"], "does not fit the linear model"),
    (["variance", "--checkpoint", "{corrupt_ckpt}", "--out", "{out}"], "damaged, or not a checkpoint"),
    (["variance", "--checkpoint", "{pickled}", "--out", "{out}"], "holds a pickled Python object"),
    (
        ["variance", "--checkpoint", "{linear}", "--estimator", "exact-baseline", "--out", "{out}"],
        "runs on the toy and user problems only",
    ),
    (
        ["variance", "--latent", "categorical", "--theta", "0.3", "--out", "{out}"],
        "--theta '0.3': categorical latents take random or uniform, not a probability",
    ),
    (
        ["variance", "--latent", "categorical", "--estimator", "disarm", "--out", "{out}"],
        "no categorical version",
    ),
    (
        ["variance", "--latent", "categorical", "--classes", "1", "--out", "{out}"],
        "--classes must be at least 2",
    ),
    (["variance", "--checkpoint", "{linear}", "--latent", "categorical", "--out", "{out}"], "drop --latent"),
    (
        ["variance", "--checkpoint", "{categorical}", "--estimator", "disarm", "--out", "{out}"],
        "disarm has no categorical version",
    ),
    pytest.param(["variance", "--device", "cuda", "--out", "{out}"], "CUDA is not available", marks=NO_CUDA),
    (["variance", "--out", "{blocker}/below"], "cannot write to --out"),
    # equal cost: a budget of f-evaluations instead of K
    (["variance", "--budget", "4", "--k", "2", "--out", "{out}"], "give --k or --budget, not both"),
    (["variance", "--budget", "0", "--out", "{out}"], "--budget must be a positive whole number"),
    (
        ["variance", "--estimator", "disarm", "--budget", "1", "--out", "{out}"],
        "--budget 1 is below disarm's cheapest estimate: 2 evaluations of f at K=2",
    ),
    (
        [
            "variance",
            "--checkpoint",
            "{linear}",
            "--estimator",
            "indecater",
            "--budget",
            "8",
            "--out",
            "{out}",
        ],
        "--budget 8 is below indecater's cheapest estimate: 9 evaluations of f at K=1",  # its run's 8 bits
    ),
    (["vae", "--budget", "4", "--k", "2", "--out", "{out}"], "give --k or --budget, not both"),
    (["vae", "--budget", "-2", "--out", "{out}"], "--budget must be a positive whole number"),
    (
        ["vae", "--estimator", "relax", "--budget", "2", "--out", "{out}"],
        "--budget 2 is below relax's cheapest estimate: 3 evaluations of f at K=1",
    ),
    (["vae", "--resume", "{corrupt_ckpt}", "--budget", "4"], "drop --budget"),
    # contradictions: an option beside a value of another under which it does nothing
    (
        ["toy", "--alpha", "-0.1", "--alpha-learning", "optimal", "--out", "{out}"],
        "--alpha-learning optimal does nothing with --alpha -0.1: it applies only when --alpha is not "
        "given; drop one of them",
    ),
    (
        ["vae", "--alpha-learning", "optimal", "--alpha-lr", "0.01", "--out", "{out}"],
        "--alpha-lr 0.01 does nothing with --alpha-learning optimal: it applies only with "
        "--alpha-learning sgd",
    ),
    (
        ["predict", "--alpha", "0.5", "--alpha-optimizer", "sgd", "--out", "{out}"],
        "--alpha-optimizer sgd does nothing with --alpha 0.5",
    ),
    (
        [
            "vae",
            "--estimator",
            "concrete",
            "--kl",
            "analytic",
            "--prior-temperature",
            "0.7",
            "--out",
            "{out}",
        ],
        "--prior-temperature 0.7 does nothing with --kl analytic: it applies only with --kl relaxed; "
        "drop one of them",
    ),
    (
        ["vae", "--estimator", "concrete", "--anneal-rate", "0.01", "--out", "{out}"],
        "--anneal-rate 0.01 does nothing with --anneal none: it applies only with --anneal exp; "
        "drop --anneal-rate",
    ),
    (
        ["predict", "--anneal-floor", "0.3", "--out", "{out}"],
        "--anneal-floor 0.3 does nothing with --anneal none",
    ),
    (["vae", "--prior-lr", "0.1", "--out", "{out}"], "--prior-lr applies to a learned prior only"),
    (
        ["vae", "--lr", "1e-3", "--encoder-lr", "1e-3", "--decoder-lr", "1e-3", "--out", "{out}"],
        "--lr does nothing beside both --encoder-lr and --decoder-lr",
    ),
    (["toy", "--w-scale", "2", "--out", "{out}"], "--w-scale 2.0 does nothing with --objective separable"),
    (["variance", "--checkpoint", "{linear}", "--dim", "5", "--out", "{out}"], "drop --dim"),
    (
        ["variance", "--checkpoint", "{linear}", "--temperature", "0.5", "--out", "{out}"],
        "drop --temperature",
    ),
    # --threads: checked, and the one run option a resume may change (the machine may have)
    (["toy", "--threads", "0", "--out", "{out}"], "--threads must be positive, got 0"),
    (["toy", "--resume", "{empty}", "--threads", "2"], "run.json is missing"),
    # data and plot
    (["estimators", "--latent", "foo"], "unknown --latent 'foo'; choose from: binary, categorical"),
    (["data", "download", "cifar"], "unknown data set 'cifar'; choose from:"),
    (["data", "download"], "Missing argument"),
    (["plot", "{empty}"], "no dcvbench runs under"),
    (["plot", "{root}/nowhere"], "is not a directory of dcvbench runs"),
    (["plot", "{linear}", "--format", "bmp"], "--format must be one of"),
    # a checkpoint holding pickled code (os.system): refused by name, never run (the snapshot would see it)
    (["vae", "--resume", "{shell}"], SHELL_REFUSED),
    (["variance", "--checkpoint", "{shell}", "--out", "{out}"], SHELL_REFUSED),
    # seeds: int64 in the trace, non-negative for numpy's SeedSequence
    (["toy", "--seed", "-1", "--out", "{out}"], "--seed must be a whole number from 0 to 2**63 - 1, got -1"),
    (
        ["toy", "--seed", str(2**63), "--out", "{out}"],
        f"--seed must be a whole number from 0 to 2**63 - 1, got {2**63}",
    ),
    (["vae", "--seed", "-1", "--out", "{out}"], "--seed must be a whole number from 0 to 2**63 - 1"),
    (
        ["predict", "--seed", str(2**63), "--out", "{out}"],
        "--seed must be a whole number from 0 to 2**63 - 1",
    ),
    (["variance", "--seed", "-1", "--out", "{out}"], "--seed must be a whole number from 0 to 2**63 - 1"),
    (
        ["variance", "--seed", str(2**63), "--out", "{out}"],
        "--seed must be a whole number from 0 to 2**63 - 1",
    ),
    # files that are not what they claim
    (["sweep", "{latin1_spec}"], "latin1.toml is not UTF-8 text: byte 0xe9 at offset 17"),
    (
        ["vae", "--dataset", "mnist", "--data-dir", "{overflow_data}", "--out", "{out}"],
        f"expected {16 + 2**64} for shape [2147483648, 2147483648, 4]",
    ),
    # refused before the data directory is made or any request is sent
    (
        ["data", "download", "mnist", "--base-url", "notaurl", "--data-dir", "{out}"],
        "--base-url 'notaurl' is not an http:// or https:// URL",
    ),
    # a hand-edited run.json: the field, named, with the file (config.py promises a ConfigError)
    (["vae", "--resume", "{edited_no_config}"], "run.json: it has no 'config'"),
    (["vae", "--resume", "{edited_config_list}"], "run.json: config must be a mapping, got [1, 2]"),
    (["vae", "--resume", "{edited_k_two}"], "run.json: config.k must be a whole number or null, got 'two'"),
    (["vae", "--resume", "{edited_k_float}"], "run.json: config.k must be a whole number or null, got 2.5"),
    (["vae", "--resume", "{edited_seed_x}"], "run.json: seed must be a whole number, got 'x'"),
    (["vae", "--resume", "{edited_estimator_3}"], "run.json: estimator must be a string, got 3"),
    (["vae", "--resume", "{edited_status_5}"], "run.json: status must be a string, got 5"),
    (
        ["vae", "--resume", "{edited_last_step_a}"],
        "last_step must be a whole number or null, got 'a'",
    ),
    (["vae", "--resume", "{edited_no_k}"], "run.json: it has no 'k'"),
    (["vae", "--resume", "{edited_settings_list}"], "run.json: config.estimator_settings must be a mapping"),
    (["vae", "--resume", "{edited_other_seed}"], "run.json: its seed 7 is not one its config runs ((0,))"),
    (["toy", "--resume", "{edited_toy}"], "run.json: config must be a mapping, got ['rloo']"),
    (
        ["variance", "--checkpoint", "{edited_seed_x}", "--out", "{out}"],
        "run.json: seed must be a whole number, got 'x'",
    ),
    # a checkpoint whose entries have the wrong type: the entry, named
    (["vae", "--resume", "{entry_step_str}"], "checkpoint.pt: its step must be a whole number ≥ 0, got 'x'"),
    (
        ["vae", "--resume", "{entry_step_float}"],
        "its step must be a whole number ≥ 0, got 2.5",
    ),
    (["vae", "--resume", "{entry_step_past}"], "checkpoint.pt: its step 1000000 is past the run's 2 steps"),
    (
        ["vae", "--resume", "{entry_generator_float}"],
        "its train_generator must be a generator state (a uint8 tensor), got a torch.float32 tensor",
    ),
    (["vae", "--resume", "{entry_optimizer_list}"], "its encoder_optimizer must be a state dict (a mapping)"),
    (
        ["variance", "--checkpoint", "{entry_step_str}", "--out", "{out}"],
        "checkpoint.pt: its step must be a whole number ≥ 0, got 'x'",
    ),
    # arithmetic that would overflow: refused with the allowed range
    (["toy", "--target", "1e308", "--out", "{out}"], "--target must be in [-1e+06, 1e+06], got 1e+308"),
    (["variance", "--target", "-1e155", "--out", "{out}"], "--target must be in [-1e+06, 1e+06]"),
    (["toy", "--steps", str(10**19), "--out", "{out}"], f"--steps must be at most 2**63 - 1, got {10**19}"),
    (["toy", "--steps", str(10**400), "--out", "{out}"], "--steps must be at most 2**63 - 1"),
    (["toy", "--log-every", str(2**63), "--out", "{out}"], "--log-every must be at most 2**63 - 1"),
    (["toy", "--k", str(2**63), "--out", "{out}"], f"--k must be at most 2**63 - 1, got {2**63}"),
    (["variance", "--k", str(10**30), "--out", "{out}"], "--k must be at most 2**63 - 1"),
    (["variance", "--budget", str(10**30), "--out", "{out}"], "--budget must be at most 2**63 - 1"),
    (["vae", "--budget", str(10**30), "--out", "{out}"], f"--budget must be at most 2**63 - 1, got {10**30}"),
    (["vae", "--latent-vars", str(2**63), "--out", "{out}"], "--latent-vars must be at most 2**63 - 1"),
    (["variance", "--samples", str(2**64), "--out", "{out}"], "--samples must be at most 2**63 - 1"),
    (
        ["toy", "--estimator", "concrete", "--temperature", "1e-320", "--out", "{out}"],
        "--temperature must be at least 2**-126 (float32's smallest normal), got 9.99989e-321",
    ),
    (
        ["vae", "--estimator", "concrete", "--prior-temperature", "1e-39", "--out", "{out}"],
        "--prior-temperature must be at least 2**-126",
    ),
    # the user's own objective (variance --objective FILE.py:NAME) and model (train --objective)
    (["variance", "--objective", "{root}/absent.py:make_problem", "--out", "{out}"], "no file"),
    (["variance", "--objective", "{user_problem}:missing", "--out", "{out}"], "defines no 'missing'"),
    (["variance", "--objective", "{user_problem}:wrong_shape", "--out", "{out}"], "to values [2, 2]"),
    (["variance", "--objective", "{user_problem}:boom", "--out", "{out}"], "raised RuntimeError: no data"),
    (
        ["variance", "--objective", "{user_problem}:make_problem", "--dim", "3", "--out", "{out}"],
        "drop --dim",
    ),
    (
        [
            "variance",
            "--objective",
            "{user_problem}:make_problem",
            "--checkpoint",
            "{linear}",
            "--out",
            "{out}",
        ],
        "drop --checkpoint",
    ),
    (
        [
            "variance",
            "--objective",
            "{user_problem}:make_problem",
            "--estimator",
            "exact-baseline",
            "--out",
            "{out}",
        ],
        "exact-baseline needs the objective's expectation (dcvbench.objectives.HasExpectation)",
    ),
    (
        ["variance", "--objective", "{user_problem}:bits", "--estimator", "vimco", "--out", "{out}"],
        "vimco needs the objective's proposal_in_weight",
    ),
    (["train", "--objective", "{root}/absent.py:make_model", "--out", "{out}"], "no file"),
    (
        ["train", "--objective", "{bandit}:make_nothing", "--out", "{out}"],
        "defines no 'make_nothing'",
    ),
    (
        ["train", "--objective", "{bandit}:make_model", "--k", "1", "--out", "{out}"],
        "--k 1: K must be ≥ 2 for rloo",
    ),
    (
        ["train", "--objective", "{bandit}:make_model", "--seed", "-1", "--out", "{out}"],
        "--seed must be a whole number",
    ),
    (
        ["train", "--objective", "{bandit}:make_model", "--steps", str(2**63), "--out", "{out}"],
        "--steps must be at most 2**63 - 1",
    ),
    (
        [
            "train",
            "--objective",
            "{bandit}:make_model",
            "--estimator",
            "nope",
            "--out",
            "{out}",
        ],
        "unknown estimator 'nope'",
    ),
    # out of memory before any run exists: what was asked, in one line (a request of 8 TB fails at once),
    # and no run directory left in the --out given
    (
        ["toy", "--dim", str(10**12), "--device", "cpu", "--out", "{empty}"],
        "out of memory: tried to allocate 7.3 TiB (on the CPU)",
    ),
]


@pytest.mark.parametrize(
    ("args", "message"), CASES, ids=lambda value: " ".join(value) if isinstance(value, list) else ""
)
def test_one_line_exit_2_nothing_written(args, message, places, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a default --out would land here
    values = {**places, "out": tmp_path / "out"}
    before = snapshot(places["root"]), snapshot(tmp_path)
    code = main([arg.format(**values) for arg in args])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("dcvbench: error:")
    assert message in lines[0]
    assert "Traceback" not in captured.err + captured.out
    assert (snapshot(places["root"]), snapshot(tmp_path)) == before  # the --out given was not created either


def test_plot_skips_a_hand_edited_manifest_with_its_reason_and_draws_the_rest(places):
    results = load_results(places["root"])
    reasons = {skipped.path.parent.name: skipped.reason for skipped in results.skipped}
    assert reasons["edited-config_list"] == "manifest: config must be a mapping, got [1, 2]"
    assert reasons["edited-seed_x"] == "manifest: seed must be a whole number, got 'x'"
    assert reasons["edited-estimator_3"] == "manifest: estimator must be a string, got 3"
    assert reasons["edited-last_step_a"] == "manifest: last_step must be a whole number or null, got 'a'"
    assert reasons["edited-no_k"] == "manifest: it has no 'k'"
    drawn = {Path(path).name for path in results.runs["path"]}
    assert "vae" in set(results.runs["job"]) and "toy" in set(results.runs["job"])  # the rest is drawn
    assert not drawn & set(reasons)


def test_sweep_passes_over_a_hand_edited_config(places):
    found = existing_runs(places["root"], "vae")  # estimator_settings = [1] made this raise
    kept = {path.name for runs in found.values() for path, _ in runs}
    assert places["linear"].name in kept
    invalid = {"no_config", "config_list", "k_two", "k_float", "settings_list"}
    assert not kept & {f"edited-{name}" for name in invalid}
