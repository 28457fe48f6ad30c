"""Run directories, manifests and append-only Parquet traces, and reading them back.

Layout of one run (DESIGN §5)::

    <out>/<run_id>/run.json                      the manifest: config, seed, versions, device, status
    <out>/<run_id>/trace/part-0000000000.parquet the trace, one part file per flush
    <out>/<run_id>/trace/part-0000000001.parquet ...

Every file is written to a temporary name in the same directory and renamed into place, so a reader
(or a run killed at any moment) sees either the whole file or none of it; files and directories get
the modes the user's umask gives a plain ``open()`` and ``mkdir()``. Trace parts are never
rewritten: a flush adds a part, numbered one past the largest number already there (never a count
of the parts, which a deleted part would make collide with an existing one). Parts are read in the
order of their numbers, not their names: runs written before the names had ten digits have five,
and ``part-100000`` sorts before ``part-99999`` by name. All parts of a run share one schema —
identity columns plus float64 metric columns fixed when the run starts — so pandas reads the
directory back in one call.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shlex
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from dcvbench.failures import describe
from dcvbench.runtime import ConfigError, signals_held

SCHEMA_VERSION = 1
MANIFEST = "run.json"
TRACE_DIR = "trace"
# Digits of a trace part's number: 10**10 parts, one every FLUSH_SECONDS, is over 1,500 years of
# running, so the names of one run also sort in their order for a plain `ls` or a Parquet dataset.
PART_DIGITS = 10
PART_NAME = re.compile(r"part-(\d+)\.parquet")
STATUSES = ("running", "finished", "interrupted", "failed", "diverged")
# What a reader reports for a run whose manifest says ``running`` but whose process is gone (killed by
# SIGKILL or the out-of-memory killer): never written to a manifest, only read from one.
STALE = "stale"

# Columns that identify a row of a trace; every other column is a float64 metric.
IDENTITY_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("problem", pa.string()),
        ("estimator", pa.string()),
        ("k", pa.int64()),
        ("seed", pa.int64()),
        ("step", pa.int64()),
        ("wall_s", pa.float64()),
    ]
)
# Columns that differ between two runs of the same configuration (identity and timing): drop them
# to compare traces for reproducibility.
TIMING_COLUMNS = ["run_id", "wall_s", "sec_per_step"]
# Flush a trace after this many seconds of work even if no log step asks for it.
FLUSH_SECONDS = 5.0
# Fields of a job's configuration that say how it was invoked, not what one of its runs computes:
# where runs go, and the estimators and seeds it ran one by one (each run's manifest names its own).
INVOCATION_FIELDS = ("out", "estimators", "seeds", "threads")


class ResultsError(ValueError):
    """A results file is missing, unreadable or not what dcvbench writes."""


class TraceWriteError(OSError):
    """A run's trace could not be written (the reason is in the message)."""


class RunFailed(RuntimeError):
    """A run ended ``failed``: its manifest says so and why. The CLI reports it in one line."""

    def __init__(self, run_dir: Path, reason: str):
        super().__init__(f"run {Path(run_dir).name} failed: {reason}")
        self.run_dir = Path(run_dir)
        self.reason = reason


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def prepare_output_root(out: Path | str) -> Path:
    """Create ``out`` if needed and check that runs can be written there (ConfigError if not)."""
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"--out {root} is a file, not a directory; choose a directory")
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ConfigError(f"cannot write to --out {root}: {reason}; choose a writable directory") from None
    return root


def process_record() -> dict[str, Any]:
    """Which process is writing a run, for :func:`run_status` to tell later whether it is still alive:
    the host, the process id and, where ``/proc`` has them, the process's start time (a process id is
    reused by another process once the first has ended; the pair is not) and its pid namespace."""
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pid_started": _process_started(os.getpid()),
        "pid_namespace": _pid_namespace(),
    }


