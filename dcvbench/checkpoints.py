"""Checkpoints of a run: ``<run_dir>/checkpoint.pt``, written atomically and loaded safely.

A checkpoint is a plain nested dict of tensors, numbers, strings and lists (model, optimiser,
estimator and generator states, the step). It is saved through a temporary file and a rename, so a
run killed while saving keeps its previous checkpoint whole; it is loaded with ``weights_only=True``,
so a file from elsewhere can hold data but never make ``torch.load`` run code.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dcvbench.results import write_atomic
from dcvbench.runtime import ConfigError

CHECKPOINT = "checkpoint.pt"
# torch's messages when weights_only refuses a file: a pickled object it will not build (a reference to
# a callable, a class or a function such as os.system, that unpickling would call: "Unsupported global:
# GLOBAL x.y was not an allowed global", or for os, sys, subprocess... "unsupported GLOBAL posix.system
# whose module posix is blocked"), or bytes its restricted unpickler cannot read. The rest of its text
# advises retrying with weights_only=False, which would run that code: never passed on.
PICKLED_OBJECT = re.compile(r"GLOBAL (\S+)")
UNPICKLER_DETAIL = re.compile(r"WeightsUnpickler error:\s*(.+)")


def write_checkpoint(path: Path, state: dict) -> None:
    """Save ``state`` atomically: a reader (or a resume after a crash) never sees half a checkpoint."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_atomic(path, buffer.getvalue())


def load_checkpoint(path: Path, device: torch.device) -> dict:
    """A checkpoint's state, loaded without unpickling arbitrary objects (``weights_only``).

    A damaged file, or one that holds anything but plain data, is a :class:`ConfigError`.
    """
    try:
        # Tensors go to the run's device; generator states must be moved back to the CPU before
        # ``Generator.set_state``, which takes a CPU byte tensor whatever the generator's device.
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # torch raises many kinds for a damaged or foreign file
        raise ConfigError(f"cannot load checkpoint {path}: {_load_failure(error)}") from None
    if not isinstance(state, dict) or "step" not in state:
        raise ConfigError(f"cannot load checkpoint {path}: not a dcvbench checkpoint")
    check_entries(state, path, {"step": STEP})
    return state


@dataclass(frozen=True)
class Entry:
    """What one entry of a checkpoint must be: ``kind`` in words (for the message), ``fits`` the test."""

    kind: str
    fits: Callable[[Any], bool]
    required: bool = True  # False: an entry that checkpoints of earlier versions lack


STEP = Entry("a whole number ≥ 0", lambda value: type(value) is int and value >= 0)
TENSOR = Entry("a tensor", lambda value: isinstance(value, torch.Tensor))
# torch.Generator.get_state(): the generator's state as bytes; set_state refuses any other dtype.
GENERATOR = Entry(
    "a generator state (a uint8 tensor)",
    lambda value: isinstance(value, torch.Tensor) and value.dtype == torch.uint8,
)
STATE = Entry("a state dict (a mapping)", lambda value: isinstance(value, Mapping))
OPTIONAL_STATE = Entry("a state dict or none", lambda value: value is None or isinstance(value, Mapping))
# The estimators of the stochastic layers above the first, one state each; older checkpoints have none.
LAYER_STATES = Entry(
    "a list of state dicts",
    lambda value: isinstance(value, list) and all(isinstance(item, Mapping) for item in value),
    required=False,
)


def check_entries(state: Mapping[str, Any], path: Path, entries: Mapping[str, Entry]) -> None:
    """Refuse a checkpoint ``state`` whose ``entries`` are missing or of the wrong type, naming the
    entry (``checkpoint.pt: its step must be a whole number ≥ 0, got 'x'``): a hand-edited or foreign
    file is one :class:`ConfigError`, never a crash in ``load_state_dict``."""
    for name, entry in entries.items():
        if name not in state:
            if entry.required:
                raise ConfigError(f"{path}: it has no entry {name!r}")
        elif not entry.fits(state[name]):
            raise ConfigError(f"{path}: its {name} must be {entry.kind}, got {_shown(state[name])}")


def check_step(step: int, steps: int, path: Path) -> None:
    """Refuse a checkpoint past the end of its run (``steps``): a resume from there has nothing to
    train and would record a step the run never reached."""
    if step > steps:
        raise ConfigError(f"{path}: its step {step} is past the run's {steps} steps")


def _shown(value: Any) -> str:
    """A checkpoint's value in a message: a tensor by its dtype and shape, anything else as written."""
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {list(value.shape)}"
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _load_failure(error: Exception) -> str:
    """Why ``torch.load`` refused a file, in a few words on one line."""
    text = str(error).strip()
    pickled = PICKLED_OBJECT.search(text)
    if pickled:
        return (
            f"refused: it holds a pickled Python object ({pickled[1]}), and loading it would run code; "
            "only tensors and plain data are loaded"
        )
    detail = UNPICKLER_DETAIL.search(text)
    if detail:
        return f"damaged, or not a checkpoint ({detail[1].strip()})"
    # Any other refusal: torch's reason, without its lines about turning weights_only off.
    reasons = [line.strip() for line in text.splitlines() if line.strip() and "weights_only" not in line]
    return reasons[0].removeprefix("Weights only load failed. ") if reasons else type(error).__name__


def load_into(target: Any, state: Any, path: Path, what: str) -> None:
    """``target.load_state_dict(state)``; a checkpoint that does not fit ``what`` is a ConfigError.

    A checkpoint from another architecture, latent size or estimator (or one edited by hand) fails
    here with torch's reason, in one line, before anything is written.
    """
    try:
        target.load_state_dict(state)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, RuntimeError) as error:
        lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
        if len(lines) > 1 and lines[0].startswith("Error(s) in loading"):
            lines = lines[1:]  # torch's first line only names the class; the next says what is wrong
        if isinstance(error, KeyError):
            reason = f"it has no entry {error.args[0]!r}"
        else:
            reason = lines[0] if lines else type(error).__name__
        raise ConfigError(f"{path} does not fit {what}: {reason}") from None
