"""Bad input across the whole CLI: one line on stderr, exit code 2, and nothing written or changed.

Each row is one invocation and a fragment its message must contain. Around each, every path below
the runs and data the rows point at, and below the test's own directory (the working directory,
where a default ``--out`` would land, and the ``--out`` given), is snapshotted, contents included,
and must be unchanged.
"""

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
from dcvbench.results import MANIFEST
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
    return places


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
    (["vae", "--estimator", "exact-baseline", "--out", "{out}"], "runs on the toy problem only"),
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
        "toy problem only",
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
        "runs on the toy problem only",
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