def _pid_namespace() -> int | None:
    """Which process-id namespace this process lives in (containers on one host each have their own,
    and may share a host name): process ids are only comparable within one."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def _process_started(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot (``/proc/<pid>/stat`` field 22),
    or None where there is no ``/proc``; raises ProcessLookupError if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        if Path("/proc/self/stat").exists():
            raise ProcessLookupError(pid) from None
        return None
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: count fields after the last ")".
    return int(stat[stat.rindex(")") + 2 :].split()[19])


def run_status(manifest: Mapping[str, Any]) -> str:
    """A run's status as a reader should report it: the manifest's, except :data:`STALE` for a run
    whose manifest says ``running`` while the process that wrote it, on this host, is gone.

    A run on another host or in another container (pid namespace), or written before manifests named
    their process, cannot be checked: it stays ``running``.
    """
    status = manifest.get("status")
    return STALE if status == "running" and writer_alive(manifest) is False else status


def writer_alive(manifest: Mapping[str, Any]) -> bool | None:
    """Whether the process a manifest names is still alive; None where that cannot be checked
    (another host or container, another user's process, no process recorded)."""
    process = manifest.get("process")
    if not isinstance(process, dict) or process.get("host") != socket.gethostname():
        return None
    pid = process.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return None
    namespace = process.get("pid_namespace")
    if namespace is not None and namespace != _pid_namespace():
        return None  # another container on this host: its process ids are not ours to look up
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
        started = _process_started(pid)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return None
    recorded = process.get("pid_started")
    # A process id that now names a process started at another time belongs to another process.
    return started is None or recorded is None or started == recorded


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (never half-written).

    The file gets the mode a plain ``open()`` gives, 0666 less the umask (the kernel applies it), not
    the 0600 of ``tempfile.mkstemp``: a shared ``--out`` is readable to others when the umask says so.
    """
    while True:
        temporary = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            # O_EXCL, as mkstemp: never opens a file or a symlink that is already there.
            handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, payload: dict) -> None:
    write_atomic(path, (json.dumps(payload, indent=2, default=str) + "\n").encode())


def write_parquet_atomic(path: Path, table: pa.Table) -> None:
    """Write a Parquet file like every other file: to memory, then through :func:`write_atomic`."""
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    write_atomic(path, buffer.getvalue().to_pybytes())


def create_run_dir(root: Path, name: str) -> Path:
    """A new, unique directory ``<root>/<name>-<timestamp>-<random>``; never reuses an existing one."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    while True:
        path = root / f"{name}-{stamp}-{secrets.token_hex(3)}"
        try:
            path.mkdir()  # fails if it exists: concurrent invocations never share a directory
            return path
        except FileExistsError:
            continue


class Run:
    """One run being written: its manifest and its append-only trace.

    ``identity`` labels every row (``problem``, ``estimator``, ``k``, ``seed``, plus any extra
    string labels); ``metrics`` names the float64 columns the run may log.

    Made by :meth:`create` or :meth:`reopen`; used as a context manager: leaving the block normally
    marks the run ``finished`` (unless a status was already set, e.g. ``diverged``);
    ``KeyboardInterrupt`` marks it ``interrupted`` and any other exception ``failed``, with the
    reason in one line (``error``) and the traceback (``traceback``) in the manifest; the exception
    is then raised again as :class:`RunFailed`, except bad input (ConfigError, ResultsError), raised
    as it is. In every case the buffered rows are flushed first, and the end is written with
    SIGINT and SIGTERM held (:func:`~dcvbench.runtime.signals_held`), so a signal cannot cut it short.

    A trace that cannot be written (a full disk, a read-only file system, a value its schema cannot
    hold) ends the run ``failed`` too: the rows flushed before stay readable, the write is not tried
    again, the buffered rows go to :func:`rescue_dir` if they can, and the manifest says so — written
    in place over the old one if no new file can be made (a full disk).
    """

    def __init__(
        self,
        path: Path,
        identity: dict[str, Any],
        metrics: Sequence[str],
        manifest: dict[str, Any],
        next_part: int = 0,
        elapsed: float = 0.0,
        flushed_step: int | None = None,
    ):
        """Prefer :meth:`create` (a new run) and :meth:`reopen` (continue one)."""
        self.path = path
        self.run_id = path.name
        self.identity = {name: None for name in IDENTITY_SCHEMA.names if name not in ("step", "wall_s")}
        self.identity.update(run_id=self.run_id, **identity)
        self.schema = IDENTITY_SCHEMA
        for label in identity:  # extra labels (e.g. grad_var_method) are string columns
            if label not in IDENTITY_SCHEMA.names:
                self.schema = self.schema.append(pa.field(label, pa.string()))
        for metric in metrics:
            self.schema = self.schema.append(pa.field(metric, pa.float64()))
        self.schema = self.schema.with_metadata({"dcvbench_schema_version": str(SCHEMA_VERSION)})
        self.metrics = tuple(metrics)
        self.rows: list[dict[str, Any]] = []
        self.next_part = next_part
        self.started = time.perf_counter() - elapsed
        self.last_flush = time.perf_counter()
        self.last_step: int | None = manifest.get("last_step")
        self.manifest = manifest
        # Why the trace could not be written, once a flush has failed: it is not tried again.
        self.trace_failure: str | None = None
        self.flushed_step = flushed_step  # the last step on disk
        self._write_manifest()

    @classmethod
    def create(
        cls,
        root: Path,
        name: str,
        identity: dict[str, Any],
        metrics: Sequence[str],
        manifest: dict[str, Any],
    ) -> Run:
        """A new run in a new directory ``<root>/<name>-<timestamp>-<random>``."""
        path = create_run_dir(root, name)
        (path / TRACE_DIR).mkdir()
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "run_id": path.name,
            **identity,
            "command": shlex.join(sys.argv),
            **manifest,
            "started": now_iso(),
            "ended": None,
            "status": "running",
            "last_step": None,
            "process": process_record(),
        }
        return cls(path, identity, metrics, manifest)

    @classmethod
    def reopen(cls, path: Path, metrics: Sequence[str], resumed_from: int) -> Run:
        """Continue writing an existing run after a resume from step ``resumed_from``.

        New rows go to new parts after the existing ones; the manifest goes back to ``running``
        and records the resume; ``wall_s`` continues from the row at ``resumed_from``.
        """
        path = Path(path)
        manifest = read_manifest(path)
        parts = trace_parts(path)
        trace = read_trace(path)
        identity = {
            name: manifest[name] for name in ("problem", "estimator", "k", "seed") if name in manifest
        }
        extra = [name for name in trace.columns if name not in IDENTITY_SCHEMA.names and name not in metrics]
        identity.update({label: trace[label].iloc[0] for label in extra})
        before = trace.loc[trace["step"] <= resumed_from, "wall_s"] if len(trace) else []
        # The machine may have changed since the run began: say with how many threads it went on.
        resume = {"from_step": resumed_from, "at": now_iso(), "torch_threads": torch.get_num_threads()}
        resumes = [*manifest.get("resumes", []), resume]
        manifest.update(
            status="running", ended=None, last_step=resumed_from, resumes=resumes, process=process_record()
        )
        elapsed = float(before.iloc[-1]) if len(before) else 0.0
        next_part = part_number(parts[-1]) + 1 if parts else 0
        flushed = int(trace["step"].max()) if len(trace) else None
        return cls(path, identity, metrics, manifest, next_part, elapsed, flushed)

    @property
    def wall_s(self) -> float:
        return time.perf_counter() - self.started

    def log(self, step: int, **metrics: float | None) -> None:
        """Buffer one row of metrics at ``step``; flush if the last flush is old enough."""
        unknown = set(metrics) - set(self.metrics)
        if unknown:
            raise KeyError(f"metrics not declared for this run: {sorted(unknown)}")
        self.rows.append({**self.identity, "step": step, "wall_s": self.wall_s, **metrics})
        self.last_step = step
        if time.perf_counter() - self.last_flush >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows as a new part file (nothing if none are buffered).

        If the part cannot be written, :class:`TraceWriteError` says why, the rows stay buffered
        and the run does not try again: its end (:meth:`finish`) marks it ``failed``.
        """
        self.last_flush = time.perf_counter()
        if not self.rows:
            return
        if self.trace_failure is not None:
            raise TraceWriteError(self.trace_failure)
        try:
            table = pa.Table.from_pylist(self.rows, schema=self.schema)
            write_parquet_atomic(
                self.path / TRACE_DIR / f"part-{self.next_part:0{PART_DIGITS}d}.parquet", table
            )
        except Exception as error:  # OSError, or a value the schema cannot hold (ArrowException)
            self.trace_failure = f"cannot write its trace: {describe(error)}"
            raise TraceWriteError(self.trace_failure) from error
        self.next_part += 1
        self.flushed_step = self.rows[-1]["step"]
        self.rows = []

    def finish(self, status: str, **details: Any) -> None:
        """Flush, consolidate the trace, then record the final ``status`` (and any ``details``).

        If the trace cannot be written, the run ends ``failed`` instead, with the reason; the
        buffered rows go to :func:`rescue_dir` if they can, and :class:`RunFailed` is raised once
        the manifest says so.
        """
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        with signals_held():
            with contextlib.suppress(TraceWriteError):
                self.flush()
            if self.trace_failure is None:
                consolidate_trace(self.path)
            else:
                status, details = "failed", {**details, "error": self.trace_failure, **self._rescue_rows()}
            self.manifest.update(status=status, ended=now_iso(), last_step=self.last_step, **details)
            manifest_failure = self._write_manifest_anyhow()
        if self.trace_failure is not None or manifest_failure is not None:
            raise RunFailed(self.path, self._failure_message(manifest_failure))

    def write_table(self, name: str, table: pa.Table) -> Path:
        """Write a result table (e.g. ``variance.parquet``) into the run directory, atomically."""
        path = self.path / name
        write_parquet_atomic(path, table)
        return path

    def _write_manifest(self) -> None:
        write_json_atomic(self.path / MANIFEST, self.manifest)

    def _write_manifest_anyhow(self) -> str | None:
        """Write the manifest; where no new file can be made (a full disk), over the old one in place.

        The old file's blocks are already allocated, so a full disk can still take a manifest that
        fits them (compact, without the traceback): not atomic, but a manifest saying ``failed``
        beats one saying ``running`` forever. Returns why neither worked, or None.
        """
        try:
            self._write_manifest()
            return None
        except OSError:
            pass
        # Compact and without the traceback, and never past the blocks the old file holds: a write
        # that runs out of room half-way would leave a manifest that is no JSON at all.
        compact = {key: value for key, value in self.manifest.items() if key != "traceback"}
        data = (json.dumps(compact, separators=(",", ":"), default=str) + "\n").encode()
        try:
            with open(self.path / MANIFEST, "r+b") as file:
                if len(data) > os.fstat(file.fileno()).st_blocks * 512:
                    return "no room to rewrite it in place"
                file.write(data)
                file.truncate()
                file.flush()
                os.fsync(file.fileno())
            return None
        except OSError as error:
            return describe(error)

    def _rescue_rows(self) -> dict[str, Any]:
        """Write the rows the trace could not take to :func:`rescue_dir`; the manifest's details."""
        if not self.rows:
            return {}
        rows, self.rows = self.rows, []
        try:
            table = pa.Table.from_pylist(rows, schema=self.schema)
        except Exception:  # a value the schema cannot hold: keep them as JSON, which holds anything
            data = (json.dumps(rows, default=str) + "\n").encode()
            name = f"part-{self.next_part:0{PART_DIGITS}d}.json"
        else:
            buffer = pa.BufferOutputStream()
            pq.write_table(table, buffer)
            data = buffer.getvalue().to_pybytes()
            name = f"part-{self.next_part:0{PART_DIGITS}d}.parquet"
        try:
            folder = rescue_dir(self.run_id)
            folder.mkdir(parents=True, exist_ok=True)
            write_atomic(folder / name, data)
        except OSError as error:
            return {"rows_lost": len(rows), "rows_lost_reason": describe(error)}
        return {"rows_rescued": len(rows), "rescued_to": str(folder / name)}

    def _failure_message(self, manifest_failure: str | None) -> str:
        """One line: why the run failed, where its rows are, and whether its manifest says so."""
        flushed = self.flushed_step
        parts = [self.manifest.get("error") or self.trace_failure or "its run.json cannot be written"]
        if self.manifest.get("rows_rescued"):
            parts.append(
                f"{self.manifest['rows_rescued']} unwritten rows saved to {self.manifest['rescued_to']}"
            )
        elif self.manifest.get("rows_lost"):
            parts.append(
                f"{self.manifest['rows_lost']} unwritten rows lost ({self.manifest['rows_lost_reason']})"
            )
        if flushed is not None:
            parts.append(f"rows to step {flushed} are in {self.path / TRACE_DIR}")
        if manifest_failure is not None:
            parts.append(
                f"and its run.json could not be updated ({manifest_failure}): it may still say running"
            )
        return "; ".join(parts)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, kind, error, trace) -> None:
        if kind is None:
            if self.manifest["status"] == "running":
                self.finish("finished")
            return
        if self.manifest["status"] != "running":
            return  # ended already (e.g. diverged, or a failed end raising RunFailed): as it is
        if issubclass(kind, KeyboardInterrupt):
            self.finish("interrupted")
            return
        reason = self.trace_failure or describe(error)
        self.finish("failed", error=reason, traceback="".join(traceback.format_exception(error)))
        if not isinstance(error, (ConfigError, ResultsError, RunFailed)):
            raise RunFailed(self.path, reason) from error


