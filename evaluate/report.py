"""The results of a suite as data (``results.json``) and as a table a person reads (``results.md``).

``results.json`` holds every number: per cell and optimizer the per-seed final losses, divergence
flags, means and t-intervals, steps to the target loss, the subsampled loss curves, the tuning grids
and scores; plus the resolved suite, the task, the checkpoint that was evaluated and the versions of
metaopt, jax and optax. ``results.md`` has one table per measure: rows are cells, columns optimizers,
the best mean in bold, diverged seeds marked.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import platform
from typing import Any, Optional

import numpy as np

from metaopt.evaluate import store

__all__ = [
    "to_jsonable", "versions", "optimizer_names", "build_results", "describe_cells", "markdown",
    "write_results",
]

_AXIS_LABEL = {"width": "width", "depth": "depth", "horizon": "steps", "task": "family"}


def to_jsonable(obj: Any) -> Any:
    """Plain JSON values: tuples to lists, NumPy scalars to Python, NaN and infinities to ``None``."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable({f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)})
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)


def versions() -> dict:
    """Versions of the software that produced the results."""
    import jax
    import optax

    import metaopt

    out = {"metaopt": getattr(metaopt, "__version__", None), "jax": jax.__version__,
           "optax": optax.__version__, "numpy": np.__version__, "python": platform.python_version()}
    try:
        import jaxlib

        out["jaxlib"] = jaxlib.__version__
    except ImportError:
        pass
    out["backend"] = jax.default_backend()
    return out


def optimizer_names(cells: list[dict]) -> list[str]:
    """Optimizer columns in a stable order: learned first, then baselines as they appear."""
    names: list[str] = []
    for cell in cells:
        for name in cell.get("optimizers", {}):
            if name not in names:
                names.append(name)
    if "learned" in names:
        names.remove("learned")
        names.insert(0, "learned")
    return names


def build_results(*, header: dict, cells: list[dict], warnings_list: list[str]) -> dict:
    """The full results mapping (what ``results.json`` holds and ``evaluate_suite`` returns)."""
    runs = sum(c.get("tuning_budget", {}).get("runs", 0) for c in cells)
    steps = sum(c.get("tuning_budget", {}).get("steps", 0) for c in cells)
    results = {
        **header,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "optimizers": optimizer_names(cells),
        "tuning_budget": {"runs": runs, "steps": steps},
        "cells": cells,
        "warnings": list(warnings_list),
    }
    return to_jsonable(results)


def _fmt(x: Optional[float]) -> str:
    if x is None:
        return "-"
    if x == 0 or 1e-3 <= abs(x) < 1e4:
        return f"{x:.4g}"
    return f"{x:.3e}"


def _loss_cell(summary: dict, bold: bool) -> str:
    n_div, n_total = summary["n_diverged"], len(summary["per_seed"])
    if summary["mean"] is None:
        return f"diverged ({n_div}/{n_total})" if n_div else "-"
    text = _fmt(summary["mean"])
    if summary["ci_high"] is not None:
        text += f" ± {summary['ci_high'] - summary['mean']:.2g}"
    if bold:
        text = f"**{text}**"
    if n_div:
        text += f" ({n_div}/{n_total} diverged)"
    return text


def _x_text(cell: dict) -> str:
    x = cell.get("x")
    if x is None:
        return str(cell.get("family", ""))
    return f"{x:g}"


def _loss_table(cells: list[dict], names: list[str], key: str, axis: str) -> list[str]:
    # The horizon axis is the number of steps: one column says both.
    axis_cols = [] if axis == "horizon" else [_AXIS_LABEL.get(axis, axis)]
    header = ["cell", *axis_cols, "steps", *names]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for cell in cells:
        if cell.get("status") != "done":
            continue
        opts = cell["optimizers"]
        means = {n: opts[n][key]["mean"] for n in names if n in opts and opts[n][key]["mean"] is not None}
        best = min(means, key=means.get) if means else None
        row = [cell["name"], *([_x_text(cell)] if axis_cols else []), str(cell["num_steps"])]
        for n in names:
            row.append(_loss_cell(opts[n][key], n == best) if n in opts else "-")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _steps_table(cells: list[dict], names: list[str]) -> list[str]:
    lines = ["| cell | target loss (from) | " + " | ".join(names) + " |",
             "|" + " --- |" * (2 + len(names))]
    for cell in cells:
        if cell.get("status") != "done":
            continue
        opts = cell["optimizers"]
        target = cell.get("target")
        target_text = "-" if target is None else f"{_fmt(target['loss'])} ({target['optimizer']})"
        full = {n: opts[n]["steps_to_target"]["mean"] for n in names if n in opts
                and opts[n]["steps_to_target"]["mean"] is not None
                and opts[n]["steps_to_target"]["reached"] == opts[n]["steps_to_target"]["n"]}
        best = min(full, key=full.get) if full else None
        row = [cell["name"], target_text]
        for n in names:
            if n not in opts:
                row.append("-")
                continue
            s = opts[n]["steps_to_target"]
            if s["reached"] == 0:
                text = "never"
            else:
                text = f"{s['mean']:.0f}"
                if opts[n].get("speedup") is not None:
                    text += f" ({opts[n]['speedup']:.2g}x)"
                if n == best:
                    text = f"**{text}**"
                if s["reached"] < s["n"]:
                    text += f" ({s['reached']}/{s['n']} reached)"
            row.append(text)
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _lr_table(cells: list[dict], names: list[str]) -> list[str]:
    baselines = [n for n in names if n != "learned"]
    if not baselines:
        return []
    lines = ["| cell | " + " | ".join(baselines) + " |", "|" + " --- |" * (1 + len(baselines))]
    for cell in cells:
        if cell.get("status") != "done":
            continue
        row = [cell["name"]]
        for n in baselines:
            rec = cell["optimizers"].get(n)
            if rec is None:
                row.append("-")
                continue
            text = f"{rec['learning_rate']:.3g}"
            tune = rec.get("tuning") or {}
            if tune.get("fixed"):
                text += " (fixed)"
            elif tune.get("transferred_from"):
                text += f" (from {tune['transferred_from']})"
            elif tune.get("at_edge"):
                text += f" (at {tune['at_edge']} edge)"
            row.append(text)
        lines.append("| " + " | ".join(row) + " |")
    return lines


