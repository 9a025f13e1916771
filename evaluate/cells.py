"""One cell of a suite: every optimizer on one task at one horizon, with its statistics.

The learned optimizer runs once per reported seed. Each baseline is first tuned on the tuning seed
(or takes a fixed or transferred learning rate), then runs on the reported seeds. Every optimizer
runs through one compiled program per cell shape (``runner.CellRunner``): its tuning grid, grid
extensions and reported seeds are all calls of that program. The cell's target loss is the best
baseline's mean final training loss; every optimizer's steps to reach it give the speed-up.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

import jax.numpy as jnp
import numpy as np

from metaopt.evaluate import runner, stats, suites, tuning

__all__ = [
    "optimizer_record", "FLOATS_PER_PARAM", "estimated_bytes", "build_task", "skipped_record",
    "cell_header", "evaluate_cell",
]

PyTree = Any


def optimizer_record(losses: np.ndarray, evals: np.ndarray, window: int, curve_points: int,
                     confidence: float, tolerance: float = 0.0) -> dict:
    """Statistics of one optimizer's reported seeds (steps to target are added later)."""
    final_train = stats.final_losses(losses, window)
    bad = stats.diverged(losses, final_train, evals, tolerance)
    steps, curves = stats.subsample_curve(losses, curve_points)
    return {
        "initial_loss": [stats.to_float(x) for x in losses[:, 0]],
        "final_train_loss": stats.summarize(final_train, bad, confidence),
        "final_eval_loss": stats.summarize(evals, bad, confidence),
        "diverged": [bool(b) for b in bad],
        "n_diverged": int(bad.sum()),
        "curve": {"steps": steps, "per_seed": curves},
    }


# Floats held per parameter per vmapped run at the peak of a learned-optimizer step: parameters,
# gradients, accumulators and the per-parameter network's features and hidden activations.
FLOATS_PER_PARAM = 128


def estimated_bytes(num_params: int, suite: dict) -> int:
    """A generous estimate of the memory the largest batch of runs of a cell needs."""
    return int(num_params) * 4 * FLOATS_PER_PARAM * suite["seeds"]


def build_task(cell: suites.Cell, get_family: Callable):
    """The Task of a cell."""
    family = get_family(cell.family, **dict(cell.family_kwargs))
    return family.task(cell.config)


def skipped_record(cell: suites.Cell, reason: str, **extra) -> dict:
    """The record of a cell that is not run."""
    return {**cell_header(cell), "status": "skipped", "skip_reason": reason, **extra}


def cell_header(cell: suites.Cell) -> dict:
    """The fields that say what a cell is."""
    return {
        "name": cell.name,
        "value": cell.value,
        "x": cell.x,
        "family": cell.family,
        "family_kwargs": dict(cell.family_kwargs),
        "config": suites.config_fields(cell.config),
        "num_steps": cell.num_steps,
    }


def evaluate_cell(cell: suites.Cell, suite: dict, lopt, theta: PyTree, *, get_family: Callable,
                  transferred: Optional[dict] = None, transferred_from: Optional[str] = None,
                  progress: Optional[Any] = None) -> dict:
    """Runs every optimizer of the suite on ``cell``.

    Args:
      cell: the cell.
      suite: the resolved suite.
      lopt, theta: the learned optimizer and its meta-parameters.
      get_family: ``metaopt.tasks.get_family``.
      transferred: baseline name -> learning rate tuned on the reference cell (tuning mode transfer);
        ``None`` tunes here.
      transferred_from: the reference cell's name (recorded).
      progress: an object with ``compiling(cell_name, optimizer)`` (a program is being compiled),
        ``running(description)`` (runs were dispatched) and ``advance(work, description)`` (runs
        finished; work = runs x ``run_work(...)``), or ``None``.

    Returns:
      The cell's JSON-ready record.
    """
    progress = progress or _NoProgress()
    start = time.time()
    task = build_task(cell, get_family)
    num_params = int(task.num_params)
    if suite["max_params"] is not None and num_params > suite["max_params"]:
        return skipped_record(cell, f"{num_params} parameters > max_params {suite['max_params']:g}",
                              num_params=num_params)
    need = estimated_bytes(num_params, suite)
    free = runner.available_bytes()
    if free is not None and need > suite["memory_fraction"] * free:
        return skipped_record(cell, f"needs about {need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free",
                              num_params=num_params)
    try:
        record = _run_cell(cell, suite, task, lopt, theta, transferred, transferred_from, progress)
    except Exception as error:  # noqa: BLE001 (only out-of-memory is turned into a skipped cell)
        if runner.is_out_of_memory(error):
            return skipped_record(cell, "out of memory", num_params=num_params)
        raise
    record["num_params"] = num_params
    record["flops_per_step"] = float(task.flops_per_step)
    record["wall_time_s"] = time.time() - start
    return record


class _NoProgress:
    def compiling(self, cell_name: str, optimizer: str) -> None:
        pass

    def advance(self, work: float, description: str) -> None:
        pass

    def running(self, description: str) -> None:
        pass


# The learned optimizer's update costs about this many FLOPs per parameter (small_fc_lopt-sized
# per-parameter MLP and its features, by XLA's count), used only to weigh its runs in the ETA when
# the optimizer does not say (``flops_per_param``).
DEFAULT_LOPT_FLOPS_PER_PARAM = 4200.0


def run_work(task, num_steps: int, learned: bool, lopt=None) -> float:
    """The cost of one run, in FLOPs: the model's forward and backward passes, plus the learned
    optimizer's update for a learned run; what the progress bar's ETA is measured in."""
    flops = float(getattr(task, "flops_per_step", 0.0) or 0.0)
    if learned:
        per_param = getattr(lopt, "flops_per_param", None)
        per_param = DEFAULT_LOPT_FLOPS_PER_PARAM if per_param is None else float(per_param)
        flops += per_param * float(task.num_params)
    return max(flops, 1.0) * int(num_steps)


