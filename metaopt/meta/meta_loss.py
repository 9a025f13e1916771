"""The meta-loss: what a learned optimizer is meta-trained to make small.

The meta-loss of a stretch of inner training is the task's normalised loss (``task.normalize_loss``,
which puts every task on one scale) of the training loss, of the held-out loss (``task.eval_loss``)
or of a weighted mixture of the two ("mixed": ``eval_weight`` times the held-out term plus the rest
times the training term, each on the chosen scale), averaged over the steps of the stretch or taken
at its end. A training-loss meta-objective rewards memorising a small training set, a held-out one
rewards stopping short of the training loss a tuned optimizer reaches; the mixture asks for both.
A diverged inner run (a NaN or inf loss or parameter) gets the worst value, so that the meta-loss
stays bounded and finite; the estimators additionally drop its contribution to the meta-gradient.

The normalised loss is used as it is (``scale="linear"``) or on a log scale (``scale="log"``:
``1 + log10(n) / LOG_DECADES``, 1 at chance level and 0 once the loss is ``LOG_DECADES`` orders of
magnitude below it). On the linear scale a task that is nearly solved contributes nothing, so a
learned optimizer may fit it ten times worse at no cost; the log scale weighs a halving of the loss
the same at every level, as a geometric mean of loss ratios does.

References:
  Metz et al., "Practical tradeoffs between memory, compute, and performance in learned optimizers",
  CoLLAs 2022 (normalised, clipped meta-losses; NaN handling in learned_optimization).
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp

from metaopt import validation
from metaopt.task_protocol import InnerTask

__all__ = [
    "META_LOSSES", "REDUCTIONS", "DEFAULT_MAX_META_LOSS", "worst_meta_loss", "normalized",
    "tree_all_finite", "check_meta_loss_options", "SCALES", "LOG_DECADES", "scaled", "uses_train",
    "uses_eval",
]

PyTree = Any

META_LOSSES = ("train", "eval", "mixed")
REDUCTIONS = ("mean", "final")
SCALES = ("linear", "log")

# The span of the log scale: normalised losses below 10^-LOG_DECADES count as solved.
LOG_DECADES = 6.0

# Used as the worst meta-loss when the task's normaliser does not bound the loss itself.
DEFAULT_MAX_META_LOSS = 100.0


def worst_meta_loss(task: InnerTask, max_meta_loss: Optional[float] = None) -> jax.Array:
    """The meta-loss a diverged run gets: the bound of the task's normaliser, or ``max_meta_loss``.

    A normaliser that clips (as learned_optimization's do) maps an infinite loss to its upper
    bound; that bound is the worst value. Otherwise ``max_meta_loss`` (default
    ``DEFAULT_MAX_META_LOSS``) is used. When both exist, the smaller one.

    Args:
      task: the inner task.
      max_meta_loss: optional cap on the meta-loss.

    Returns:
      A finite float32 scalar.
    """
    bound = jnp.asarray(task.normalize_loss(jnp.asarray(jnp.inf, jnp.float32)), jnp.float32)
    cap = jnp.asarray(DEFAULT_MAX_META_LOSS if max_meta_loss is None else max_meta_loss, jnp.float32)
    finite = jnp.isfinite(bound)
    if max_meta_loss is None:
        return jnp.where(finite, bound, cap)
    return jnp.where(finite, jnp.minimum(bound, cap), cap)


def normalized(task: InnerTask, losses: jax.Array, worst: jax.Array) -> jax.Array:
    """Normalises raw losses and bounds them: non-finite values and values above ``worst`` become ``worst``."""
    values = jnp.asarray(task.normalize_loss(losses), jnp.float32)
    values = jnp.where(jnp.isfinite(values), values, worst)
    return jnp.minimum(values, worst)


def scaled(values: jax.Array, scale: str, worst: jax.Array) -> jax.Array:
    """Normalised losses (bounded by ``worst``) on the ``scale`` the meta-loss averages.

    "linear" returns them unchanged; "log" maps ``n`` to ``1 + log10(max(n, 10^-LOG_DECADES)) /
    LOG_DECADES`` and keeps ``worst`` (a diverged run) at ``worst``, above every finite value.
    """
    if scale == "linear":
        return values
    floor = 10.0 ** -LOG_DECADES
    logged = 1.0 + jnp.log10(jnp.maximum(values, floor)) / LOG_DECADES
    return jnp.where(values >= worst, worst, jnp.minimum(logged, worst))


def uses_train(meta_loss: str) -> bool:
    """Whether the meta-loss ``meta_loss`` has a training-loss term."""
    return meta_loss in ("train", "mixed")


def uses_eval(meta_loss: str) -> bool:
    """Whether the meta-loss ``meta_loss`` has a held-out-loss term."""
    return meta_loss in ("eval", "mixed")


def tree_all_finite(tree: PyTree) -> jax.Array:
    """True when every floating-point leaf of ``tree`` is finite."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    if not leaves:
        return jnp.asarray(True)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def check_meta_loss_options(meta_loss: str, reduction: str, *, reduction_field: str = "meta_loss_reduction",
                            scale: str = "linear", eval_weight: float = 0.5) -> None:
    """Raises ``ValueError`` for an unknown meta-loss kind, reduction or scale, or a bad mixture weight."""
    validation.check_number(eval_weight, "meta_loss_eval_weight", low=0.0, high=1.0, low_open=True, high_open=True)
    if meta_loss not in META_LOSSES:
        raise ValueError(f"meta_loss: got {meta_loss!r}, expected one of {META_LOSSES}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"{reduction_field}: got {reduction!r}, expected one of {REDUCTIONS}")
    if scale not in SCALES:
        raise ValueError(f"meta_loss_scale: got {scale!r}, expected one of {SCALES}")
