"""dcvbench's performance, in one command and one process (so that its ratios compare).

    python benchmarks/run.py [--quick] [--out FILE.json] [--threads N] [--compile]

Measures, and prints as Markdown tables:

1. seconds per VAE training step (batch 100, D = 200, linear and nonlinear, K = 2, 4, 8) of
   ``rloo``, ``rloo-dcv``, ``disarm``, ``arms`` and ``concrete``, each training its own copy of the
   same model on the same minibatch, steps interleaved; the ratio ``rloo-dcv / rloo`` beside the
   counted multiply-add floor of DESIGN §3.1 (the bar: within 10 % of it; ≤ 1.10 for nonlinear);
2. how the step grows with K (``rloo`` and ``rloo-dcv`` also at K = 16);
3. seconds for one toy variance measurement of 2000 estimates (D = 200, each estimator; and how it
   grows with D = 200 → 2,000 → 20,000 and K = 2 → 16 for ``rloo`` and ``rloo-dcv``);
4. seconds for the VAE's ``resample`` encoder-gradient variance (M = 100 draws at a freshly
   initialised model), the library's batched path against M separate backward passes;
5. peak resident memory of each kind of work, each in a fresh process;
6. with ``--compile``: the nonlinear K = 2 step with ``torch.compile``-d encoder and decoder;
7. the double control variate's successors (DESIGN §3.8) against ``rloo`` at equal K: seconds per
   VAE step of ``rodeo`` and ``indecater`` (bits, D = 200) and of ``carms`` and ``indecater``
   (20 variables of 10 classes), ``rloo-dcv`` beside them, interleaved. IndeCateR evaluates f at
   K(1 + D) points, so its ratio is its price at equal K, not at equal cost.

``--check`` tests each ``rloo-dcv / rloo`` ratio against its bar of DESIGN §7 (within 10 % of
``rloo`` for nonlinear, of the multiply-add floor for linear) with a one-sided paired sign test over
the interleaved rounds, and exits 1 when a bar is missed beyond noise (family-wise p < 0.01).

Medians throughout, of wall time and of this thread's CPU time (with one torch thread, the default,
that is all of the work and the least disturbed by other processes). Writes everything, with the
machine and the load average before and after, to ``--out`` (default ``benchmarks/results.json``).
``--quick`` runs a few steps of each section, to check that the benchmark works (about 20 s).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from common import (
    LATENT,
    VAE_VARIANCE_METHODS,
    Timings,
    VaeTrainer,
    binary_images,
    load_average,
    machine_info,
    measure_memory,
    step_ratio,
    time_toy_variance,
    time_vae_steps,
    time_vae_variance,
)

SCHEMA_VERSION = 1
ESTIMATORS = ("rloo", "rloo-dcv", "disarm", "arms", "concrete")
PAIR = ("rloo", "rloo-dcv")  # the comparison the double control variate's cost bar is about
# Section 7: each latent type's successors of the double control variate, beside rloo and rloo-dcv.
SUCCESSORS = {
    "binary": ("rloo", "rloo-dcv", "rodeo", "indecater"),
    "categorical": ("rloo", "rloo-dcv", "carms", "indecater"),
}
CATEGORICAL_SHAPE = (20, 10)  # N variables of C classes: the categorical VAE's default
DEFAULT_OUT = Path(__file__).resolve().parent / "results.json"
CHECK_ALPHA = 0.01  # --check: family-wise significance level of a missed bar


@dataclass(frozen=True)
class Plan:
    """What to measure and how often (saved in the results)."""

    archs: tuple[str, ...] = ("linear", "nonlinear")
    ks: tuple[int, ...] = (2, 4, 8)  # VAE steps of every estimator
    pair_ks: tuple[int, ...] = (16,)  # and of rloo, rloo-dcv only: how a step grows with K
    steps: int = 60  # timed steps per estimator: the median is stable to a few % on a busy machine
    warmup: int = 10  # untimed steps first: allocator, caches and Adam's state settle
    toy_draws: int = 2000  # the toy job's --var-samples default
    toy_dims: tuple[int, ...] = (200, 2000, 20000)
    toy_ks: tuple[int, ...] = (2, 4, 8, 16)
    toy_repeats: int = 5
    vae_arch: str = "nonlinear"
    vae_draws: int = 100  # M of the resample variance
    vae_repeats: int = 3
    memory_tasks: tuple[str, ...] = ("vae_step", "toy_variance", "vae_variance")
    memory_estimators: tuple[str, ...] = ESTIMATORS
    successor_archs: tuple[str, ...] = ("linear", "nonlinear")
    successor_ks: tuple[int, ...] = (2, 4)
    successor_steps: int = 20  # fewer: an IndeCateR step evaluates the decoder at K(1 + D) points


FULL = Plan()
QUICK = Plan(
    archs=("nonlinear",),
    ks=(2,),
    pair_ks=(4,),
    steps=4,
    warmup=1,
    toy_dims=(200, 2000),
    toy_ks=(2, 4),
    toy_repeats=1,
    vae_draws=10,
    vae_repeats=1,
    memory_tasks=("vae_step",),
    memory_estimators=PAIR,
    successor_archs=("nonlinear",),
    successor_ks=(2,),
    successor_steps=2,
)


# -- sections -----------------------------------------------------------------------------------


def vae_steps(plan: Plan) -> tuple[list[dict], list[dict]]:
    """Per-step timings of every (arch, K, estimator), and the rloo-dcv / rloo ratios."""
    x = binary_images()
    rows, ratios = [], []
    for arch in plan.archs:
        for k in (*plan.ks, *plan.pair_ks):
            names = ESTIMATORS if k in plan.ks else PAIR
            _progress(f"VAE steps: {arch}, K={k}")
            trainers = {name: VaeTrainer.build(name, arch, k) for name in names}
            timings = time_vae_steps(trainers, plan.steps, plan.warmup, x)
            rows += [
                {"arch": arch, "k": k, "estimator": name, "steps": plan.steps, **_milliseconds(t)}
                for name, t in timings.items()
            ]
            ratios.append({"arch": arch, "k": k, **step_ratio(arch, k, timings["rloo-dcv"], timings["rloo"])})
    return rows, ratios


def successor_steps(plan: Plan) -> list[dict]:
    """Per-step timings of the double control variate's successors and their ratio to rloo at equal K."""
    x = binary_images()
    rows = []
    for latent, names in SUCCESSORS.items():
        latent_vars, classes = CATEGORICAL_SHAPE if latent == "categorical" else (LATENT, None)
        for arch in plan.successor_archs:
            for k in plan.successor_ks:
                _progress(f"successors: {latent}, {arch}, K={k}")
                trainers = {
                    name: VaeTrainer.build(name, arch, k, latent=latent_vars, classes=classes)
                    for name in names
                }
                timings = time_vae_steps(trainers, plan.successor_steps, plan.warmup, x)
                shape = trainers["rloo"].model.problem_shape
                rows += [
                    {
                        "latent": latent,
                        "arch": arch,
                        "k": k,
                        "estimator": name,
                        "evals": trainers[name].estimator.info.evals(k, shape),
                        "steps": plan.successor_steps,
                        **_milliseconds(t),
                        "cpu_ratio_to_rloo": t.cpu_median / timings["rloo"].cpu_median,
                        "wall_ratio_to_rloo": t.wall_median / timings["rloo"].wall_median,
                    }
                    for name, t in timings.items()
                ]
    return rows