def rescue_dir(run_id: str) -> Path:
    """Where a run's rows go when its own directory cannot take them: ``<tmp>/dcvbench-rescued/<run>``
    (``TMPDIR`` chooses ``<tmp>``), usually another file system than a full or read-only ``--out``."""
    return Path(tempfile.gettempdir()) / "dcvbench-rescued" / run_id


def consolidate_trace(run_dir: Path) -> None:
    """Merge a run's trace parts into one, so that a finished run reads in one file, not thousands.

    The merged part is the trace as :func:`read_trace` reads it, numbered after the others; only
    once it is in place are the others deleted. A run stopped at any moment in between reads the
    same rows (its newest part wins each step). A trace that cannot be merged (a full disk) keeps
    its parts: nothing is lost, it only reads slower.
    """
    parts = trace_parts(run_dir)
    if len(parts) < 2:
        return
    try:
        table = _merged_parts(parts)
        write_parquet_atomic(
            parts[-1].with_name(f"part-{part_number(parts[-1]) + 1:0{PART_DIGITS}d}.parquet"), table
        )
    except (OSError, pa.ArrowException, ResultsError):  # a full disk, or a part damaged from outside
        return
    for part in parts:
        part.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# Reading results back.


def find_runs(root: Path | str) -> list[Path]:
    """Every run directory (one holding ``run.json``) below ``root``, at any depth, sorted."""
    return sorted(path.parent for path in Path(root).rglob(MANIFEST))


