"""Learning-rate tuning of the baselines: a log-spaced grid search on a separate tuning seed.

Each grid point is a whole run of ``num_steps`` on the tuning seed; all points of a grid are one vmapped
program (``runner.run_batch``). The selected learning rate minimises the final smoothed training loss
or the held-out loss; diverged runs score infinity. An optimum at the grid's edge is a warning (the
grid was not wide enough): the grid can be extended past that edge, by another grid's worth of points
at the same spacing, a bounded number of times. Everything evaluated is recorded, so the tuning budget
(runs and inner steps) is part of the results.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Optional

import numpy as np

from metaopt.evaluate import stats


__all__ = ["GridEdgeWarning", "log_grid", "scores", "tune_learning_rate"]


class GridEdgeWarning(UserWarning):
    """The best learning rate of a grid search lies at the grid's edge."""


def log_grid(lowest: float, highest: float, num_points: int) -> np.ndarray:
    """``num_points`` learning rates evenly spaced in log space from ``lowest`` to ``highest``."""
    if not 0 < lowest < highest:
        raise ValueError(f"grid: need 0 < lowest < highest, got {lowest}, {highest}")
    if num_points < 2:
        raise ValueError(f"num_points: need at least 2, got {num_points}")
    return np.geomspace(lowest, highest, num_points)


def scores(losses: np.ndarray, evals: np.ndarray, window: int, select_by: str, tolerance: float = 0.0
           ) -> np.ndarray:
    """Selection score of every run (lower is better; diverged runs score infinity).

    Args:
      losses: (runs, num_steps) training losses.
      evals: (runs,) held-out losses.
      window: steps averaged for the final training loss.
      select_by: "train" (final smoothed training loss) or "eval" (held-out loss).
      tolerance: divergence margin (``stats.diverged``).
    """
    final = stats.final_losses(losses, window)
    bad = stats.diverged(losses, final, evals, tolerance)
    if select_by == "train":
        value = final
    elif select_by == "eval":
        value = np.asarray(evals, np.float64)
    else:
        raise ValueError(f"select_by: expected 'train' or 'eval', got {select_by!r}")
    return np.where(bad | ~np.isfinite(value), np.inf, value)


def tune_learning_rate(evaluate: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], lowest: float,
                       highest: float, num_points: int, *, window: int, select_by: str = "train",
                       extend: bool = True, max_extensions: int = 2, tolerance: float = 0.0,
                       num_steps: Optional[int] = None,
                       name: str = "baseline") -> dict:
    """Grid search over the peak learning rate.

    Args:
      evaluate: maps learning rates (num_points,) to (training losses (num_points, num_steps),
        held-out losses (num_points,)) of runs on the tuning seed.
      lowest, highest: the grid's range.
      num_points: points per grid (and per extension).
      window: steps averaged for the final training loss.
      select_by: "train" or "eval".
      extend: extend the grid past an edge optimum.
      max_extensions: how many times at most.
      tolerance: divergence margin (``stats.diverged``).
      num_steps: the run length, to record the tuning budget in steps.
      name: the baseline's name, for warnings.

    Returns:
      A JSON-ready record: ``grid`` and ``scores`` (every learning rate evaluated, increasing),
      ``best``, ``at_edge`` (``None``, "lower" or "upper"), ``extensions``, ``runs``, ``steps``,
      ``select_by``, ``warnings``.
    """
    ratio = (highest / lowest) ** (1.0 / (num_points - 1))
    lrs = log_grid(lowest, highest, num_points)
    losses, evals = evaluate(lrs)
    all_lrs, all_scores = list(lrs), list(scores(losses, evals, window, select_by, tolerance))
    extensions = 0
    while True:
        order = np.argsort(all_lrs)
        grid = np.asarray(all_lrs)[order]
        score = np.asarray(all_scores)[order]
        best = int(np.argmin(score))
        edge = "lower" if best == 0 else "upper" if best == len(grid) - 1 else None
        if edge is None or not extend or extensions >= max_extensions:
            break
        if edge == "upper":
            new = grid[-1] * ratio ** np.arange(1, num_points + 1)
        else:
            new = grid[0] / ratio ** np.arange(num_points, 0, -1)
        losses, evals = evaluate(new)
        all_lrs += list(new)
        all_scores += list(scores(losses, evals, window, select_by, tolerance))
        extensions += 1
    record_warnings = []
    if not np.isfinite(score[best]):
        record_warnings.append(f"{name}: every learning rate of the grid diverged; "
                               f"using the lowest, {grid[best]:.3g}")
    elif edge is not None:
        record_warnings.append(f"{name}: best learning rate {grid[best]:.3g} is at the {edge} edge of the "
                               f"grid [{grid[0]:.3g}, {grid[-1]:.3g}]; widen baselines.{name}.grid")
    for message in record_warnings:
        warnings.warn(message, GridEdgeWarning, stacklevel=2)
    runs = len(all_lrs)
    return {
        "grid": [float(x) for x in grid],
        "scores": [stats.to_float(x) for x in score],
        "best": float(grid[best]),
        "best_score": stats.to_float(score[best]),
        "at_edge": edge,
        "extensions": extensions,
        "runs": runs,
        "steps": None if num_steps is None else runs * int(num_steps),
        "select_by": select_by,
        "warnings": record_warnings,
        "log10_spacing": math.log10(ratio),
    }