def _run_cell(cell, suite, task, lopt, theta, transferred, transferred_from, progress) -> dict:
    num_steps = cell.num_steps
    window = stats.window_size(num_steps, suite["final_window"])
    seeds = list(range(suite["seeds"]))
    keys = runner.seed_keys(seeds)
    tuning_cfg = suite["tuning"]
    tuning_key = runner.seed_keys([tuning_cfg["seed"]])
    optimizers: dict[str, dict] = {}
    curve_points, confidence = suite["curve_points"], suite["confidence"]
    tolerance = suite["divergence_tolerance"]
    raw_losses: dict[str, np.ndarray] = {}
    cell_runner = runner.CellRunner(task, num_steps, lanes=len(seeds),
                                    before_compile=lambda name: progress.compiling(cell.name, name),
                                    before_run=lambda label: progress.running(f"{cell.name}: {label}"))
    baseline_work = run_work(task, num_steps, learned=False)

    if suite["learned"]:
        learned_work = run_work(task, num_steps, learned=True, lopt=lopt)
        losses, evals = cell_runner.run(
            "learned", runner.LearnedSpec(lopt), theta, np.zeros(len(seeds)), keys,
            on_batch=lambda n: progress.advance(n * learned_work, f"{cell.name}: learned"))
        raw_losses["learned"] = losses
        optimizers["learned"] = {"kind": lopt.kind, "learning_rate": None, "tuning": None,
                                 **optimizer_record(losses, evals, window, curve_points, confidence,
                                                    tolerance)}

    warmup_steps = int(round(tuning_cfg["warmup_fraction"] * num_steps))
    for name, spec in suite["baselines"].items():
        bspec = runner.BaselineSpec(name, tuning_cfg["schedule"], warmup_steps,
                                    runner.hashable_hyper(spec["hyper"]))
        if spec["learning_rate"] is not None:
            learning_rate = spec["learning_rate"]
            tune_record = {"fixed": True, "runs": 0, "steps": 0}
        elif transferred is not None and name in transferred:
            learning_rate = transferred[name]
            tune_record = {"transferred_from": transferred_from, "runs": 0, "steps": 0}
        else:
            num_points = tuning_cfg["num_points"]

            def evaluate(lrs, bspec=bspec, name=name):
                return cell_runner.run(
                    name, bspec, None, lrs, jnp.repeat(tuning_key, len(lrs), axis=0),
                    on_batch=lambda n: progress.advance(n * baseline_work, f"{cell.name}: tuning {name}"),
                    label=f"tuning {name}")

            lo, hi = spec["grid"]
            tune_record = tuning.tune_learning_rate(
                evaluate, lo, hi, num_points, window=window, select_by=tuning_cfg["select_by"],
                tolerance=tolerance,
                extend=tuning_cfg["extend"], max_extensions=tuning_cfg["max_extensions"],
                num_steps=num_steps, name=name)
            tune_record.update(seed=tuning_cfg["seed"], schedule=tuning_cfg["schedule"],
                               warmup_steps=warmup_steps)
            learning_rate = tune_record["best"]
        losses, evals = cell_runner.run(
            name, bspec, None, np.full(len(seeds), learning_rate), keys,
            on_batch=lambda n, name=name: progress.advance(n * baseline_work, f"{cell.name}: {name}"))
        raw_losses[name] = losses
        optimizers[name] = {"kind": name, "learning_rate": float(learning_rate), "tuning": tune_record,
                            "schedule": tuning_cfg["schedule"], "warmup_steps": warmup_steps,
                            "hyper": dict(spec["hyper"]),
                            **optimizer_record(losses, evals, window, curve_points, confidence,
                                               tolerance)}

    target = _target(optimizers, suite["baselines"])
    for name, rec in optimizers.items():
        steps = stats.steps_to_target(raw_losses[name], None if target is None else target["loss"], window)
        rec["steps_to_target"] = stats.summarize_steps(steps, rec["diverged"])
    if target is not None:
        best_steps = optimizers[target["optimizer"]]["steps_to_target"]["mean"]
        target["steps"] = best_steps
        for rec in optimizers.values():
            mean = rec["steps_to_target"]["mean"]
            rec["speedup"] = (None if best_steps is None or mean is None or
                              rec["steps_to_target"]["reached"] == 0 else float(best_steps) / max(mean, 1.0))

    tuning_runs = sum((rec.get("tuning") or {}).get("runs", 0) for rec in optimizers.values())
    return {
        **cell_header(cell),
        "status": "done",
        "seeds": seeds,
        "final_window": window,
        "target": target,
        "optimizers": optimizers,
        "tuning_budget": {"runs": tuning_runs, "steps": tuning_runs * num_steps},
        "timing": {"compile_s": float(sum(cell_runner.compile_seconds.values())),
                   "compile_s_by_optimizer": dict(cell_runner.compile_seconds),
                   "run_s": float(cell_runner.run_seconds),
                   "run_s_by_optimizer": dict(cell_runner.run_seconds_by_optimizer),
                   "inner_steps": int(cell_runner.inner_steps),
                   "lanes": cell_runner.lanes},
    }


def _target(optimizers: dict, baselines: dict) -> Optional[dict]:
    """The best baseline's mean final training loss (over its non-diverged seeds)."""
    best = None
    for name in baselines:
        rec = optimizers.get(name)
        mean = None if rec is None else rec["final_train_loss"]["mean"]
        if mean is not None and (best is None or mean < best["loss"]):
            best = {"loss": mean, "optimizer": name}
    return best
