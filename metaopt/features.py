"""Gradient accumulators and the per-parameter input features of a learned optimizer.

The accumulators are those of small_fc_lopt: momenta at several decays, one second moment, and
Adafactor's factored (row/column) second-moment estimates at several decays. For a tensor of shape
(..., rows, cols) the factored accumulators have shapes (..., rows) and (..., cols), so they cost
almost no memory; a vector (or scalar) has no factorisation and keeps a full accumulator instead.

Features of one tensor (names as in ``feature_names``; d runs over the decays):

- ``param``, ``grad``: the parameter and its gradient;
- ``momentum_{d}``: the momenta (not bias-corrected);
- ``rms``: sqrt(v_hat), with v_hat the bias-corrected second moment;
- ``momentum_over_rms_{d}``: m_hat_d / (sqrt(v_hat) + eps), m_hat_d the bias-corrected momentum; with
  d = 0.9 and second-moment decay 0.999 this is exactly Adam's update direction;
- ``rsqrt_second_moment``: 1 / (sqrt(v_hat) + eps);
- ``adafactor_grad_{d}``: the gradient divided by the square root of the factored estimate
  v_d = row_d col_d / mean(row_d);
- ``adafactor_row_{d}``, ``adafactor_col_{d}``: the row and column accumulators, broadcast;
- ``adafactor_rsqrt_row_{d}``, ``adafactor_rsqrt_col_{d}``: their reciprocal square roots;
- ``adafactor_momentum_{d}``: the i-th momentum divided by the square root of the i-th factored estimate.

Accumulators are kept in float32, or in the parameter's dtype when that is wider.

References:
  Metz et al., "Practical tradeoffs between memory, compute, and performance in learned optimizers",
  CoLLAs 2022. Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost", 2018.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp

__all__ = [
    "MOMENTUM_DECAYS", "SECOND_MOMENT_DECAY", "FACTORED_DECAYS", "Accumulators", "feature_names",
    "accumulator_dtype", "init_accumulators", "update_accumulators", "tensor_features", "RANK1_GROUPS",
    "feature_axis", "factored_vector_features", "feature_inv_rms", "normalize_features",
]

PyTree = Any

MOMENTUM_DECAYS = (0.9, 0.99, 0.999)
SECOND_MOMENT_DECAY = 0.999
FACTORED_DECAYS = (0.9, 0.99, 0.999)

# Added to squared gradients before factoring so row/column means are never exactly zero.
_FACTORED_EPS = 1e-30


class Accumulators(NamedTuple):
    """Optimizer state of a learned optimizer built on small_fc_lopt's accumulators.

    Attributes:
      count: number of updates applied so far (int32 scalar).
      momentum: per tensor, the momenta stacked on a leading axis: shape (num_momenta, *shape).
      second_moment: per tensor, shape ``shape``.
      factored: per tensor, ``(row, col)`` with shapes (num_factored, *shape[:-1]) and
        (num_factored, *shape[:-2], shape[-1]) for tensors of rank >= 2, or ``(full,)`` of shape
        (num_factored, *shape) for vectors and scalars.
    """

    count: jax.Array
    momentum: PyTree
    second_moment: PyTree
    factored: PyTree


def _decay_name(decay: float) -> str:
    return f"{decay:g}"


def feature_names(momentum_decays: Sequence[float] = MOMENTUM_DECAYS,
                  factored_decays: Sequence[float] = FACTORED_DECAYS) -> tuple[str, ...]:
    """Every per-parameter feature this module can compute, in its canonical order."""
    return tuple(n for _, members in _feature_groups(momentum_decays, factored_decays) for n in members)


def accumulator_dtype(dtype: Any) -> jnp.dtype:
    """float32, or the parameter's dtype when that is a wider float."""
    dtype = jnp.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize > 4:
        return dtype
    return jnp.dtype(jnp.float32)


