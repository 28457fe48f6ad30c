"""Why a run failed, in one line: real failures (an allocation that cannot succeed, a missing file, an
overflow) and torch's CUDA wording, each told in words with what was asked."""

import math
import os

import numpy as np
import pytest
import torch

from dcvbench.failures import describe, format_bytes, out_of_memory

# torch's CUDA caching allocator, word for word (torch 2.x), and as older versions put it.
CUDA_NOW = (
    "CUDA out of memory. Tried to allocate 74.51 GiB. GPU 0 has a total capacity of 139.72 GiB of which "
    "3.12 GiB is free. Including non-PyTorch memory, this process has 136.59 GiB memory in use. Of the "
    "allocated memory 135.90 GiB is allocated by PyTorch, and 12.00 MiB is reserved by PyTorch but "
    "unallocated. If reserved but unallocated memory is large try setting "
    "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation."
)
CUDA_BEFORE = "CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 15.78 GiB total capacity; 14.2 GiB)"


def raised(action) -> BaseException:
    """The exception ``action`` raises (it must raise)."""
    with pytest.raises(BaseException) as caught:
        action()
    return caught.value


def test_a_cpu_allocation_that_cannot_succeed_says_how_much_was_asked():
    error = raised(lambda: torch.empty(10**15, dtype=torch.uint8))  # 909.5 TiB: refused at once
    assert describe(error).startswith("out of memory: tried to allocate 909.5 TiB (on the CPU); choose a")
    assert "\n" not in describe(error)


def test_a_shape_past_int64_bytes_is_out_of_memory_with_its_shape():
    error = raised(lambda: torch.empty(2**62, 4))
    assert describe(error).startswith(f"out of memory: a tensor of shape [{2**62}, 4] has more bytes")


def test_numpy_memory_error_names_the_array():
    error = raised(lambda: np.empty((10**8, 10**8)))
    assert isinstance(error, MemoryError)
    assert out_of_memory(error) == "tried to allocate 71.1 PiB for an array of shape (100000000, 100000000)"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (CUDA_NOW, "tried to allocate 74.5 GiB (on the GPU, 3.12 GiB free)"),
        (CUDA_BEFORE, "tried to allocate 20.0 MiB (on the GPU)"),
        ("CUDA out of memory.", "the GPU's allocator refused a request"),
    ],
)
def test_cuda_out_of_memory_in_torchs_words(text, expected):
    assert out_of_memory(torch.OutOfMemoryError(text)) == expected
    assert describe(torch.OutOfMemoryError(text)) == f"out of memory: {expected}; " + (
        "choose a smaller --k, --dim, --latent-vars, --batch-size or --samples"
    )


def test_an_os_error_names_its_reason_and_files(tmp_path):
    missing = tmp_path / "nowhere" / "part-0.parquet"
    assert describe(raised(lambda: missing.write_bytes(b""))) == f"No such file or directory: {missing}"
    source, target = tmp_path / "a", tmp_path / "b"
    renamed = raised(lambda: os.rename(source, target))
    assert describe(renamed) == f"No such file or directory: {source} → {target}"


def test_overflow_and_anything_else():
    assert describe(raised(lambda: math.exp(1000))) == "numeric overflow: math range error"
    assert describe(ValueError("first line\nsecond line")) == "ValueError: first line"
    assert describe(KeyError()) == "KeyError"
    assert out_of_memory(RuntimeError("The size of tensor a (4) must match")) is None


@pytest.mark.parametrize(
    ("size", "text"),
    [(512, "512 bytes"), (1536, "1.5 KiB"), (80 * 2**30, "80.0 GiB"), (10**15, "909.5 TiB")],
)
def test_format_bytes(size, text):
    assert format_bytes(size) == text
