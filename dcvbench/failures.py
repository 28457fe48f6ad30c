"""Why a run failed, in one line: what a failed run's manifest records and what the CLI prints.

An exception that ends a run is told in words the user can act on, never as a traceback: running out
of memory says how much was asked for (torch's CPU and CUDA allocators both say, in their own
words), a full disk or a refused write names the file, anything else gives its type and the first
line of its message.
"""

from __future__ import annotations

import re

import torch

# torch's CPU allocator: "DefaultCPUAllocator: can't allocate memory: you tried to allocate N bytes".
CPU_REQUEST = re.compile(r"can't allocate memory: you tried to allocate (\d+) bytes")
# torch's CUDA caching allocator: "CUDA out of memory. Tried to allocate 74.51 GiB. GPU 0 has a total
# capacity of 139.72 GiB of which 3.12 GiB is free. ..." (older versions: "(GPU 0; 15.78 GiB total
# capacity; ...)"); it formats sizes in bytes, KiB, MiB or GiB.
CUDA_REQUEST = re.compile(r"Tried to allocate ([\d.]+) (bytes|KiB|MiB|GiB|TiB)")
CUDA_FREE = re.compile(r"of which ([\d.]+ (?:bytes|KiB|MiB|GiB|TiB)) is free")
# numpy's MemoryError: "Unable to allocate 7.28 TiB for an array with shape (10, 10) and data type ...".
NUMPY_REQUEST = re.compile(r"Unable to allocate ([\d.]+ \w+) for an array with shape (\([^)]*\))")
# torch, before it asks for any memory: the element count times the element size passes 2⁶³ bytes.
STORAGE_OVERFLOW = re.compile(r"Storage size calculation overflowed with sizes=(\[[^\]]*\])")
UNITS = ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
# What a user can shrink; each run's size grows with these (K samples of B rows of D latents).
SHRINK = "choose a smaller --k, --dim, --latent-vars, --batch-size or --samples"


def describe(error: BaseException) -> str:
    """One line saying why ``error`` ended a run (no traceback, no line breaks).

    - out of memory (``torch.OutOfMemoryError``, the CPU allocator's ``RuntimeError``, a
      ``MemoryError``): ``out of memory: tried to allocate 74.5 GiB (on the GPU, 3.1 GiB free); …``;
    - ``OSError``: its reason and file, ``No space left on device: /runs/x/trace/part-….parquet``;
    - ``OverflowError``: ``numeric overflow: …``;
    - anything else: ``Type: the first line of its message``.
    """
    memory = out_of_memory(error)
    if memory is not None:
        return f"out of memory: {memory}; {SHRINK}"
    if isinstance(error, OSError) and error.strerror:
        # A rename names both of its files: the source and its destination.
        files = " → ".join(str(name) for name in (error.filename, error.filename2) if name is not None)
        return f"{error.strerror}: {files}" if files else error.strerror
    if isinstance(error, OverflowError):
        return f"numeric overflow: {_first_line(error) or 'a value is too large for its type'}"
    first = _first_line(error)
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def out_of_memory(error: BaseException) -> str | None:
    """What an allocation that failed asked for (``tried to allocate 74.5 GiB``), or ``None`` if
    ``error`` is no failed allocation."""
    text = str(error)
    request = CPU_REQUEST.search(text)
    if request:
        return f"tried to allocate {format_bytes(int(request[1]))} (on the CPU)"
    if isinstance(error, torch.OutOfMemoryError):
        request = CUDA_REQUEST.search(text)
        if request is None:
            return "the GPU's allocator refused a request"
        asked = format_bytes(float(request[1]) * 1024 ** UNITS.index(request[2]))
        free = CUDA_FREE.search(text)
        return f"tried to allocate {asked} (on the GPU{f', {free[1]} free' if free else ''})"
    overflow = STORAGE_OVERFLOW.search(text)
    if overflow:
        return f"a tensor of shape {overflow[1]} has more bytes than can be addressed"
    if isinstance(error, MemoryError):
        request = NUMPY_REQUEST.search(text)
        if request:
            return f"tried to allocate {request[1]} for an array of shape {request[2]}"
        return _first_line(error) or "Python could not allocate memory"
    return None


def format_bytes(size: float) -> str:
    """``size`` bytes in the largest binary unit that keeps it at least 1: ``74.5 GiB``, ``512 bytes``."""
    unit = 0
    while size >= 1024 and unit < len(UNITS) - 1:
        size /= 1024
        unit += 1
    return f"{int(size)} bytes" if unit == 0 else f"{size:.1f} {UNITS[unit]}"


def _first_line(error: BaseException) -> str:
    """The first non-empty line of ``error``'s message (``""`` if none)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else ""
