"""Settings of the whole test suite."""

import torch


def pytest_configure(config):
    """One torch thread for every test, as for every job (dcvbench.runtime.DEFAULT_THREADS): on a
    machine shared with other work, torch's default of one thread per core made the suite about
    3× slower (docs/performance.md#threads)."""
    torch.set_num_threads(1)
