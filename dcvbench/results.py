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

import json
import os
import re
import secrets
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from dcvbench.runtime import ConfigError

SCHEMA_VERSION = 1
MANIFEST = "run.json"
TRACE_DIR = "trace"
# Digits of a trace part's number: 10**10 parts, one every FLUSH_SECONDS, is over 1,500 years of
# running, so the names of one run also sort in their order for a plain `ls` or a Parquet dataset.
PART_DIGITS = 10
PART_NAME = re.compile(r"part-(\d+)\.parquet")
STATUSES = ("running", "finished", "interrupted", "failed", "diverged")

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
    marks the run ``finished`` (unless a
    status was already set, e.g. ``diverged``); ``KeyboardInterrupt`` marks it ``interrupted`` and
    any other exception ``failed``. In every case the buffered rows are flushed first.
    """

    def __init__(
        self,
        path: Path,
        identity: dict[str, Any],
        metrics: Sequence[str],
        manifest: dict[str, Any],
        next_part: int = 0,
        elapsed: float = 0.0,
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
        manifest.update(status="running", ended=None, last_step=resumed_from, resumes=resumes)
        elapsed = float(before.iloc[-1]) if len(before) else 0.0
        next_part = part_number(parts[-1]) + 1 if parts else 0
        return cls(path, identity, metrics, manifest, next_part=next_part, elapsed=elapsed)

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
        """Write the buffered rows as a new part file (nothing if none are buffered)."""
        self.last_flush = time.perf_counter()
        if not self.rows:
            return
        table = pa.Table.from_pylist(self.rows, schema=self.schema)
        write_parquet_atomic(self.path / TRACE_DIR / f"part-{self.next_part:0{PART_DIGITS}d}.parquet", table)
        self.next_part += 1
        self.rows = []

    def finish(self, status: str, **details: Any) -> None:
        """Flush, then record the final ``status`` (and any ``details``) in the manifest."""
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        self.flush()
        self.manifest.update(status=status, ended=now_iso(), last_step=self.last_step, **details)
        self._write_manifest()

    def write_table(self, name: str, table: pa.Table) -> Path:
        """Write a result table (e.g. ``variance.parquet``) into the run directory, atomically."""
        path = self.path / name
        write_parquet_atomic(path, table)
        return path

    def _write_manifest(self) -> None:
        write_json_atomic(self.path / MANIFEST, self.manifest)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            if self.manifest["status"] == "running":
                self.finish("finished")
        elif issubclass(kind, KeyboardInterrupt):
            self.finish("interrupted")
        else:
            self.finish("failed", error=f"{kind.__name__}: {error}")


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
    given: then the part is reported to it and the readable parts are returned.
    """
    frames = []
    for part in trace_parts(run_dir):
        try:
            frames.append(pd.read_parquet(part))
        except (OSError, pa.ArrowException) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            if on_unreadable is None:
                raise ResultsError(f"unreadable trace in {run_dir}: {part.name}: {reason}") from None
            on_unreadable(part, reason)
    if not frames:
        return pd.DataFrame()
    frame = pd.concat(frames, ignore_index=True).drop_duplicates(subset="step", keep="last")
    return frame.sort_values("step", kind="stable").reset_index(drop=True)


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