def read_manifest(run_dir: Path | str) -> dict[str, Any]:
    path = Path(run_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ResultsError(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ResultsError(f"{path} is not readable JSON ({error})") from None
    if not isinstance(manifest, dict) or "run_id" not in manifest:
        raise ResultsError(f"{path} is not a dcvbench manifest")
    return manifest


def config_key(config: Mapping[str, Any], ignore: Iterable[str] = INVOCATION_FIELDS) -> str:
    """A run's configuration (a manifest's ``config``) as canonical JSON, without the fields ``ignore``.

    Two runs with the same key computed the same thing: ``plot`` averages them as seeds of one series
    and ``sweep`` recognises a run it has already made.
    """
    ignored = set(ignore)
    kept = {name: value for name, value in config.items() if name not in ignored}
    return json.dumps(kept, sort_keys=True, default=str)


def part_number(part: Path) -> int:
    """The number in a trace part's name ``part-<number>.parquet`` (of any width)."""
    return int(PART_NAME.fullmatch(part.name).group(1))


def trace_parts(run_dir: Path | str) -> list[Path]:
    """The trace part files of a run in the order they were written: by number, whatever its width."""
    parts = (Path(run_dir) / TRACE_DIR).glob("part-*.parquet")
    return sorted((part for part in parts if PART_NAME.fullmatch(part.name)), key=part_number)


def read_trace(run_dir: Path | str, on_unreadable: Callable[[Path, str], None] | None = None) -> pd.DataFrame:
    """The whole trace of a run (all part files), sorted by step; empty if nothing was flushed.

    A resumed run writes again the rows it had written after its checkpoint; the newest part wins.
    An unreadable part raises :class:`ResultsError`, unless ``on_unreadable(part, reason)`` is
    given: then the part is reported to it and the readable parts are returned. A part deleted
    while it is read (the run consolidating its trace as it ends) means the listing is read again.
    """
    for _ in range(3):
        try:
            table = _merged_parts(trace_parts(run_dir), on_unreadable, str(run_dir))
        except FileNotFoundError:
            continue
        return table.to_pandas() if table is not None else pd.DataFrame()
    raise ResultsError(f"the trace of {run_dir} kept changing while it was read; try again")


def _merged_parts(
    parts: Sequence[Path],
    on_unreadable: Callable[[Path, str], None] | None = None,
    where: str = "",
) -> pa.Table | None:
    """The rows of ``parts`` (in the order written) as one table: one row per step, the newest part's,
    sorted by step; None if there are none. A part that has vanished raises FileNotFoundError."""
    tables = []
    for part in parts:
        try:
            tables.append(pq.read_table(part))
        except FileNotFoundError:
            raise
        except (OSError, pa.ArrowException) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            if on_unreadable is None:
                raise ResultsError(
                    f"unreadable trace in {where or part.parent.parent}: {part.name}: {reason}"
                ) from None
            on_unreadable(part, reason)
    if not tables:
        return None
    # Parts written by one run share a schema; older versions' may lack a column (null there).
    table = pa.concat_tables(tables, promote_options="default")
    steps = table.column("step").to_numpy()  # [rows]
    # The last row of each step: np.unique on the reversed steps finds each step's first (i.e. last)
    # occurrence, and returns the steps sorted.
    _, first_in_reversed = np.unique(steps[::-1], return_index=True)
    return table.take(len(steps) - 1 - first_in_reversed)


def read_table(path: Path | str) -> pd.DataFrame:
    """A single Parquet table written by dcvbench (e.g. ``variance.parquet``)."""
    try:
        return pd.read_parquet(path)
    except (OSError, pa.ArrowException) as error:
        raise ResultsError(f"unreadable table {path}: {error}") from None


def table_from_records(records: Iterable[dict[str, Any]]) -> pa.Table:
    """A Parquet-ready table carrying the schema version in its metadata."""
    table = pa.Table.from_pylist(list(records))
    return table.replace_schema_metadata({"dcvbench_schema_version": str(SCHEMA_VERSION)})
