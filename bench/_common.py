"""Shared helpers of the benchmarks: side-by-side timing, XLA FLOP counts, memory, and headers.

Every benchmark prints the command line that made its figures and the machine's state (JAX version,
devices, load average), then a table. Timings are wall-clock seconds of calls that end in
``block_until_ready``, taken after a warm-up call; when two programs are compared they run
alternately in the same process (A B A B ...) and each figure is the median over the repeats, so a
drift of the machine's speed moves both alike.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import resource
import shlex
import statistics
import sys
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np


def command_line() -> str:
    """The command that is running, as one shell-quoted line."""
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def header(title: str) -> None:
    """Prints what was run and on what."""
    print(f"# {title}")
    print(f"# command: {command_line()}")
    print(f"# jax {jax.__version__}, devices: {len(jax.devices())} x {jax.devices()[0].platform}, "
          f"cpus: {os.cpu_count()}, python {platform.python_version()}")
    print(f"# load average (1, 5, 15 min) at start: {load_average()}")
    sys.stdout.flush()


def footer() -> None:
    print(f"# load average at end: {load_average()}; peak RSS: {peak_rss_gib():.2f} GiB")
    sys.stdout.flush()


def block(tree: Any) -> Any:
    return jax.block_until_ready(tree)


def time_call(fn: Callable[[], Any]) -> float:
    """Seconds of one call, waiting for its results."""
    start = time.perf_counter()
    block(fn())
    return time.perf_counter() - start


def time_alternating(fns: Sequence[Callable[[], Any]], repeats: int = 5, warmup: int = 1,
                     min_seconds: float = 0.0) -> list[float]:
    """Median seconds per call of each function, called in turn (A B A B ...) after warm-up.

    Args:
      fns: zero-argument callables (jitted programs with their arguments bound).
      repeats: timed rounds (at least this many).
      warmup: untimed rounds first (compilation, caches).
      min_seconds: keep adding rounds until every function has this much timed time in total.

    Returns:
      One median per function.
    """
    for _ in range(warmup):
        for fn in fns:
            time_call(fn)
    times: list[list[float]] = [[] for _ in fns]
    rounds = 0
    while rounds < repeats or min(sum(t) for t in times) < min_seconds:
        for i, fn in enumerate(fns):
            times[i].append(time_call(fn))
        rounds += 1
        if rounds >= 200:
            break
    return [statistics.median(t) for t in times]


def xla_flops(fn: Callable, *args) -> float:
    """FLOPs of one call of ``fn(*args)`` as counted by XLA's cost analysis of the compiled program.

    XLA counts the body of a loop (``lax.scan``) once, whatever its trip count.
    """
    return compiled_flops(jax.jit(fn).lower(*args).compile())


def one_row_block(lopt: Any) -> Any:
    """``lopt`` with one row block per matrix (``MLPLOpt.row_block=None``), so that XLA's FLOP count
    covers every block; other learned optimizers as they are.

    (XLA counts a loop's body once. The blocked matrix pass also recomputes the per-entry features
    once for its normalisers, a few percent more FLOPs that the count leaves out.) Populations are
    vmapped for a count by building the trainer with ``Execution(member_map="vmap")``.
    """
    return dataclasses.replace(lopt, row_block=None) if hasattr(lopt, "row_block") else lopt


def lo_update_flops(lopt, theta, num_steps, grads, params, **transform_kwargs) -> float:
    """FLOPs of one learned-optimizer update (``tx.update``), by XLA's count, row blocks undone."""
    tx = one_row_block(lopt).transform(theta, num_steps, **transform_kwargs)
    return xla_flops(lambda g, s, p: tx.update(g, s, p), grads, tx.init(params), params)


def compiled_flops(compiled: Any) -> float:
    """FLOPs of a compiled program by XLA's cost analysis (NaN when unavailable)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float(cost.get("flops", float("nan"))) if cost else float("nan")


def compile_seconds(fn: Callable, *args, static_argnums=()) -> tuple[float, Any]:
    """Seconds to trace and compile ``jax.jit(fn)`` for ``args``; returns (seconds, compiled)."""
    start = time.perf_counter()
    compiled = jax.jit(fn, static_argnums=static_argnums).lower(*args).compile()
    return time.perf_counter() - start, compiled


def tree_bytes(tree: Any) -> int:
    """Bytes held by the arrays of a pytree."""
    return int(sum(np.dtype(x.dtype).itemsize * int(np.prod(x.shape)) for x in jax.tree.leaves(tree)
                   if hasattr(x, "dtype")))


def peak_rss_gib() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def print_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A Markdown table (so it can be pasted into the docs as it is)."""

    def fmt(x):
        if isinstance(x, float):
            if x != x:
                return "n/a"
            if abs(x) >= 1e5 or (0 < abs(x) < 1e-3):
                return f"{x:.3g}"
            return f"{x:.3f}" if abs(x) < 10 else f"{x:.1f}"
        return str(x)

    cells = [[fmt(x) for x in row] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(columns)]
    print("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |")
    print("| " + " | ".join("-" * w for w in widths) + " |")
    for r in cells:
        print("| " + " | ".join(x.ljust(w) for x, w in zip(r, widths)) + " |")
    sys.stdout.flush()
