"""Devices, dtypes, seeds and provenance: the run-time facts every job needs.

No global random state is used anywhere in dcvbench: each run owns ``torch.Generator`` objects whose
seeds derive deterministically from (base seed, stream name), so adding an estimator or reordering
a sweep never shifts another run's random numbers.
"""

from __future__ import annotations

import platform
import signal
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

import dcvbench

DEVICES = ("auto", "cpu", "cuda")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
# torch threads of a job when not given (--threads). One, by measurement (docs/performance.md#threads):
# on an idle machine more threads bought nothing at these sizes, and on a machine shared with other
# jobs torch's default (one per core) made runs several times slower.
DEFAULT_THREADS = 1


class ConfigError(ValueError):
    """Bad user input: the CLI reports the message in one line and exits with code 2."""


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for but CUDA is not available; use --device cpu")
        return torch.device("cuda")
    raise ConfigError(f"unknown device {name!r}; choose from: {', '.join(DEVICES)}")


def resolve_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise ConfigError(f"unknown dtype {name!r}; choose from: {', '.join(DTYPES)}") from None


def dtype_name(dtype: torch.dtype) -> str:
    """A dtype as the options and manifests name it: ``"float64"`` for ``torch.float64``."""
    return str(dtype).removeprefix("torch.")


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` torch (intra-op) threads, then restore the caller's count.

    The count is process-wide torch state, so a job sets it for its own duration only.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# The signals that stop a job: Ctrl-C, and what `kill` and process managers send.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM while the block runs, then deliver them to the handlers in place before.

    A run's last flush and manifest write are short and must not be cut in half: a signal that
    arrives inside the block waits for its end, and is then raised again (``signal.raise_signal``)
    for whatever handles it outside: Python's KeyboardInterrupt, the CLI's, or the default
    (terminate) for a SIGTERM in a library user's process. Outside the main thread, where Python
    cannot install handlers, the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {
        signum: signal.signal(signum, lambda signum, frame: held.append(signum)) for signum in STOP_SIGNALS
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(held):  # each signal once, in the order it came
            signal.raise_signal(signum)


def derive_seed(seed: int, *keys: str | int) -> int:
    """A 63-bit seed determined by ``seed`` and the stream ``keys`` (e.g. ``"train"``, ``k``)."""
    entropy = [seed] + [zlib.crc32(str(key).encode()) for key in keys]
    # Drop the top bit: torch seeds must fit a signed 64-bit integer.
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> 1)


def make_generator(device: torch.device, seed: int, *keys: str | int) -> torch.Generator:
    """A generator on ``device`` seeded with :func:`derive_seed` of ``seed`` and ``keys``."""
    return torch.Generator(device=device).manual_seed(derive_seed(seed, *keys))


def provenance(device: torch.device) -> dict:
    """Versions, machine and source revision, for the manifest of every run."""
    info = {
        "dcvbench": dcvbench.__version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "torch_threads": torch.get_num_threads(),
    }
    info.update(_git_revision())
    return info


def _git_revision() -> dict:
    """The source tree's commit and whether it had uncommitted changes, when it is a git checkout."""
    root = Path(dcvbench.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        )
        if commit.returncode != 0:
            return {}
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return {"git_commit": commit.stdout.strip(), "git_dirty": bool(status.stdout.strip())}
