"""Statistics of evaluation runs: final losses, divergence, t-intervals and steps to a target loss.

Everything here works on NumPy arrays of per-step training losses (one row per seed) after the runs
have finished; nothing is traced. Diverged seeds are flagged per seed and left out of means and
intervals, so a summary always says how many seeds it stands for.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
from scipy.stats import t as student_t


__all__ = [
    "t_quantile", "window_size", "trailing_mean", "final_losses", "diverged", "summarize",
    "steps_to_target", "summarize_steps", "subsample_curve", "to_float",
]


def t_quantile(p: float, df: float) -> float:
    """Quantile of Student's t distribution with ``df`` degrees of freedom.

    Args:
      p: probability in (0, 1).
      df: degrees of freedom (> 0).
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p: must be in (0, 1), got {p}")
    if df <= 0:
        raise ValueError(f"df: must be > 0, got {df}")
    return float(student_t.ppf(p, df))


def window_size(num_steps: int, final_window: float) -> int:
    """Steps averaged for a 'final' loss: a fraction of the run (``final_window`` < 1) or a count."""
    if final_window < 1:
        return max(1, int(round(final_window * num_steps)))
    return max(1, min(int(final_window), num_steps))


def trailing_mean(losses: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average along the last axis (shorter windows at the start)."""
    losses = np.asarray(losses, np.float64)
    csum = np.cumsum(losses, axis=-1)
    out = np.empty_like(csum)
    n = losses.shape[-1]
    idx = np.arange(n)
    start = np.maximum(idx - window + 1, 0)
    prev = np.where(start > 0, np.take(csum, np.maximum(start - 1, 0), axis=-1), 0.0)
    out[...] = (csum - prev) / (idx - start + 1)
    return out


def final_losses(losses: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last ``window`` training losses of every row."""
    losses = np.asarray(losses, np.float64)
    return losses[..., -window:].mean(axis=-1)


def diverged(losses: np.ndarray, final_train: np.ndarray, final_eval: Optional[np.ndarray] = None,
             tolerance: float = 0.0) -> np.ndarray:
    """Per-row divergence: a non-finite final loss, or a final loss above the initial one.

    Args:
      losses: (seeds, num_steps) training losses.
      final_train: (seeds,) final (smoothed) training losses.
      final_eval: optional (seeds,) held-out losses.
      tolerance: relative margin: diverged when final > initial + tolerance * |initial| (a run that
        does not move stays within the noise of its final-window average).

    Returns:
      Boolean array (seeds,).
    """
    losses = np.asarray(losses, np.float64)
    initial = losses[..., 0]
    with np.errstate(invalid="ignore"):
        above = final_train > initial + tolerance * np.abs(initial)
    bad = ~np.isfinite(final_train) | ~np.isfinite(initial) | above
    if final_eval is not None:
        bad |= ~np.isfinite(np.asarray(final_eval, np.float64))
    return bad


def summarize(values: Sequence[float], diverged_mask: Sequence[bool], confidence: float = 0.95) -> dict:
    """Mean and t-interval of the non-diverged values; the per-seed values and flags are kept.

    Returns:
      dict with ``per_seed``, ``diverged``, ``n`` (seeds counted), ``n_diverged``, ``mean``, ``std``,
      ``ci_low``, ``ci_high`` (``None`` where undefined: no seed left, or one seed for the interval).
    """
    values = np.asarray(values, np.float64)
    mask = np.asarray(diverged_mask, bool) | ~np.isfinite(values)
    kept = values[~mask]
    out = {
        "per_seed": [to_float(v) for v in values],
        "diverged": [bool(d) for d in np.asarray(diverged_mask, bool)],
        "n": int(kept.size),
        "n_diverged": int(np.asarray(diverged_mask, bool).sum()),
        "mean": None, "std": None, "ci_low": None, "ci_high": None,
        "confidence": confidence,
    }
    if kept.size == 0:
        return out
    mean = float(kept.mean())
    out["mean"] = mean
    if kept.size > 1:
        std = float(kept.std(ddof=1))
        half = t_quantile(0.5 + confidence / 2.0, kept.size - 1) * std / math.sqrt(kept.size)
        out.update(std=std, ci_low=mean - half, ci_high=mean + half)
    else:
        out.update(std=0.0)
    return out


def steps_to_target(losses: np.ndarray, target: Optional[float], window: int) -> list[Optional[int]]:
    """First step at which each row's trailing-mean training loss is at or below ``target``.

    Args:
      losses: (seeds, num_steps) training losses; entry t is the loss after t updates.
      target: the loss to reach (``None``: nothing to reach, every entry ``None``).
      window: trailing-mean window, the same one the final losses use.

    Returns:
      One step count per row, ``None`` where the target is never reached.
    """
    losses = np.asarray(losses, np.float64)
    if target is None or not math.isfinite(target):
        return [None] * losses.shape[0]
    smooth = trailing_mean(losses, window)
    out = []
    for row in smooth:
        hits = np.nonzero(np.isfinite(row) & (row <= target))[0]
        out.append(int(hits[0]) if hits.size else None)
    return out


def summarize_steps(steps: Sequence[Optional[int]], diverged_mask: Sequence[bool]) -> dict:
    """Summary of steps to target: mean over the seeds that reached it, and how many did."""
    kept = [s for s, d in zip(steps, diverged_mask) if s is not None and not d]
    return {
        "per_seed": list(steps),
        "reached": len(kept),
        "n": len(steps),
        "mean": float(np.mean(kept)) if kept else None,
    }


def subsample_curve(losses: np.ndarray, num_points: int) -> tuple[list[int], list[list[Optional[float]]]]:
    """Block means of each row's loss curve at about ``num_points`` points.

    Returns:
      The step at the centre of each block, and per row the block means (``None`` for non-finite).
    """
    losses = np.asarray(losses, np.float64)
    n = losses.shape[-1]
    num_points = max(1, min(num_points, n))
    edges = np.unique(np.round(np.linspace(0, n, num_points + 1)).astype(int))
    steps, cols = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        steps.append(int((lo + hi - 1) // 2))
        with np.errstate(invalid="ignore", over="ignore"):
            cols.append(losses[:, lo:hi].mean(axis=-1))
    values = np.stack(cols, axis=-1)
    return steps, [[to_float(v) for v in row] for row in values]


def to_float(x) -> Optional[float]:
    """A finite Python float, or ``None`` for NaN and infinities (strict JSON has no NaN)."""
    x = float(x)
    return x if math.isfinite(x) else None
