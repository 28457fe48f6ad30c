"""Checkpoints are written atomically and loaded without ever running code from the file."""

import ast
import json
import os
import re
import shlex
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import dcvbench
from dcvbench.checkpoints import CHECKPOINT, load_checkpoint, load_into, write_checkpoint
from dcvbench.cli import main
from dcvbench.config import ToyConfig, ToyProblem, VaeConfig
from dcvbench.jobs.toy import resume_toy, run_toy
from dcvbench.jobs.vae import resume_vae, run_vae
from dcvbench.results import MANIFEST
from dcvbench.runtime import ConfigError

CPU = torch.device("cpu")
# What a refusal of pickled code says: what the file holds and that it was refused, never torch's
# advice to load it with weights_only=False (which would run the code).
REFUSED = r"refused: it holds a pickled Python object \({}\), and loading it would run code"


class Payload:
    """Unpickling this would write a file: proof that the object was built."""

    def __init__(self, witness: Path):
        self.witness = witness

    def __reduce__(self):
        return (Path.write_text, (self.witness, "code ran"))


class ShellCommand:
    """A real attack: unpickling this runs a shell command (``os.system``, whose module torch blocks
    outright). Made harmless: the command only creates ``witness``, the proof that it ran."""

    def __init__(self, witness: Path):
        self.witness = witness

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.witness))}",))


def shell_checkpoint(run_dir: Path) -> Path:
    """``run_dir``'s checkpoint replaced by one that also holds a :class:`ShellCommand`, its run marked
    ``interrupted`` (so a resume loads the checkpoint); the witness file the command would create."""
    witness = run_dir.parent / f"{run_dir.name}-code-ran"
    torch.save({"step": 1, "model": {}, "payload": ShellCommand(witness)}, run_dir / CHECKPOINT)
    manifest = json.loads((run_dir / MANIFEST).read_text())
    (run_dir / MANIFEST).write_text(json.dumps({**manifest, "status": "interrupted"}))
    return witness


def test_round_trip_of_plain_state(tmp_path):
    generator = torch.Generator().manual_seed(3)
    state = {"step": 7, "logits": torch.arange(3.0), "rng": generator.get_state(), "opt": {"lr": 0.1}}
    write_checkpoint(tmp_path / "checkpoint.pt", state)
    loaded = load_checkpoint(tmp_path / "checkpoint.pt", CPU)
    assert loaded["step"] == 7 and loaded["opt"] == {"lr": 0.1}
    assert torch.equal(loaded["logits"], state["logits"]) and torch.equal(loaded["rng"], state["rng"])
    assert [path.name for path in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left


@pytest.mark.parametrize(
    ("payload", "callable_name"),
    [
        # Path.write_text pickles as getattr(Path, "write_text"): torch's "getattr … not an allowed global".
        (Payload, "getattr"),
        (ShellCommand, f"{os.system.__module__}.system"),  # torch: "… whose module posix is blocked"
    ],
    ids=["write-file", "os-system"],
)
def test_a_pickled_object_is_refused_in_one_line_and_never_built(tmp_path, payload, callable_name):
    witness = tmp_path / "witness"
    path = tmp_path / "checkpoint.pt"
    torch.save({"step": 1, "model": {}, "payload": payload(witness)}, path)
    with pytest.raises(ConfigError, match=REFUSED.format(re.escape(callable_name))) as caught:
        load_checkpoint(path, CPU)
    message = str(caught.value)
    assert "\n" not in message and "weights_only" not in message and "False" not in message, message
    assert not witness.exists()
    # The payload is real: an unsafe load runs it (harmlessly), so the check above can see a failure.
    torch.load(path, weights_only=False)
    assert witness.exists()


TINY_VAE = VaeConfig.for_protocol(
    "dcv", latent_vars=8, batch_size=20, steps=2, var_samples=4, eval_samples=2, device="cpu"
)


@pytest.mark.parametrize("job", ["toy", "vae"])
def test_resume_refuses_a_checkpoint_replaced_by_pickled_code(tmp_path, job):
    if job == "toy":
        config = ToyConfig(ToyProblem(dim=4), ("rloo",), steps=4, checkpoint_every=2, device="cpu")
        (run,) = run_toy(replace(config, out=str(tmp_path)))
    else:
        (run,) = run_vae(replace(TINY_VAE, out=str(tmp_path)))
    witness = shell_checkpoint(run.path)
    before = {path: path.read_bytes() for path in run.path.rglob("*") if path.is_file()}
    resume = resume_toy if job == "toy" else resume_vae
    with pytest.raises(ConfigError, match=REFUSED.format(f"{os.system.__module__}.system")) as caught:
        resume(run.path)
    assert "\n" not in str(caught.value) and "weights_only" not in str(caught.value)
    assert not witness.exists()
    assert {path: path.read_bytes() for path in run.path.rglob("*") if path.is_file()} == before


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "cannot load checkpoint"),
        (b"not a checkpoint", "cannot load checkpoint"),
        (b"\x80\x02 garbage", "damaged, or not a checkpoint"),
    ],
)
def test_damaged_files_are_refused_in_one_line(tmp_path, content, reason):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=reason) as caught:
        load_checkpoint(path, CPU)
    assert "\n" not in str(caught.value)


