"""Devices, seeds and provenance."""

import signal

import pytest
import torch

from dcvbench.runtime import (
    ConfigError,
    derive_seed,
    make_generator,
    provenance,
    resolve_device,
    signals_held,
    torch_threads,
)


def test_derived_seeds_are_deterministic_and_distinct_per_stream():
    assert derive_seed(0, "toy", "train") == derive_seed(0, "toy", "train")
    seeds = {derive_seed(s, key) for s in range(5) for key in ("train", "measure")}
    assert len(seeds) == 10
    assert all(0 <= seed < 2**63 for seed in seeds)


def test_generators_replay_the_same_stream():
    a = torch.rand(5, generator=make_generator(torch.device("cpu"), 3, "x"))
    b = torch.rand(5, generator=make_generator(torch.device("cpu"), 3, "x"))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")


def test_provenance_names_versions():
    info = provenance(torch.device("cpu"))
    assert {"dcvbench", "python", "torch", "numpy", "device"} <= set(info)


def test_torch_threads_sets_the_count_for_the_block_and_restores_it():
    before = torch.get_num_threads()
    wanted = 2 if before != 2 else 1
    with torch_threads(wanted):
        assert torch.get_num_threads() == wanted
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads(wanted):
        raise RuntimeError("a job that fails")
    assert torch.get_num_threads() == before


def test_signals_held_delivers_a_signal_only_when_the_block_ends():
    order = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: order.append("handled"))
    try:
        with signals_held():
            signal.raise_signal(signal.SIGTERM)
            order.append("block went on")
        order.append("after")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert order == ["block went on", "handled", "after"]


def test_signals_held_raises_ctrl_c_after_the_block():
    # Python's own Ctrl-C handler, whatever this test process inherited (a shell running it in the
    # background makes SIGINT ignored).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    finished = []
    try:
        with pytest.raises(KeyboardInterrupt), signals_held():
            signal.raise_signal(signal.SIGINT)
            finished.append(True)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back as it was
    finally:
        signal.signal(signal.SIGINT, previous)
    assert finished == [True]
