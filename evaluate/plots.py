"""PNG plots of a suite's results (matplotlib's Agg canvas; no display and no global backend change).

- ``plots/curves_CELL.png``: training-loss curves of every optimizer on a cell (mean over non-diverged
  seeds with a t-interval band).
- ``plots/final_vs_AXIS.png``: final training and held-out loss against width (log-log), depth or
  horizon, one line per optimizer with its confidence band; ``plots/final_by_task.png`` (bars) for
  the task suite.

Every plot says what its bands are (the suite's t-interval of the mean over the non-diverged seeds).
On a log axis an interval that reaches zero or below has no lower edge to draw: its band runs to the
bottom of the plot (where the data put no bound) instead of to an invented value, and the axis
limits come from the means and the drawable edges only. The "x: all seeds diverged" marker is
explained in a title only when a plot has one.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from metaopt.evaluate import stats

__all__ = [
    "band_note", "curves_figure", "plot_curves", "final_vs_axis_figure", "plot_final_vs_axis",
    "plot_final_by_task", "write_plots",
]

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


def band_note(confidence: float) -> str:
    """What the shaded bands of a plot are."""
    return f"bands: {confidence:.0%} t-interval of the mean over non-diverged seeds"


def _log_limits(values) -> tuple[float, float] | None:
    """Log-axis limits around the positive finite ``values`` with a margin, or None."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x) and x > 0], float)
    if not v.size:
        return None
    lo, hi = v.min(), v.max()
    pad = (hi / lo) ** 0.05 if hi > lo else 1.2
    return lo / pad, hi * pad


def _fill_band(ax, xs, mean, lo, hi, color, log: bool, bottom: float | None) -> None:
    """Shades [lo, hi]; on a log axis a lower edge at or below zero runs to ``bottom``, the axis' floor."""
    lo = np.asarray(lo, float)
    if log and bottom is not None:
        lo = np.where(lo > 0, lo, bottom)
    ax.fill_between(xs, lo, hi, color=color, alpha=0.2, lw=0)


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


def curves_figure(cell: dict, names: list[str], confidence: float) -> Optional[Figure]:
    """The figure of ``plot_curves`` (``None`` for a skipped cell)."""
    if cell.get("status") != "done":
        return None
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot(1, 1, 1)
    colors = _colors(names)
    series = []
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
        series.append((name, label, steps, mean, lo, hi))
    target = cell.get("target")
    means = [v for *_, mean, _, _ in series for v in mean]
    log = bool(series) and all(np.nanmin(m) > 0 for *_, m, _, _ in series if np.isfinite(m).any())
    limits = None
    if log:
        # Drawable edges only: a lower edge at or below zero has no place on a log axis.
        edges = means + [v for *_, lo, hi in series for v in list(lo[lo > 0]) + list(hi)]
        if target is not None:
            edges.append(target["loss"])
        limits = _log_limits(edges)
    for name, label, steps, mean, lo, hi in series:
        ax.plot(steps, mean, color=colors[name], label=label, lw=1.5)
        _fill_band(ax, steps, mean, lo, hi, colors[name], log, None if limits is None else limits[0])
    if target is not None:
        ax.axhline(target["loss"], color="gray", ls=":", lw=1, label=f"target ({target['optimizer']})")
    if log and limits is not None:
        _log_y(ax, means)
        ax.set_ylim(*limits)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(f"{cell['name']} ({cell['family']}, {cell['num_steps']} steps)\n{band_note(confidence)}",
                 fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def plot_curves(cell: dict, names: list[str], path: str, confidence: float) -> Optional[str]:
    """Loss curves of one cell; returns the path written (``None`` for a skipped cell)."""
    fig = curves_figure(cell, names, confidence)
    return None if fig is None else _save(fig, path)


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


def final_vs_axis_figure(cells: list[dict], names: list[str], axis: str,
                         confidence: float = 0.95) -> Optional[Figure]:
    """The figure of ``plot_final_vs_axis`` (``None`` when no cell ran)."""
    done = sorted((c for c in cells if c.get("status") == "done" and c.get("x") is not None),
                  key=lambda c: c["x"])
    if not done:
        return None
    fig = Figure(figsize=(11, 4.4))
    colors = _colors(names)
    any_lost = False
    for i, (key, title) in enumerate((("final_train_loss", "final training loss"),
                                      ("final_eval_loss", "final held-out loss"))):
        ax = fig.add_subplot(1, 2, i + 1)
        top = max((c["optimizers"][n][key]["mean"] for c in done for n in names
                   if n in c["optimizers"] and c["optimizers"][n][key]["mean"] is not None), default=1.0)
        series = [(name, *_summary_arrays(done, name, key)) for name in names]
        log = all(bool(np.all(mean > 0)) for _, xs, mean, _, _ in series if xs.size)
        limits = None
        if log:
            edges = [top] + [v for _, xs, mean, lo, hi in series if xs.size
                             for v in list(mean) + list(lo[lo > 0]) + list(hi)]
            limits = _log_limits(edges)
        for name, xs, mean, lo, hi in series:
            if xs.size:
                ax.plot(xs, mean, marker="o", color=colors[name], label=name, lw=1.5)
                _fill_band(ax, xs, mean, lo, hi, colors[name], log, None if limits is None else limits[0])
            lost = [c["x"] for c in done
                    if name in c["optimizers"] and c["optimizers"][name][key]["mean"] is None]
            if lost:  # every seed diverged: marked at the top of the plot
                any_lost = True
                ax.plot(lost, [top] * len(lost), ls="none", marker="x", color=colors[name], ms=9,
                        label=None if xs.size else f"{name} (diverged)")
        if axis in ("width", "horizon"):
            ax.set_xscale("log", base=2 if axis == "width" else 10)
        xticks = sorted({c["x"] for c in done})
        ax.set_xticks(xticks, [f"{x:g}" for x in xticks])
        ax.xaxis.set_minor_formatter(NullFormatter())
        if log and limits is not None:
            _log_y(ax, [top] + [v for _, xs, mean, _, _ in series for v in mean])
            ax.set_ylim(*limits)
        ax.set_xlabel(_AXIS_LABEL.get(axis, axis))
        ax.set_ylabel(title)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    title = f"final loss vs {_AXIS_LABEL.get(axis, axis)}; {band_note(confidence)}"
    if any_lost:
        title += " (x: all seeds diverged)"
    fig.suptitle(title)
    return fig


def plot_final_vs_axis(cells: list[dict], names: list[str], axis: str, path: str,
                       confidence: float = 0.95) -> Optional[str]:
    """Final training and held-out loss against the suite's axis, one line per optimizer."""
    fig = final_vs_axis_figure(cells, names, axis, confidence)
    return None if fig is None else _save(fig, path)


def plot_final_by_task(cells: list[dict], names: list[str], path: str,
                       confidence: float = 0.95) -> Optional[str]:
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
    ax.set_title(f"error bars: {confidence:.0%} t-interval of the mean over non-diverged seeds", fontsize=9)
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
        p = plot_final_by_task(results["cells"], names, os.path.join(folder, "final_by_task.png"),
                               confidence)
    else:
        p = plot_final_vs_axis(results["cells"], names, axis, os.path.join(folder, f"final_vs_{axis}.png"),
                               confidence)
    if p:
        paths.append(p)
    return paths