def toy_variance(plan: Plan) -> list[dict]:
    """Seconds per toy variance measurement: every estimator at D = 200, K = 2; the pair elsewhere."""
    base_dim, base_k = plan.toy_dims[0], plan.toy_ks[0]
    points = [(base_dim, base_k)]
    points += [(dim, base_k) for dim in plan.toy_dims[1:]] + [(base_dim, k) for k in plan.toy_ks[1:]]
    rows = []
    for dim, k in points:
        names = ESTIMATORS if (dim, k) == (base_dim, base_k) else PAIR
        # Fewer repeats where one measurement takes seconds (D = 20,000): at least 2, at most the plan's.
        repeats = min(plan.toy_repeats, max(2, plan.toy_repeats * 2000 // dim))
        _progress(f"toy variance: D={dim}, K={k}, {repeats} repeats")
        timings = time_toy_variance(names, dim, k, plan.toy_draws, repeats)
        rows += [
            {
                "estimator": name,
                "dim": dim,
                "k": k,
                "draws": plan.toy_draws,
                "repeats": repeats,
                "wall_s": t.wall_median,
                "cpu_s": t.cpu_median,
            }
            for name, t in timings.items()
        ]
    return rows


def vae_variance(plan: Plan) -> list[dict]:
    """The resample encoder variance (M draws): the library's batched path against M backward passes."""
    _progress(f"VAE variance: {plan.vae_arch}, K=2, M={plan.vae_draws}")
    timings, variances = time_vae_variance(plan.vae_arch, 2, ESTIMATORS, plan.vae_draws, plan.vae_repeats)
    rows = []
    for name in ESTIMATORS:
        fast, slow = timings[name, "resample"], timings[name, "backward"]
        rows.append(
            {
                "estimator": name,
                "arch": plan.vae_arch,
                "k": 2,
                "draws": plan.vae_draws,
                "resample_wall_s": fast.wall_median,
                "resample_cpu_s": fast.cpu_median,
                "backward_wall_s": slow.wall_median,
                "backward_cpu_s": slow.cpu_median,
                "speedup_wall": slow.wall_median / fast.wall_median,
                "speedup_cpu": slow.cpu_median / fast.cpu_median,
                # The same quantity from different draws: they agree within sampling error.
                "variance_resample": variances[name, "resample"],
                "variance_backward": variances[name, "backward"],
            }
        )
    return rows


def memory(plan: Plan, threads: int) -> list[dict]:
    """Peak resident memory of a few training steps and of each variance measurement."""
    jobs: list[tuple[str, dict]] = []
    if "vae_step" in plan.memory_tasks:
        # Every estimator on the nonlinear model; the linear model's differ as little (fewer processes).
        jobs += [
            ("vae_step", {"estimator": name, "arch": arch, "k": 2})
            for arch in plan.archs
            for name in (plan.memory_estimators if arch == plan.vae_arch else PAIR)
        ]
    if "toy_variance" in plan.memory_tasks:
        dims = {plan.toy_dims[0]: plan.memory_estimators, plan.toy_dims[-1]: PAIR}
        jobs += [
            ("toy_variance", {"estimator": name, "dim": dim, "k": 2, "draws": plan.toy_draws})
            for dim, names in dims.items()
            for name in names
        ]
    if "vae_variance" in plan.memory_tasks:
        jobs += [
            (
                "vae_variance",
                {"estimator": name, "arch": plan.vae_arch, "k": 2, "draws": plan.vae_draws, "method": method},
            )
            for name in PAIR
            for method in VAE_VARIANCE_METHODS
        ]
    _progress(f"memory: {len(jobs)} measurements, one fresh process each")
    return measure_memory(jobs, threads)


def compiled_steps(plan: Plan) -> list[dict]:
    """Eager against ``torch.compile``-d encoder and decoder, nonlinear, K = 2, interleaved."""
    _progress("VAE steps: torch.compile (compiling takes a while)")
    x = binary_images()
    trainers: dict[str, VaeTrainer] = {}
    first_step: dict[str, float] = {}
    for name in PAIR:
        trainers[name] = VaeTrainer.build(name, "nonlinear", 2)
        compiled = VaeTrainer.build(name, "nonlinear", 2, compile_modules=True)
        start = time.perf_counter()
        compiled.step(x)  # the first step compiles
        first_step[f"{name} (compiled)"] = time.perf_counter() - start
        trainers[f"{name} (compiled)"] = compiled
    timings = time_vae_steps(trainers, plan.steps, plan.warmup, x)
    return [
        {
            "arch": "nonlinear",
            "k": 2,
            "variant": name,
            "first_step_s": first_step.get(name),
            **_milliseconds(t),
        }
        for name, t in timings.items()
    ]


# -- report -------------------------------------------------------------------------------------


def _milliseconds(timings: Timings) -> dict:
    return {"wall_ms": 1e3 * timings.wall_median, "cpu_ms": 1e3 * timings.cpu_median}


def _progress(message: str) -> None:
    print(f"· {message}", file=sys.stderr, flush=True)


def report(results: dict) -> str:
    """The results as Markdown tables (what docs/performance.md shows)."""
    machine, load = results["machine"], results["load_average"]
    head = (
        f"{machine['cpu_model']}, {machine['cores']} cores, torch {machine['torch']}, "
        f"{results['torch_threads']} torch thread(s); load average (1, 5, 15 min) before "
        f"{load['before']}, after {load['after']}; {results['seconds']:.0f} s in all"
    )
    sections = [head, _step_table(results), _step_growth_table(results), *_toy_tables(results)]
    sections += [_vae_variance_table(results), _memory_table(results), _successor_table(results)]
    if results.get("compile"):
        sections.append(_compile_table(results))
    return "\n\n".join(sections)


def _table(title: str, header: list[str], rows: list[list[str]]) -> str:
    lines = [title, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _step_table(results: dict) -> str:
    steps = {(r["arch"], r["k"], r["estimator"]): r for r in results["vae_step"]}
    rows = []
    for ratio in results["vae_step_ratio"]:
        arch, k = ratio["arch"], ratio["k"]
        if (arch, k, ESTIMATORS[-1]) not in steps:
            continue  # a K timed for the pair only: in the growth table
        paired = ratio["paired_cpu_ratio"]
        cells = [
            f"{steps[arch, k, name]['cpu_ms']:.2f} / {steps[arch, k, name]['wall_ms']:.2f}"
            for name in ESTIMATORS
        ]
        rows.append(
            [
                arch,
                str(k),
                *cells,
                f"**{ratio['cpu_ratio']:.3f}** ({paired['q1']:.2f}–{paired['q3']:.2f})",
                f"{ratio['wall_ratio']:.3f}",
                f"{ratio['floor']:.3f}",
                f"{ratio['cpu_ratio_over_floor']:.3f}",
            ]
        )
    title = (
        f"VAE training step, ms: median thread-CPU / wall over {results['plan']['steps']} interleaved "
        "steps (batch 100, D = 200); rloo-dcv / rloo with the quartiles of the step-by-step ratio"
    )
    header = ["arch", "K", *ESTIMATORS, "dcv/rloo cpu", "dcv/rloo wall", "floor", "cpu ratio / floor"]
    return _table(title, header, rows)


def _step_growth_table(results: dict) -> str:
    steps = {(r["arch"], r["k"], r["estimator"]): r["cpu_ms"] for r in results["vae_step"]}
    rows = [
        [r["arch"], str(r["k"])]
        + [f"{steps[r['arch'], r['k'], name]:.1f}" for name in PAIR]
        + [f"{r['cpu_ratio']:.3f}", f"{r['floor']:.3f}"]
        for r in results["vae_step_ratio"]
    ]
    return _table("How a VAE step grows with K (thread-CPU ms)", ["arch", "K", *PAIR, "ratio", "floor"], rows)


def _toy_tables(results: dict) -> list[str]:
    plan, rows = results["plan"], results["toy_variance"]
    base_dim, base_k = plan["toy_dims"][0], plan["toy_ks"][0]
    by_point = {(r["estimator"], r["dim"], r["k"]): r for r in rows}
    base = [
        [r["estimator"], f"{r['wall_s']:.4f}", f"{r['cpu_s']:.4f}"]
        for r in rows
        if (r["dim"], r["k"]) == (base_dim, base_k)
    ]
    title = (
        f"Toy variance measurement: {plan['toy_draws']} estimates at D = {base_dim}, K = {base_k}, seconds"
    )
    tables = [_table(title, ["estimator", "wall", "thread CPU"], base)]
    growth = []
    for label, points in (
        ("D", [(dim, base_k) for dim in plan["toy_dims"]]),
        ("K", [(base_dim, k) for k in plan["toy_ks"]]),
    ):
        for dim, k in points:
            cells = []
            for name in PAIR:
                seconds, first = by_point[name, dim, k]["wall_s"], by_point[name, base_dim, base_k]["wall_s"]
                cells.append(f"{seconds:.3f} (×{seconds / first:.1f})")
            growth.append([f"{label} = {dim if label == 'D' else k}", *cells])
    tables.append(_table("How the toy measurement grows (wall s, × the first row)", ["", *PAIR], growth))
    return tables


def _vae_variance_table(results: dict) -> str:
    rows = [
        [
            r["estimator"],
            f"{r['resample_wall_s']:.3f}",
            f"{r['backward_wall_s']:.3f}",
            f"**{r['speedup_wall']:.2f}×**",
            f"{r['variance_resample']:.3g} / {r['variance_backward']:.3g}",
        ]
        for r in results["vae_variance"]
    ]
    first = results["vae_variance"][0]
    title = (
        f"VAE resample encoder-gradient variance, M = {first['draws']} draws ({first['arch']}, "
        f"K = {first['k']}), wall s"
    )
    header = [
        "estimator",
        "batched (library)",
        "M backward passes",
        "speed-up",
        "variance: batched / M passes",
    ]
    return _table(title, header, rows)


def _successor_table(results: dict) -> str:
    rows = [
        [
            r["latent"],
            r["arch"],
            str(r["k"]),
            r["estimator"],
            str(r["evals"]),
            f"{r['cpu_ms']:.2f} / {r['wall_ms']:.2f}",
            f"**{r['cpu_ratio_to_rloo']:.2f}** / {r['wall_ratio_to_rloo']:.2f}",
        ]
        for r in results["successor_step"]
    ]
    title = (
        f"The double control variate's successors: VAE training step, ms (median thread-CPU / wall over "
        f"{results['plan']['successor_steps']} interleaved steps, batch 100), and its ratio to rloo at "
        "equal K; bits D = 200, classes 20 × 10"
    )
    header = ["latents", "arch", "K", "estimator", "f evals", "step ms", "÷ rloo (cpu / wall)"]
    return _table(title, header, rows)


def _memory_table(results: dict) -> str:
    rows = []
    for r in results["memory"]:
        setting = ", ".join(f"{key} {r[key]}" for key in ("arch", "dim", "k", "draws", "method") if key in r)
        rows.append([r["task"], r["estimator"], setting, f"{r['peak_mib']:.0f}", f"{r['work_mib']:.1f}"])
    title = "Peak resident memory, MiB (a fresh process each; work = peak − resident after set-up)"
    return _table(title, ["work", "estimator", "setting", "peak", "work"], rows)


def _compile_table(results: dict) -> str:
    rows = [
        [
            r["variant"],
            f"{r['cpu_ms']:.2f} / {r['wall_ms']:.2f}",
            "–" if r["first_step_s"] is None else f"{r['first_step_s']:.1f}",
        ]
        for r in results["compile"]
    ]
    title = "torch.compile of encoder and decoder, nonlinear, K = 2"
    return _table(title, ["variant", "step ms (cpu / wall)", "first step (compiles), s"], rows)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few steps of each section (a smoke run)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON file to write")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: thread CPU time is all the work)"
    )
    parser.add_argument("--compile", action="store_true", help="also time torch.compile-d encoder/decoder")
    parser.add_argument(
        "--check",
        action="store_true",
        help=f"exit 1 when a cost bar is missed (paired sign test over the rounds, p < {CHECK_ALPHA})",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    plan = QUICK if args.quick else FULL
    started = datetime.datetime.now(datetime.timezone.utc)
    start, before = time.perf_counter(), load_average()

    step_rows, ratios = vae_steps(plan)
    results = {
        "schema_version": SCHEMA_VERSION,
        "command": [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])],
        "started": started.isoformat(timespec="seconds"),
        "quick": args.quick,
        "plan": asdict(plan),
        "machine": machine_info(),
        "torch_threads": torch.get_num_threads(),
        "vae_step": step_rows,
        "vae_step_ratio": ratios,
        "toy_variance": toy_variance(plan),
        "vae_variance": vae_variance(plan),
        "compile": compiled_steps(plan) if args.compile else None,
        "memory": memory(plan, args.threads),
        "successor_step": successor_steps(plan),
    }
    results["load_average"] = {"before": before, "after": load_average()}
    results["seconds"] = time.perf_counter() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(report(results))
    print(f"\nwritten: {args.out}")
    if args.check:
        missed = check_report(results)
        if missed:
            sys.exit(1)
    return results


def missed_bars(results: dict) -> list[dict]:
    """The step ratios whose bar a one-sided sign test says is missed: p below ``CHECK_ALPHA`` divided
    by the number of bars checked (Bonferroni), so that a passing run is not failed by chance."""
    ratios = results["vae_step_ratio"]
    return [r for r in ratios if r["check"]["p_value"] < CHECK_ALPHA / len(ratios)]


def check_report(results: dict) -> list[dict]:
    """Print each bar's test; return the missed ones."""
    missed = missed_bars(results)
    print(
        f"\nbars (rloo-dcv / rloo per step; sign test, p < {CHECK_ALPHA} / {len(results['vae_step_ratio'])}):"
    )
    for r in results["vae_step_ratio"]:
        check = r["check"]
        verdict = "MISSED" if r in missed else "ok"
        print(
            f"  {r['arch']:>9} K={r['k']:<2} median ratio {r['paired_cpu_ratio']['median']:.3f}, bar "
            f"{check['bar']:.3f}: {check['above']}/{check['rounds']} rounds above, "
            f"p = {check['p_value']:.2g}  {verdict}"
        )
    return missed


if __name__ == "__main__":
    main()