def _init_factored(p: jax.Array, num: int, dtype) -> tuple:
    shape = p.shape
    if p.ndim >= 2:
        return (jnp.zeros((num, *shape[:-1]), dtype), jnp.zeros((num, *shape[:-2], shape[-1]), dtype))
    return (jnp.zeros((num, *shape), dtype),)


def init_accumulators(params: PyTree, momentum_decays: Sequence[float] = MOMENTUM_DECAYS,
                      factored_decays: Sequence[float] = FACTORED_DECAYS) -> Accumulators:
    """Zero accumulators for ``params``."""
    leaves, treedef = jax.tree.flatten(params)
    momentum, second, factored = [], [], []
    for p in leaves:
        dtype = accumulator_dtype(p.dtype)
        momentum.append(jnp.zeros((len(momentum_decays), *p.shape), dtype))
        second.append(jnp.zeros(p.shape, dtype))
        factored.append(_init_factored(p, len(factored_decays), dtype))
    return Accumulators(
        count=jnp.zeros([], jnp.int32),
        momentum=jax.tree.unflatten(treedef, momentum),
        second_moment=jax.tree.unflatten(treedef, second),
        factored=jax.tree.unflatten(treedef, factored),
    )


def _decays(values: Sequence[float], ndim: int, dtype) -> jax.Array:
    return jnp.asarray(values, dtype).reshape((len(values),) + (1,) * ndim)


def _update_tensor(g, momentum, second, factored, momentum_decays, second_moment_decay,
                   factored_decays):
    dtype = momentum.dtype
    g = g.astype(dtype)
    b_m = _decays(momentum_decays, g.ndim, dtype)
    momentum = b_m * momentum + (1 - b_m) * g[None]
    second = second_moment_decay * second + (1 - second_moment_decay) * jnp.square(g)
    g2 = jnp.square(g) + _FACTORED_EPS
    if g.ndim >= 2:
        row, col = factored
        b_r = _decays(factored_decays, g.ndim - 1, dtype)
        row = b_r * row + (1 - b_r) * jnp.mean(g2, axis=-1)[None]
        col = b_r * col + (1 - b_r) * jnp.mean(g2, axis=-2)[None]
        factored = (row, col)
    else:
        (full,) = factored
        b_f = _decays(factored_decays, g.ndim, dtype)
        factored = (b_f * full + (1 - b_f) * g2[None],)
    return momentum, second, factored


def update_accumulators(grads: PyTree, state: Accumulators,
                        momentum_decays: Sequence[float] = MOMENTUM_DECAYS,
                        second_moment_decay: float = SECOND_MOMENT_DECAY,
                        factored_decays: Sequence[float] = FACTORED_DECAYS) -> Accumulators:
    """Folds one gradient into every accumulator and increments the count.

    Shapes and dtypes of the state are unchanged, so a jitted step never recompiles.
    """
    g_leaves, treedef = jax.tree.flatten(grads)
    m_leaves = treedef.flatten_up_to(state.momentum)
    v_leaves = treedef.flatten_up_to(state.second_moment)
    f_leaves = treedef.flatten_up_to(state.factored)
    momentum, second, factored = [], [], []
    for g, m, v, f in zip(g_leaves, m_leaves, v_leaves, f_leaves):
        m, v, f = _update_tensor(g, m, v, tuple(f), momentum_decays, second_moment_decay,
                                 factored_decays)
        momentum.append(m)
        second.append(v)
        factored.append(f)
    return Accumulators(
        count=state.count + 1,
        momentum=jax.tree.unflatten(treedef, momentum),
        second_moment=jax.tree.unflatten(treedef, second),
        factored=jax.tree.unflatten(treedef, factored),
    )


