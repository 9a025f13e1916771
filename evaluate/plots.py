"""PNG plots of a suite's results (matplotlib's Agg canvas; no display and no global backend change).

- ``plots/curves_CELL.png``: training-loss curves of every optimizer on a cell (mean over non-diverged
  seeds with a t-interval band).
- ``plots/final_vs_AXIS.png``: final training and held-out loss against width (log-log), depth or
  horizon, one line per optimizer with its confidence band; ``plots/final_by_task.png`` (bars) for
  the task suite.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from metaopt.evaluate import stats

_AXIS_LABEL = {"width": "width", "depth": "depth", "horizon": "inner steps"}


def _save(fig: Figure, path: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    FigureCanvasAgg(fig)
    tmp = os.path.join(os.path.dirname(path), f".tmp-{os.path.basename(path)}")
    fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    os.replace(tmp, path)
    return path


def _log_y(ax, values) -> None:
    """Log y axis with plain tick labels when the data span less than a decade."""
    ax.set_yscale("log")
    values = np.asarray([v for v in values if v is not None and np.isfinite(v) and v > 0])
    if values.size and values.max() / values.min() < 10:
        plain = FuncFormatter(lambda v, _: f"{v:.3g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)


def _colors(names: list[str]) -> dict:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {name: cmap(i % 10) for i, name in enumerate(names)}


def _band(rows: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and t-interval per column over rows (columns with one finite row get no band)."""
    rows = np.asarray(rows, np.float64)
    finite = np.isfinite(rows)
    n = finite.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        safe = np.where(finite, rows, 0.0)
        mean = np.where(n > 0, safe.sum(axis=0) / np.maximum(n, 1), np.nan)
        var = np.where(n > 1, ((safe - mean) ** 2 * finite).sum(axis=0) / np.maximum(n - 1, 1), 0.0)
    half = np.zeros_like(mean)
    for k in np.unique(n[n > 1]):
        half[n == k] = stats.t_quantile(0.5 + confidence / 2, int(k) - 1) * np.sqrt(var[n == k] / k)
    return mean, mean - half, mean + half