def test_plain_data_that_is_no_checkpoint_is_refused(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ConfigError, match="not a dcvbench checkpoint"):
        load_checkpoint(tmp_path / "list.pt", CPU)


def test_a_state_that_does_not_fit_is_a_config_error(tmp_path):
    model = torch.nn.Linear(3, 2)
    with pytest.raises(ConfigError, match=r"does not fit a 3→2 layer: size mismatch for weight"):
        load_into(model, torch.nn.Linear(4, 2).state_dict(), tmp_path / "c.pt", "a 3→2 layer")
    with pytest.raises(ConfigError, match=r"does not fit a 3→2 layer: .*NoneType"):
        load_into(model, None, tmp_path / "c.pt", "a 3→2 layer")


def test_the_package_loads_files_only_safely():
    # Every deserialiser in dcvbench refuses code: torch.load only with weights_only=True, and no
    # pickle, numpy object arrays or pandas pickles. (A test, so a new loader cannot quietly drop it.)
    for source in Path(dcvbench.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = [alias.name for alias in node.names] + [getattr(node, "module", None) or ""]
                assert not {"pickle", "dill", "joblib", "cloudpickle"} & set(modules), source
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                name = f"{ast.unparse(node.func.value)}.{node.func.attr}"
                assert node.func.attr != "read_pickle", (source, name)
                if name in ("np.load", "numpy.load"):
                    assert _keyword(node, "allow_pickle") is False, source
                if name == "torch.load":
                    assert _keyword(node, "weights_only") is True, source


def _keyword(call: ast.Call, name: str):
    """The constant value of keyword argument ``name`` of ``call`` (``None`` if absent)."""
    values = [k.value.value for k in call.keywords if k.arg == name and isinstance(k.value, ast.Constant)]
    return values[0] if values else None


def directory_state(root: Path) -> dict[Path, tuple[bytes | None, int]]:
    """Every file and directory under ``root`` with its bytes and modification time (a directory's
    changes when a file, even a temporary one, is made or removed in it): what a no-op leaves alone."""
    return {
        path: (path.read_bytes() if path.is_file() else None, path.stat().st_mtime_ns)
        for path in [root, *root.rglob("*")]
    }


# Finished runs with nothing to resume from at their last step: a toy run checkpoints at its cadence
# only, so none at all (the first checkpoint would come after the last step) or one step short of
# the end; any run whose checkpoint was deleted afterwards (to save space).
@pytest.mark.parametrize(
    ("steps", "checkpoint_every", "delete"),
    [(3, 10, False), (3, 2, False), (3, 2, True)],
    ids=["beyond-the-steps", "not-a-divisor", "deleted"],
)
@pytest.mark.parametrize("job", ["toy", "vae"])
def test_resuming_a_finished_run_is_a_no_op_whatever_its_checkpoint_cadence(
    tmp_path, job, steps, checkpoint_every, delete
):
    if job == "toy":
        config = ToyConfig(ToyProblem(dim=4), ("rloo",), steps=steps, var_samples=4, device="cpu")
        (run,) = run_toy(replace(config, checkpoint_every=checkpoint_every, out=str(tmp_path)))
    else:
        config = replace(TINY_VAE, steps=steps, log_every=1, checkpoint_every=checkpoint_every)
        (run,) = run_vae(replace(config, out=str(tmp_path)))
    assert run.status == "finished" and run.last_step == steps
    if delete:
        (run.path / CHECKPOINT).unlink()
    before = directory_state(tmp_path)
    assert main([job, "--resume", str(run.path), "-q"]) == 0
    assert directory_state(tmp_path) == before