# Fields of a suite that decide which cells run; the suite's free-text description is about the
# values it was written with, so it is shown only while these are unchanged.
_AXIS_FIELDS = ("axis", "values", "horizon_factor")


def _factor(value: Any) -> str:
    return f"{value:g}x" if isinstance(value, (int, float)) else str(value)


def describe_cells(results: dict) -> str:
    """One sentence saying what varied across the cells that were evaluated, from the cells themselves."""
    suite_cfg = results["suite_config"]
    axis = suite_cfg["axis"]
    cells = results["cells"]
    base = results["base_num_steps"]
    if axis == "task":
        parts = [f"{c['name']} ({c.get('family')}, {c.get('num_steps')} steps)" for c in cells]
        return (f"Cells: {len(cells)} tasks: {', '.join(parts)}; each run {suite_cfg['horizon_factor']:g}x "
                f"the meta-training horizon of {base} steps.")
    factors = ", ".join(_factor(c.get("value")) for c in cells)
    xs = ", ".join("-" if c.get("x") is None else f"{c['x']:g}" for c in cells)
    if axis == "horizon":
        return (f"Cells: horizons {factors} the meta-training horizon of {base} steps "
                f"({xs} steps).")
    steps = sorted({c.get("num_steps") for c in cells})
    unit = "width" if axis == "width" else "depth"
    return (f"Cells: {unit} {factors} that of the meta-training task ({unit}s {xs}); each run "
            f"{suite_cfg['horizon_factor']:g}x the meta-training horizon of {base} steps "
            f"({', '.join(str(n) for n in steps)} steps).")


def _shipped_description(suite_cfg: dict) -> Optional[str]:
    """The suite's description when it still describes what ran: a shipped suite whose axis, values
    and horizon factor were not overridden. ``None`` otherwise."""
    from metaopt.evaluate import suites

    description = (suite_cfg.get("description") or "").strip()
    if not description or suite_cfg.get("suite") not in suites.list_suites():
        return None
    try:
        shipped = suites.load_suite(suite_cfg["suite"])
    except ValueError:
        return None
    if any(to_jsonable(shipped.get(k)) != to_jsonable(suite_cfg.get(k)) for k in _AXIS_FIELDS):
        return None
    return description


def markdown(results: dict) -> str:
    """``results.md``: the tables of a suite's results."""
    cells = results["cells"]
    names = results["optimizers"]
    axis = results["suite_config"]["axis"]
    suite_cfg = results["suite_config"]
    lopt = results.get("learned_optimizer") or {}
    task = results.get("task") or {}
    conf = int(round(100 * suite_cfg["confidence"]))
    lines = [f"# Evaluation: {results['suite']}", ""]
    description = _shipped_description(suite_cfg)
    if description:
        lines += [description, ""]
    lines += [describe_cells(results), ""]
    lines += [
        f"- checkpoint: `{results['checkpoint']}` ({lopt.get('kind', '?')}, outer step "
        f"{results.get('outer_step', '?')})",
        f"- meta-training task: {task.get('family')} {task.get('config', {})}",
        f"- meta-training horizon: {results['base_num_steps']} steps",
        f"- seeds per cell: {suite_cfg['seeds']}; baselines tuned on seed {suite_cfg['tuning']['seed']} "
        f"({suite_cfg['tuning']['mode']}, by {suite_cfg['tuning']['select_by']} loss, "
        f"{suite_cfg['tuning']['schedule']} schedule with warm-up); tuning budget "
        f"{results['tuning_budget']['runs']} runs, {results['tuning_budget']['steps']} steps",
        f"- values are means ± half-width of the {conf}% t-interval over non-diverged seeds; "
        "best mean in bold; a seed diverged when its loss is NaN or ends more than "
        f"{suite_cfg['divergence_tolerance']:.0%} above its initial loss",
        "",
        "## Final training loss", "",
        *_loss_table(cells, names, "final_train_loss", axis), "",
        "## Final held-out loss", "",
        *_loss_table(cells, names, "final_eval_loss", axis), "",
    ]
    if any(name != "learned" for name in names):
        lines += ["## Steps to the best baseline's final training loss", "",
                  "Mean step at which the smoothed training loss first reaches the target; in brackets the "
                  "speed-up over the best baseline.", "",
                  *_steps_table(cells, names), ""]
    lr_lines = _lr_table(cells, names)
    if lr_lines:
        lines += ["## Baseline learning rates", "", *lr_lines, ""]
    skipped = [c for c in cells if c.get("status") != "done"]
    if skipped:
        lines += ["## Skipped cells", ""]
        lines += [f"- {c['name']}: {c.get('skip_reason')}" for c in skipped]
        lines.append("")
    if results.get("warnings"):
        lines += ["## Warnings", ""] + [f"- {w}" for w in results["warnings"]] + [""]
    return "\n".join(lines)


def write_results(out: str, results: dict) -> dict:
    """Writes ``results.json`` and ``results.md`` into ``out``; returns their paths."""
    json_path = os.path.join(out, "results.json")
    md_path = os.path.join(out, "results.md")
    store.atomic_write_json(json_path, results)
    store.atomic_write_text(md_path, markdown(results))
    return {"json": json_path, "md": md_path}