def _feature_groups(momentum_decays, factored_decays) -> list[tuple[str, list[str]]]:
    """(group, feature names) in canonical order; every group is computed as one stacked array."""
    m = [_decay_name(d) for d in momentum_decays]
    f = [_decay_name(d) for d in factored_decays]
    groups = [("param", ["param"]), ("grad", ["grad"]),
              ("momentum", [f"momentum_{d}" for d in m]), ("rms", ["rms"]),
              ("momentum_over_rms", [f"momentum_over_rms_{d}" for d in m]),
              ("rsqrt_second_moment", ["rsqrt_second_moment"])]
    groups += [(g, [f"{g}_{d}" for d in f]) for g in (
        "adafactor_grad", "adafactor_row", "adafactor_col", "adafactor_rsqrt_row", "adafactor_rsqrt_col")]
    if len(momentum_decays) == len(factored_decays):
        groups.append(("adafactor_momentum", [f"adafactor_momentum_{d}" for d in f]))
    return groups


def _feature_index(names, momentum_decays, factored_decays) -> dict[str, tuple[str, int]]:
    """Each of ``names`` as (group, index of its decay within the group)."""
    where = {}
    for group, members in _feature_groups(momentum_decays, factored_decays):
        for i, name in enumerate(members):
            where[name] = (group, i)
    unknown = [n for n in names if n not in where]
    if unknown:
        raise ValueError(f"features: unknown feature(s) {unknown}; known: {list(where)}")
    return where


def _rsqrt(x: jax.Array, eps: float, eps_root: float) -> jax.Array:
    """1 / (sqrt(x + eps_root) + eps): the reciprocal square root of a second-moment estimate."""
    return 1.0 / (jnp.sqrt(x + eps_root) + eps)


def tensor_features(names: Sequence[str], p: jax.Array, g: jax.Array, momentum: jax.Array,
                    second: jax.Array, factored: tuple, count: jax.Array, *,
                    momentum_decays: Sequence[float] = MOMENTUM_DECAYS,
                    second_moment_decay: float = SECOND_MOMENT_DECAY,
                    factored_decays: Sequence[float] = FACTORED_DECAYS,
                    eps: float = 1e-8, eps_root: float = 1e-30,
                    row_mean: jax.Array | None = None) -> jax.Array:
    """The named features of one tensor, stacked on a new leading axis: shape (len(names), *p.shape).

    Args:
      names: features to compute, a subset of ``feature_names(momentum_decays, factored_decays)``.
      p, g: the parameter and its gradient.
      momentum, second, factored: this tensor's accumulators after folding in ``g``.
      count: updates applied including this one (>= 1), for bias correction.
      eps: added to square roots in denominators (Adam's epsilon).
      eps_root: added under square roots, which keeps their derivatives finite where a gradient is
        exactly zero (meta-gradients through dead units); far below float32 resolution of any
        non-zero second moment.
      row_mean: for tensors of rank >= 2, the mean of each row accumulator over its last axis
        (shape (num_factored, *shape[:-2])), when ``p`` and ``g`` are a block of rows of a larger
        tensor; ``None`` computes it from ``factored``.

    Returns:
      float32 features.
    """
    where = _feature_index(names, momentum_decays, factored_decays)
    dtype = momentum.dtype
    p = p.astype(dtype)
    g = g.astype(dtype)
    t = jnp.asarray(count, dtype)
    if not names:
        return jnp.zeros((0,) + g.shape, jnp.float32)

    # Every feature is its own array expression (stacked at the end): XLA fuses these into tight
    # elementwise loops, where stacking whole groups and concatenating them made it materialise
    # every broadcast and branch per element (figures: docs/PERFORMANCE.md, "features one array each").
    rsqrt = functools.partial(_rsqrt, eps=eps, eps_root=eps_root)

    def bias_correction(decay):
        return 1.0 / (1 - jnp.asarray(decay, dtype) ** t)

    cache = {}

    def once(key, fn):
        if key not in cache:
            cache[key] = fn()
        return cache[key]

    second_hat = lambda: once("second_hat", lambda: second * bias_correction(second_moment_decay))
    rsqrt_second = lambda: once("rsqrt_second", lambda: rsqrt(second_hat()))

    if g.ndim >= 2:
        row, col = factored
        row_b = lambda i: row[i][..., None]                           # (..., rows, 1)
        col_b = lambda i: jnp.expand_dims(col[i], -2)                 # (..., 1, cols)
        inv_mean = lambda: once("inv_mean", lambda: 1.0 / (jnp.mean(row, axis=-1) if row_mean is None
                                                            else row_mean))
        v_fac = lambda i: row_b(i) * (col_b(i) * inv_mean()[i][..., None, None])
    else:
        (full,) = factored
        row_b = col_b = v_fac = lambda i: full[i]
    rsqrt_fac = lambda i: once(("rsqrt_fac", i), lambda: rsqrt(v_fac(i)))

    def feature(group, i):
        if group == "param":
            return p
        if group == "grad":
            return g
        if group == "momentum":
            return momentum[i]
        if group == "rms":
            return jnp.sqrt(second_hat() + eps_root)
        if group == "rsqrt_second_moment":
            return rsqrt_second()
        if group == "momentum_over_rms":
            return momentum[i] * (bias_correction(momentum_decays[i]) * rsqrt_second())
        if group == "adafactor_grad":
            return g * rsqrt_fac(i)
        if group == "adafactor_momentum":
            return momentum[i] * rsqrt_fac(i)
        if group == "adafactor_row":
            return jnp.broadcast_to(row_b(i), g.shape)
        if group == "adafactor_col":
            return jnp.broadcast_to(col_b(i), g.shape)
        if group == "adafactor_rsqrt_row":
            return jnp.broadcast_to(rsqrt(row_b(i)), g.shape)
        return jnp.broadcast_to(rsqrt(col_b(i)), g.shape)

    return jnp.stack([feature(*where[name]).astype(jnp.float32) for name in names])


