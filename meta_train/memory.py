"""How much memory a meta-training run needs, estimated from its config before anything is allocated.

The estimate is the size of the meta-training state (theta, the outer optimizer's state, every
population member's inner run) from ``jax.eval_shape`` of the trainer's ``init`` (so no array is
made), times ``STEP_FACTOR`` for the step that reads one state and writes the next, compared with the
memory of the devices the run uses (the accelerators' limits, or the host's available RAM on CPU).
It refuses what cannot fit; it does not promise that what passes fits (activations of the inner
unrolls come on top).
"""

from __future__ import annotations

import math
import os
from typing import Any, Optional

import jax
import numpy as np

__all__ = ["STEP_FACTOR", "tree_bytes", "available_bytes", "human", "estimate"]

# The outer step holds the incoming state and the outgoing one (donation lets XLA reuse buffers
# only where layouts allow), so a run needs at least twice its state.
STEP_FACTOR = 2


def tree_bytes(tree: Any) -> int:
    """Bytes of a pytree of arrays or ``ShapeDtypeStruct``s (typed PRNG keys count their key data)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape, dtype = getattr(leaf, "shape", ()), getattr(leaf, "dtype", None)
        if dtype is None:
            continue
        if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            itemsize = 8  # threefry: two uint32 words per key
        else:
            itemsize = np.dtype(dtype).itemsize
        total += math.prod(int(d) for d in shape) * itemsize
    return total


def available_bytes(mesh: Any) -> Optional[int]:
    """Memory of the mesh's devices: the sum of the accelerators' limits, or the host's available RAM."""
    devices = list(np.asarray(mesh.devices).flat)
    if devices and devices[0].platform != "cpu":
        total = 0
        for device in devices:
            try:
                stats = device.memory_stats() or {}
            except (RuntimeError, AttributeError):
                return None
            if "bytes_limit" not in stats:
                return None
            total += int(stats["bytes_limit"])
        return total
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def human(num_bytes: float) -> str:
    """``1.5 GiB``-style text."""
    value = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if value < 1024 or unit == "EiB":
            return f"{value:.3g} {unit}"
        value /= 1024
    return f"{value:.3g} EiB"


def estimate(lopt: Any, trainer: Any) -> tuple[int, int]:
    """(theta bytes, meta-training state bytes) of a run, from shapes alone."""
    key = jax.random.key(0)
    theta = jax.eval_shape(lopt.init, key)
    state = jax.eval_shape(trainer.init, key, theta)
    return tree_bytes(theta), tree_bytes(state)
