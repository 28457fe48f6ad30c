"""Starting one run of a sweep: ``dcvbench ARGS`` in a fresh Python process, here or on a Dask worker.

Kept apart from the sweep job (:mod:`dcvbench.jobs.sweep`) and free of dcvbench's heavy imports: a
Dask worker unpickling a task imports this module, and should not load torch or pandas for a run
that loads them itself, in its own process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Launched:
    """What one invocation did: its exit code, the run directories it printed, its last error line."""

    code: int
    run_dirs: tuple[str, ...]
    error: str


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def launch(argv: Sequence[str], threads: int, processes: RunProcesses) -> Launched:
    """Run ``dcvbench ARGV`` in a fresh Python process with ``threads`` math threads; wait for it.

    A fresh process per run isolates runs (a crash, a leak, torch's global thread pool) and sets the
    thread count before torch starts: N runs at once get cores // N threads each, so together they
    never oversubscribe the machine. ``processes`` tracks the run, so that its sweep can stop it.
    """
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    code, stdout, stderr = processes.run([sys.executable, "-m", "dcvbench", *argv], env)
    errors = [line for line in stderr.splitlines() if line.strip()]
    run_dirs = tuple(line for line in stdout.splitlines() if line.strip())  # what -q prints
    return Launched(code, run_dirs, errors[-1] if errors else "")


class RunProcesses:
    """The runs a sweep has started in this process, so that stopping the sweep stops them cleanly.

    Each run starts in its own session: a Ctrl-C at the terminal then reaches the sweep alone, which
    passes exactly one SIGTERM to each run (a second signal during a run's clean-up could cut short
    the flush that marks it ``interrupted``).
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.live: set[subprocess.Popen] = set()
        self.stopping = False

    def run(self, command: list[str], env: dict[str, str]) -> tuple[int, str, str]:
        """Run ``command`` to its end (exit code, stdout, stderr), unless the sweep is stopping."""
        with self.lock:
            if self.stopping:
                return 130, "", "dcvbench: the sweep was stopped before this run started"
            process = subprocess.Popen(
                command,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
            self.live.add(process)
        try:
            stdout, stderr = process.communicate()
        finally:
            with self.lock:
                self.live.discard(process)
        return process.returncode, stdout, stderr

    def stop(self) -> None:
        """Stop the running runs (they mark themselves interrupted) and refuse new ones."""
        with self.lock:
            self.stopping = True
            for process in self.live:
                process.terminate()


# On a Dask worker: the runs each sweep has started from this worker process, by sweep, so that a
# stopped sweep can stop its runs there (Client.run(stop_dask_runs, sweep)).
_WORKER_RUNS: dict[str, RunProcesses] = {}
_WORKER_LOCK = threading.Lock()


def launch_on_dask_worker(argv: list[str], slots: dict[str, int], sweep: str) -> Launched:
    """The task of a Dask worker: start the run there, sharing that host's cores among its runs."""
    from distributed import get_worker
    from distributed.comm import get_address_host

    # A host the client did not see when the sweep began gets one thread per run: never oversubscribed.
    host = get_address_host(get_worker().address)
    threads = max(1, usable_cores() // slots[host]) if host in slots else 1
    return launch(argv, threads, _worker_runs(sweep))


def stop_dask_runs(sweep: str) -> None:
    """Stop the runs of ``sweep`` on this Dask worker, and refuse those it has not started yet."""
    _worker_runs(sweep).stop()


def _worker_runs(sweep: str) -> RunProcesses:
    with _WORKER_LOCK:
        return _WORKER_RUNS.setdefault(sweep, RunProcesses())
