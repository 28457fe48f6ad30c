"""Checkpoints are written atomically and loaded without ever running code from the file."""

import ast
from pathlib import Path

import pytest
import torch

import dcvbench
from dcvbench.checkpoints import load_checkpoint, load_into, write_checkpoint
from dcvbench.runtime import ConfigError

CPU = torch.device("cpu")


class Payload:
    """Unpickling this would write a file: proof that the object was built."""

    def __init__(self, witness: Path):
        self.witness = witness

    def __reduce__(self):
        return (Path.write_text, (self.witness, "code ran"))


def test_round_trip_of_plain_state(tmp_path):
    generator = torch.Generator().manual_seed(3)
    state = {"step": 7, "logits": torch.arange(3.0), "rng": generator.get_state(), "opt": {"lr": 0.1}}
    write_checkpoint(tmp_path / "checkpoint.pt", state)
    loaded = load_checkpoint(tmp_path / "checkpoint.pt", CPU)
    assert loaded["step"] == 7 and loaded["opt"] == {"lr": 0.1}
    assert torch.equal(loaded["logits"], state["logits"]) and torch.equal(loaded["rng"], state["rng"])
    assert [path.name for path in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left


def test_a_pickled_object_is_refused_and_never_built(tmp_path):
    witness = tmp_path / "witness"
    path = tmp_path / "checkpoint.pt"
    torch.save({"step": 1, "model": {}, "payload": Payload(witness)}, path)
    with pytest.raises(ConfigError, match=r"holds a pickled Python object"):
        load_checkpoint(path, CPU)
    assert not witness.exists()


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