def plot_curves(cell: dict, names: list[str], path: str, confidence: float) -> Optional[str]:
    """Loss curves of one cell; returns the path written (``None`` for a skipped cell)."""
    if cell.get("status") != "done":
        return None
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    colors = _colors(names)
    positive, shown = True, []
    for name in names:
        rec = cell["optimizers"].get(name)
        if rec is None:
            continue
        keep = [i for i, d in enumerate(rec["diverged"]) if not d]
        label = name
        if len(keep) < len(rec["diverged"]):
            label += f" ({len(rec['diverged']) - len(keep)} diverged)"
        if not keep:
            ax.plot([], [], color=colors[name], label=label)
            continue
        rows = np.array([[np.nan if v is None else v for v in rec["curve"]["per_seed"][i]] for i in keep])
        steps = np.asarray(rec["curve"]["steps"])
        mean, lo, hi = _band(rows, confidence)
        positive &= bool(np.nanmin(mean) > 0) if np.isfinite(mean).any() else True
        lo = np.where(lo > 0, lo, mean / 10)  # a band reaching below zero is cut on a log axis
        shown += list(lo) + list(hi)
        ax.plot(steps, mean, color=colors[name], label=label, lw=1.5)
        ax.fill_between(steps, lo, hi, color=colors[name], alpha=0.2, lw=0)
    target = cell.get("target")
    if target is not None:
        ax.axhline(target["loss"], color="gray", ls=":", lw=1, label=f"target ({target['optimizer']})")
    if positive:
        _log_y(ax, shown)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(f"{cell['name']} ({cell['family']}, {cell['num_steps']} steps)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _summary_arrays(cells: list[dict], name: str, key: str):
    xs, mean, lo, hi = [], [], [], []
    for cell in cells:
        rec = cell["optimizers"].get(name)
        if rec is None or rec[key]["mean"] is None:
            continue
        s = rec[key]
        xs.append(cell["x"])
        mean.append(s["mean"])
        lo.append(s["ci_low"] if s["ci_low"] is not None else s["mean"])
        hi.append(s["ci_high"] if s["ci_high"] is not None else s["mean"])
    return np.array(xs, float), np.array(mean), np.array(lo), np.array(hi)


def plot_final_vs_axis(cells: list[dict], names: list[str], axis: str, path: str) -> Optional[str]:
    """Final training and held-out loss against the suite's axis, one line per optimizer."""
    done = sorted((c for c in cells if c.get("status") == "done" and c.get("x") is not None),
                  key=lambda c: c["x"])
    if not done:
        return None
    fig = Figure(figsize=(11, 4.2))
    colors = _colors(names)
    for i, (key, title) in enumerate((("final_train_loss", "final training loss"),
                                      ("final_eval_loss", "final held-out loss"))):
        ax = fig.add_subplot(1, 2, i + 1)
        positive, shown = True, []
        top = max((c["optimizers"][n][key]["mean"] for c in done for n in names
                   if n in c["optimizers"] and c["optimizers"][n][key]["mean"] is not None), default=1.0)
        for name in names:
            xs, mean, lo, hi = _summary_arrays(done, name, key)
            if xs.size:
                positive &= bool(np.all(mean > 0))
                lo = np.where(lo > 0, lo, mean / 10)
                shown += list(lo) + list(hi)
                ax.plot(xs, mean, marker="o", color=colors[name], label=name, lw=1.5)
                ax.fill_between(xs, lo, hi, color=colors[name], alpha=0.2, lw=0)
            lost = [c["x"] for c in done
                    if name in c["optimizers"] and c["optimizers"][name][key]["mean"] is None]
            if lost:  # every seed diverged: marked at the top of the plot
                ax.plot(lost, [top] * len(lost), ls="none", marker="x", color=colors[name], ms=9,
                        label=None if xs.size else f"{name} (diverged)")
        if axis in ("width", "horizon"):
            ax.set_xscale("log", base=2 if axis == "width" else 10)
        xticks = sorted({c["x"] for c in done})
        ax.set_xticks(xticks, [f"{x:g}" for x in xticks])
        ax.xaxis.set_minor_formatter(NullFormatter())
        if positive:
            _log_y(ax, shown + [top])
        ax.set_xlabel(_AXIS_LABEL.get(axis, axis))
        ax.set_ylabel(title)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(f"final loss vs {_AXIS_LABEL.get(axis, axis)} (x: all seeds diverged)")
    return _save(fig, path)


def plot_final_by_task(cells: list[dict], names: list[str], path: str) -> Optional[str]:
    """Grouped bars of final training loss per task cell, with confidence intervals."""
    done = [c for c in cells if c.get("status") == "done"]
    if not done:
        return None
    fig = Figure(figsize=(max(6.0, 1.6 * len(done) * max(1, len(names)) / 3), 4.2))
    ax = fig.add_subplot(1, 1, 1)
    colors = _colors(names)
    width = 0.8 / max(1, len(names))
    for j, name in enumerate(names):
        xs, heights, errs = [], [], [[], []]
        for i, cell in enumerate(done):
            rec = cell["optimizers"].get(name)
            if rec is None or rec["final_train_loss"]["mean"] is None:
                continue
            s = rec["final_train_loss"]
            xs.append(i + (j - (len(names) - 1) / 2) * width)
            heights.append(s["mean"])
            errs[0].append(0.0 if s["ci_low"] is None else s["mean"] - s["ci_low"])
            errs[1].append(0.0 if s["ci_high"] is None else s["ci_high"] - s["mean"])
        if xs:
            ax.bar(xs, heights, width=width, yerr=errs, color=colors[name], label=name, capsize=2)
    ax.set_xticks(range(len(done)))
    ax.set_xticklabels([c["name"] for c in done], rotation=20)
    ax.set_ylabel("final training loss")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def write_plots(out: str, results: dict) -> list[str]:
    """Writes every plot of ``results`` under ``out/plots``; returns the paths written."""
    folder = os.path.join(out, "plots")
    names = results["optimizers"]
    confidence = results["suite_config"]["confidence"]
    axis = results["suite_config"]["axis"]
    paths = []
    for cell in results["cells"]:
        p = plot_curves(cell, names, os.path.join(folder, f"curves_{cell['name']}.png"), confidence)
        if p:
            paths.append(p)
    if axis == "task":
        p = plot_final_by_task(results["cells"], names, os.path.join(folder, "final_by_task.png"))
    else:
        p = plot_final_vs_axis(results["cells"], names, axis, os.path.join(folder, f"final_vs_{axis}.png"))
    if p:
        paths.append(p)
    return paths

