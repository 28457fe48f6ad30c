"""How long a run's trace takes to read: thousands of parts while it runs, one part once it has ended.

    python benchmarks/trace_read.py [--parts N] [--out FILE.json]

A run flushes a part at least every ``FLUSH_SECONDS`` (5 s), so a day of running leaves about 17,000
parts. This writes a trace of ``N`` one-row parts (12 metric columns, as a VAE run's), then times, in
one process: reading it part by part with pandas (how dcvbench read traces before consolidation),
:func:`~dcvbench.results.read_trace` on the parts, the run's end (:meth:`~dcvbench.results.Run.finish`,
which merges the parts into one), and ``read_trace`` on the merged part. All three reads must give
the same frame.
"""

from __future__ import annotations

import argparse
import datetime
import json
import tempfile
import time
from pathlib import Path

import pandas as pd
from common import machine_info

from dcvbench.results import Run, read_trace, trace_parts

DEFAULT_OUT = Path(__file__).resolve().parent / "trace-read-results.json"
METRICS = [f"metric_{i}" for i in range(12)]


def read_part_by_part(run_dir: Path) -> pd.DataFrame:
    """The trace as dcvbench read it before: one ``pandas.read_parquet`` per part, then concatenated."""
    frames = [pd.read_parquet(part) for part in trace_parts(run_dir)]
    frame = pd.concat(frames, ignore_index=True).drop_duplicates(subset="step", keep="last")
    return frame.sort_values("step", kind="stable").reset_index(drop=True)


def timed(function, *args):
    start = time.perf_counter()
    value = function(*args)
    return value, time.perf_counter() - start


def measure(parts: int, root: Path) -> dict:
    identity = {"problem": "toy", "estimator": "rloo", "k": 2, "seed": 0}
    run = Run.create(root, "trace-read", identity, METRICS, {"config": {}})
    for step in range(parts):
        run.log(step, **{metric: float(step) for metric in METRICS})
        run.flush()
    before, part_by_part_s = timed(read_part_by_part, run.path)
    running, read_trace_s = timed(read_trace, run.path)
    _, finish_s = timed(run.finish, "finished")
    ended, merged_s = timed(read_trace, run.path)
    pd.testing.assert_frame_equal(before, running)
    pd.testing.assert_frame_equal(before, ended)
    return {
        "parts": parts,
        "read_part_by_part_s": part_by_part_s,
        "read_trace_parts_s": read_trace_s,
        "finish_s": finish_s,
        "read_trace_merged_s": merged_s,
        "parts_after_finish": len(trace_parts(run.path)),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", type=int, default=5000, help="trace parts to write (default 5000)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON file to write")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as root:
        result = measure(args.parts, Path(root))
    results = {
        "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        **result,
    }
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"{result['parts']} parts:")
    print(f"  part by part with pandas (before):  {result['read_part_by_part_s']:8.2f} s")
    print(f"  read_trace on the parts:            {result['read_trace_parts_s']:8.2f} s")
    print(f"  the run's end (merges the parts):   {result['finish_s']:8.2f} s")
    print(f"  read_trace on the merged part:      {result['read_trace_merged_s']:8.3f} s")
    return results


if __name__ == "__main__":
    main()