RANK1_GROUPS = {"adafactor_row": "row", "adafactor_rsqrt_row": "row",
                "adafactor_col": "col", "adafactor_rsqrt_col": "col"}


def feature_axis(name: str) -> str:
    """"row" or "col" for features that are constant along a matrix's columns or rows (they are
    broadcasts of the factored accumulators), "param" for features that vary entry by entry."""
    for group, axis in RANK1_GROUPS.items():
        if name.startswith(group + "_"):
            return axis
    return "param"


def factored_vector_features(names: Sequence[str], factored: tuple,
                             factored_decays: Sequence[float] = FACTORED_DECAYS,
                             eps: float = 1e-8, eps_root: float = 1e-30) -> jax.Array:
    """Row or column features of a matrix before broadcasting, stacked: (len(names), length).

    ``names`` are all "row" features (``adafactor_row_d``, ``adafactor_rsqrt_row_d``) or all "col"
    features; entry i of a row feature is the feature's value on every entry of row i. Only for
    rank-2 tensors.
    """
    row, col = factored
    decays = [_decay_name(d) for d in factored_decays]
    out = []
    for name in names:
        group, _, decay = name.rpartition("_")
        vec = (row if group.endswith("row") else col)[decays.index(decay)]
        out.append(_rsqrt(vec, eps, eps_root) if "rsqrt" in group else vec)
    return jnp.stack(out).astype(jnp.float32)


def feature_inv_rms(x: jax.Array, eps: float = 1e-30) -> jax.Array:
    """1 / RMS of every feature (leading axis) over the rest of ``x``: shape (num_features,)."""
    axes = tuple(range(1, x.ndim))
    return jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=axes) + eps)


def normalize_features(x: jax.Array, eps: float = 1e-30) -> jax.Array:
    """Divides every feature (leading axis) by its root-mean-square over the tensor, so it is Θ(1)
    whatever the tensor's size and scale.

    ``eps`` only guards all-zero features: second-moment accumulators of small gradients are
    themselves tiny (1e-12 and below), and a larger epsilon would stop normalising them.
    """
    return x * feature_inv_rms(x, eps).reshape((-1,) + (1,) * (x.ndim - 1))
