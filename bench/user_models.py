"""Shipped learned optimizers on user-style flax models, against Adam tuned over 7 learning rates.

Six models written the way a researcher writes them in flax ``nnx`` (default init, standard
parametrization; ``metaopt.tasks.flax_models``): MLPs of width 128 and 512 and CNNs of 16 and 64
channels on digits, byte-level transformers of width 64 and 128 on the Python standard library.
Every learned optimizer runs untuned (roles inferred from the parameter paths and shapes); Adam's
constant learning rate is tuned per model over 7 log-spaced values from 1e-4 to 1e-1. The figure is
the final training loss (mean over the last 10% of steps and over seeds) and its ratio to tuned
Adam's; below 1 the learned optimizer wins. The geometric mean of the ratios summarises each
optimizer. Where losses near zero differ by decades between seeds, one seed sets the mean over
seeds, so the report also gives the geometric mean of the ratios of seed medians, and
``results.json`` keeps every seed's final loss; ``ratios.png`` draws the ratios.

    python bench/user_models.py                       # every shipped learned optimizer, 400 steps
    python bench/user_models.py --optimizers mulo-v2 --steps 400 --seeds 2 --out docs/results/user_models

With ``--out``, a folder holding an earlier run of the same steps and seeds is extended: its tuned
Adam and learned optimizers are reused and only the optimizers it lacks are run.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import metaopt
from metaopt import unroll
from metaopt.tasks.flax_models import user_tasks

ADAM_LEARNING_RATES = tuple(float(x) for x in np.logspace(-4, -1, 7))


def final_loss(losses: jax.Array) -> jax.Array:
    """Mean training loss over the last 10% of steps (the last axis)."""
    window = max(1, losses.shape[-1] // 10)
    return jnp.mean(losses[..., -window:], axis=-1)


def run_adam(task, num_steps: int, keys: jax.Array) -> np.ndarray:
    """Final losses of Adam at every learning rate of the grid: shape (num_lrs, num_seeds)."""
    def one(lr, key):
        return final_loss(unroll.train(task, optax.adam(lr), key, num_steps)[1])

    grid = jnp.asarray(ADAM_LEARNING_RATES, jnp.float32)
    fn = jax.jit(jax.vmap(lambda lr: jax.vmap(lambda k: one(lr, k))(keys)))
    return np.asarray(fn(grid))


def run_learned(task, name: str, num_steps: int, keys: jax.Array) -> np.ndarray:
    """Final losses of the learned optimizer ``name`` (a shipped name or a checkpoint or run
    folder), untuned: shape (num_seeds,)."""
    lopt, theta = metaopt.load(name)
    tx = lopt.transform(theta, num_steps)
    fn = jax.jit(jax.vmap(lambda k: final_loss(unroll.train(task, tx, k, num_steps)[1])))
    return np.asarray(fn(keys))


def _nan_to_inf(x: float) -> float:
    return float(x) if math.isfinite(float(x)) else math.inf


def _geometric_mean(ratios: list[float]) -> float:
    """exp(mean(log ratios)); inf if any ratio is not a positive finite number."""
    if not all(math.isfinite(x) and x > 0 for x in ratios):
        return math.inf
    return math.exp(float(np.mean(np.log(ratios))))


def plot_ratios(rows: list[dict], names: list[str], path: Path) -> None:
    """Bars: each optimizer's ratio to tuned Adam per model (log scale; below the line at 1 the
    learned optimizer wins). Dots: each seed's final loss over tuned Adam's mean, where kept."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1.6 + 1.3 * len(rows), 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        xs = np.arange(len(rows)) + (i - (len(names) - 1) / 2) * width
        ratios = [r["learned"][name] / r["adam"] for r in rows]
        ax.bar(xs, ratios, width, label=name, color=f"C{i}")
        for x, r in zip(xs, rows):
            seeds = r.get("learned_seeds", {}).get(name)
            if seeds:
                ax.plot([x] * len(seeds), np.asarray(seeds) / r["adam"], ".", color="k", markersize=3)
    ax.axhline(1.0, color="k", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(rows)), [r["model"] for r in rows], rotation=20)
    ax.set_ylabel("final training loss / tuned Adam's")
    ax.set_title("bars: mean over seeds; dots: single seeds", fontsize=9)
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def _earlier_rows(out, steps: int, seeds: int) -> dict:
    """Rows of an earlier run into ``out`` with the same steps and seeds, by model: its tuned Adam
    and the learned optimizers it ran are reused, so adding an optimizer costs only its own runs."""
    path = Path(out) / "results.json" if out else None
    if path is None or not path.is_file():
        return {}
    earlier = json.loads(path.read_text())
    if earlier.get("steps") != steps or earlier.get("seeds") != seeds:
        return {}
    rows = {r["model"]: r for r in earlier["rows"]}
    for r in rows.values():
        r["learned"] = {k: (math.inf if v is None else v) for k, v in r["learned"].items()}
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--optimizers", default=None,
                        help="comma-separated shipped names or checkpoint folders "
                             "(default: every shipped mlp_lopt)")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--models", default=None, help="comma-separated model names (default: all six)")
    parser.add_argument("--out", default=None, help="folder for results.json and results.md")
    args = parser.parse_args(argv)
    if args.optimizers:
        names = [n for n in args.optimizers.split(",") if n]
    else:
        names = [i.name for i in metaopt.pretrained.list() if i.kind == "mlp_lopt"]
    tasks = user_tasks()
    if args.models:
        wanted = set(args.models.split(","))
        tasks = [t for t in tasks if t.name in wanted]
    keys = jax.random.split(jax.random.key(0), args.seeds)
    done = {} if args.models else _earlier_rows(args.out, args.steps, args.seeds)
    earlier_names = [n for r in done.values() for n in r["learned"]]
    names = list(dict.fromkeys([*earlier_names, *names]))  # the table shows every optimizer run so far
    rows = []
    for task in tasks:
        tic = time.perf_counter()
        row = done.get(task.name)
        if row is None:
            adam = run_adam(task, args.steps, keys)
            adam_mean = [_nan_to_inf(np.mean(a)) for a in adam]
            best = int(np.argmin(adam_mean))
            row = {"model": task.name, "adam_lr": ADAM_LEARNING_RATES[best], "adam": adam_mean[best],
                   "adam_grid": adam_mean, "adam_seeds": adam[best].tolist(), "learned": {},
                   "learned_seeds": {}}
            if best in (0, len(ADAM_LEARNING_RATES) - 1):
                print(f"  warning: {task.name}: Adam's best learning rate is at the grid's edge")
        for name in names:
            if name not in row["learned"]:
                per_seed = run_learned(task, name, args.steps, keys)
                row["learned"][name] = _nan_to_inf(np.mean(per_seed))
                row.setdefault("learned_seeds", {})[name] = [_nan_to_inf(x) for x in per_seed]
        rows.append(row)
        ratios = "  ".join(f"{n} {row['learned'][n]:.4g} ({row['learned'][n] / row['adam']:.2f}x)" for n in names)
        print(f"{task.name}: Adam {row['adam']:.4g} at lr {row['adam_lr']:.2g}  {ratios}  "
              f"[{time.perf_counter() - tic:.0f}s]", flush=True)
    geo = {name: _geometric_mean([r["learned"][name] / r["adam"] for r in rows]) for name in names}
    geo_median = {name: _geometric_mean([np.median(r["learned_seeds"][name]) / np.median(r["adam_seeds"])
                                         for r in rows])
                  for name in names
                  if all(name in r.get("learned_seeds", {}) and "adam_seeds" in r for r in rows)}
    lines = [f"Final training loss after {args.steps} steps (mean of the last 10% of steps, {args.seeds} seeds); "
             "ratio to Adam tuned over 7 learning rates in brackets.", "",
             "| model | tuned Adam (lr) | " + " | ".join(names) + " |",
             "| --- | --- | " + " | ".join("---" for _ in names) + " |"]
    for r in rows:
        cells = [f"{r['learned'][n]:.4g} ({r['learned'][n] / r['adam']:.2f}x)" for n in names]
        lines.append(f"| {r['model']} | {r['adam']:.4g} ({r['adam_lr']:.2g}) | " + " | ".join(cells) + " |")
    lines.append("| geometric mean of ratios | 1 | " + " | ".join(f"{geo[n]:.2f}" for n in names) + " |")
    if geo_median:
        lines.append("| geometric mean of ratios of seed medians | 1 | "
                     + " | ".join(f"{geo_median[n]:.2f}" if n in geo_median else "-" for n in names) + " |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps({"steps": args.steps, "seeds": args.seeds, "rows": rows,
                                                       "geometric_mean": geo,
                                                       "geometric_mean_of_seed_medians": geo_median},
                                                      indent=1))
        (out / "results.md").write_text(table + "\n")
        plot_ratios(rows, names, out / "ratios.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
