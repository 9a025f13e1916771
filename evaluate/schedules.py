"""Plots and tabulates learned learning-rate schedules: the multiplier each applies over a run.

Shows what a ``LearnedSchedule`` learned (warm-up, decay, or a flat, myopic shape) at several run
lengths, for one or more checkpoints side by side, e.g. the schedule found by evolution strategies
over whole runs against the one found by truncated backprop.

    python -m evaluate.schedules runs/schedule_es runs/schedule_tbptt --num-steps 100 1000 5000 \
        --out docs/figures/learned_schedules.png

References:
  Jackson et al., "Discovering Temporally-Aware Reinforcement Learning Algorithms", ICLR 2024.
  Wu et al., "Understanding Short-Horizon Bias in Stochastic Meta-Optimization", ICLR 2018.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from metaopt import checkpoint


__all__ = ["schedule_curves", "summarize", "plot_schedules", "main"]


def schedule_curves(paths: Sequence[str], num_steps: Sequence[int]) -> dict:
    """``{path: {T: multipliers over a run of T steps}}`` for learned-schedule checkpoints.

    Raises:
      ValueError: a checkpoint does not hold a learned schedule.
    """
    curves = {}
    for path in paths:
        lopt, theta = checkpoint.load(path)
        if not hasattr(lopt, "multiplier_curve"):
            raise ValueError(f"checkpoint: {path} holds a {lopt.kind!r}, not a learned schedule")
        curves[path] = {int(t): np.asarray(lopt.multiplier_curve(theta, int(t))) for t in num_steps}
    return curves


def summarize(curve: np.ndarray) -> dict:
    """Shape of one schedule: multiplier at start, peak (and where), end, and end over peak."""
    peak = int(np.argmax(curve))
    return {"start": float(curve[0]), "peak": float(curve[peak]), "peak_at": peak / max(len(curve) - 1, 1),
            "end": float(curve[-1]), "end_over_peak": float(curve[-1] / curve[peak])}


def plot_schedules(curves: dict, path: str, labels: Optional[Sequence[str]] = None) -> str:
    """One panel per checkpoint: multiplier against the fraction trained t/T, a line per T."""
    paths = list(curves)
    labels = list(labels) if labels else [os.path.basename(os.path.normpath(p)) for p in paths]
    fig = Figure(figsize=(5 * len(paths), 3.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(paths), squeeze=False)[0]
    for ax, p, label in zip(axes, paths, labels):
        for t, curve in sorted(curves[p].items()):
            ax.plot(np.arange(len(curve)) / len(curve), curve, label=f"T = {t}")
        ax.set_xlabel("fraction of training t/T")
        ax.set_ylabel("learning-rate multiplier")
        ax.set_title(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evaluate.schedules",
                                     description="Plot learned learning-rate schedules.")
    parser.add_argument("checkpoints", nargs="+", help="run folders or saved learned schedules")
    parser.add_argument("--num-steps", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--labels", nargs="*", default=None)
    parser.add_argument("--out", required=True, help="PNG file to write")
    args = parser.parse_args(argv)
    if any(t < 1 for t in args.num_steps):
        print("error: --num-steps: expected positive ints", file=sys.stderr)
        return 2
    if args.labels and len(args.labels) != len(args.checkpoints):
        print("error: --labels: expected one label per checkpoint", file=sys.stderr)
        return 2
    try:
        curves = schedule_curves(args.checkpoints, args.num_steps)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    labels = args.labels or args.checkpoints
    print("| schedule | T | start | peak | peak at t/T | end | end / peak |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for p, label in zip(args.checkpoints, labels):
        for t, curve in sorted(curves[p].items()):
            s = summarize(curve)
            print(f"| {label} | {t} | {s['start']:.3g} | {s['peak']:.3g} | {s['peak_at']:.2f} | "
                  f"{s['end']:.3g} | {s['end_over_peak']:.3g} |")
    print(f"wrote {plot_schedules(curves, args.out, args.labels)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
