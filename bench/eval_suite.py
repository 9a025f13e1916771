"""Benchmark 4: a whole evaluation suite, and cold versus warm start of both programs.

Part ``suite``: ``python -m evaluate`` on a checkpoint and suite, in fresh processes: first with an
empty persistent compilation cache (cold), then again with the cache it filled (warm). For each:
wall time of the process, the suite's own wall time, the time spent compiling (tracing, lowering and
XLA compilation or cache loads, from jax's monitoring events) and its share, and inner steps per
second over the whole suite (every run of every optimizer, tuning grids included).

Then the reference: a plain vmapped ``optax.adam`` population doing the same number of runs of the
same number of steps on each cell's task (one jitted ``vmap`` of ``lax.scan`` runs per cell, batches
drawn in the scan, compiled before timing). ``suite/adam`` is the suite's run time over the
population's; the learned optimizer's own runs are costlier than Adam's by its per-parameter network,
so the ratio is also given for the baselines' runs alone (``baselines/adam``, the evaluation
machinery's overhead on the same work).

Part ``train``: ``python -m meta_train --config configs/quickstart.yaml`` twice into a fresh run
folder, cold then warm cache: wall time, the outer step's compile time (``compile_s`` of
``metrics.jsonl``) and the process's whole time spent compiling (its last line).

Usage:
  python bench/eval_suite.py --checkpoint runs/quickstart --suite width_quick
  python bench/eval_suite.py --part train
  python bench/eval_suite.py --quick       # a tiny suite and 20 outer steps, to check the script runs
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)
sys.path[:0] = [_HERE, _ROOT]  # the helpers, and the source checkout

import _common  # noqa: E402


def _run(cmd: list[str], env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=_ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return wall, proc.stderr


def _env(cache: str) -> dict:
    env = dict(os.environ)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    env["METAOPT_COMPILATION_CACHE"] = cache
    return env


def adam_population_seconds(results: dict) -> tuple[float, float]:
    """Seconds a plain vmapped Adam population takes for the suite's runs on each cell's task:
    (all runs, the baselines' runs only)."""
    import jax
    import optax

    from metaopt import unroll
    from metaopt.tasks import get_family

    total = baselines_only = 0.0
    for cell in results["cells"]:
        if cell.get("status") != "done":
            continue
        family = get_family(cell["family"], **cell["family_kwargs"])
        task = family.task(family.make_config(**cell["config"]))
        num_steps = cell["num_steps"]
        runs = cell["timing"]["inner_steps"] // num_steps
        learned_runs = len(cell["seeds"]) if "learned" in cell["optimizers"] else 0
        tx = optax.adam(1e-3)

        @jax.jit
        def population(keys):
            return jax.vmap(lambda k: unroll.train(task, tx, k, num_steps)[1])(keys)

        keys = jax.random.split(jax.random.key(0), runs)
        population.lower(keys).compile()
        _common.block(population(keys))  # warm-up
        seconds = _common.time_call(lambda: population(keys))
        total += seconds
        baselines_only += seconds * (runs - learned_runs) / runs
        print(f"#  adam population on {cell['name']}: {runs} runs x {num_steps} steps in {seconds:.2f}s "
              f"(load {_common.load_average()})", flush=True)
    return total, baselines_only


def part_suite(args) -> None:
    _common.header(f"evaluation suite {args.suite} on {args.checkpoint}: cold vs warm compilation cache")
    work = tempfile.mkdtemp(prefix="metaopt-bench-eval-")
    cache = os.path.join(work, "jax-cache")
    rows, warm_results = [], None
    try:
        for label in ("cold", "warm"):
            out = os.path.join(work, label)
            cmd = [sys.executable, "-m", "evaluate", "--checkpoint", args.checkpoint, "--suite", args.suite,
                   "--out", out, "--no-progress", "--no-plots", *args.overrides]
            wall, _ = _run(cmd, _env(cache))
            with open(os.path.join(out, "results.json")) as f:
                results = json.load(f)
            timing = results["timing"]
            run_s = sum(c["timing"]["run_s"] for c in results["cells"] if c.get("status") == "done")
            rows.append([label, wall, timing["wall_s"], timing["compile_s"], timing["compile_share"],
                         timing["inner_steps"], timing["inner_steps_per_s"], run_s])
            print(f"#  {label} done (load {_common.load_average()})", flush=True)
            warm_results = results
        adam_s, adam_baselines_s = adam_population_seconds(warm_results)
        runs_s = {}
        for cell in warm_results["cells"]:
            if cell.get("status") == "done":
                for name, seconds in cell["timing"].get("run_s_by_optimizer", {}).items():
                    runs_s[name] = runs_s.get(name, 0.0) + seconds
        baselines_s = sum(s for name, s in runs_s.items() if name != "learned")
        columns = ["start", "process s", "suite wall s", "compile s", "compile share", "inner steps",
                   "inner steps/s", "run s", "suite/adam", "baselines/adam"]
        for row in rows:
            row += [row[2] / adam_s, baselines_s / adam_baselines_s if adam_baselines_s else float("nan")]
        _common.print_table(columns, rows)
        print(f"# plain vmapped Adam population, same runs and steps on the same tasks: {adam_s:.1f}s "
              f"({warm_results['timing']['inner_steps'] / adam_s:.0f} inner steps/s); its baseline share "
              f"{adam_baselines_s:.1f}s. Run time by optimizer (warm): "
              + ", ".join(f"{k} {v:.1f}s" for k, v in runs_s.items()))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _common.footer()


def part_train(args) -> None:
    _common.header(f"meta_train {args.config}: cold vs warm compilation cache")
    work = tempfile.mkdtemp(prefix="metaopt-bench-train-")
    cache = os.path.join(work, "jax-cache")
    rows = []
    try:
        for label in ("cold", "warm"):
            run_dir = os.path.join(work, "run")
            cmd = [sys.executable, "-m", "meta_train", "--config", args.config, f"run_dir={run_dir}",
                   *args.train_overrides, "--fresh", "--no-progress"]
            wall, stderr = _run(cmd, _env(cache))
            with open(os.path.join(run_dir, "metrics.jsonl")) as f:
                records = [json.loads(line) for line in f if line.strip()]
            step_compile = sum(r["compile_s"] for r in records if "compile_s" in r)
            first = next((r for r in records if "wall_s" in r), {})
            match = re.search(r"([0-9.]+)s compiling", stderr)
            rows.append([label, wall, step_compile, float(match.group(1)) if match else float("nan"),
                         first.get("wall_s", float("nan"))])
            print(f"#  {label} done (load {_common.load_average()})", flush=True)
        _common.print_table(["start", "process s", "outer step compile s", "all compiling s",
                             "wall at first log s"], rows)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _common.footer()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("suite", "train", "both"), default="both")
    parser.add_argument("--checkpoint", default="runs/quickstart")
    parser.add_argument("--suite", default="width_quick")
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--quick", action="store_true", help="a tiny suite and 20 outer steps")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="suite overrides")
    args = parser.parse_args(argv)
    args.train_overrides = []
    if args.quick:
        args.overrides = ["values=[1]", "seeds=2", "tuning.num_points=4", "tuning.extend=false",
                          "baselines=[adamw]", "base_num_steps=50", *args.overrides]
        args.train_overrides = ["outer_steps=20"]
    if args.part in ("suite", "both"):
        part_suite(args)
    if args.part in ("train", "both"):
        part_train(args)


if __name__ == "__main__":
    main()
