"""One stretch of an inner run and its meta-loss: the unroll every estimator differentiates or scores.

A stretch is ``length`` inner steps in one ``lax.scan``; its meta-loss is the task's normalised loss
(on a linear or log scale) averaged over the stretch or taken at its end, and a diverged stretch
gets the worst meta-loss.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp

from metaopt.meta import meta_loss as meta_loss_lib
from metaopt.population import tree_where
from metaopt.task_protocol import InnerTask
from metaopt.unroll import InnerState, inner_step

__all__ = ["run_segment"]

PyTree = Any


def run_segment(task: InnerTask, tx, inner: InnerState, length: int, *, meta_loss: str, reduction: str,
                worst: jax.Array, remat: bool = False, horizon: Optional[jax.Array] = None,
                scale: str = "linear") -> tuple[InnerState, jax.Array, jax.Array]:
    """Trains ``length`` inner steps (one ``lax.scan``) and takes the meta-loss of the stretch.

    With ``reduction="mean"`` the meta-loss averages the normalised loss *after* each step (for
    "train": the next step's training loss, which costs one extra forward pass for the last step),
    so every term depends on this stretch's updates; with "final" it is the loss at the end.

    Args:
      task: the inner task.
      tx: the inner optimizer (an optax transformation taking ``loss=``).
      inner: the starting inner state.
      length: number of steps (static).
      meta_loss: "train" or "eval".
      reduction: "mean" or "final".
      worst: the meta-loss of a diverged run.
      remat: rematerialise each step in the backward pass.
      horizon: when given, steps at or beyond it leave the state unchanged and are left out of the
        mean (a whole run of traced length inside a scan of static length).
      scale: "linear" or "log", the scale of the normalised losses that are averaged
        (``meta_loss.scaled``).

    Returns:
      The final inner state, the meta-loss (``worst`` if the stretch diverged) and whether it diverged.
    """
    eval_each_step = meta_loss == "eval" and reduction == "mean"

    def body(state, _):
        new_state, loss = inner_step(task, tx, state)
        if horizon is not None:
            new_state = tree_where(state.step < horizon, new_state, state)
        value = task.eval_loss(new_state.params) if eval_each_step else loss
        return new_state, value

    if remat:
        body = jax.checkpoint(body)
    start = inner.step
    final, values = jax.lax.scan(body, inner, None, length=length)

    def final_train_loss():
        batch = task.batch(jax.random.fold_in(final.key, final.step), final.step)
        return task.loss(final.params, batch)

    if reduction == "mean":
        if meta_loss == "train":
            raw = jnp.concatenate([values[1:], final_train_loss()[None]])
        else:
            raw = values
        valid = jnp.arange(length) < (length if horizon is None else jnp.clip(horizon - start, 1, length))
    else:
        raw = (final_train_loss() if meta_loss == "train" else task.eval_loss(final.params))[None]
        valid = jnp.ones((1,), bool)
    values = meta_loss_lib.scaled(meta_loss_lib.normalized(task, raw, worst), scale, worst)
    value = jnp.sum(jnp.where(valid, values, 0.0)) / jnp.sum(valid)
    diverged = jnp.any(valid & ~jnp.isfinite(raw)) | ~meta_loss_lib.tree_all_finite(final.params)
    return final, jnp.where(diverged, worst, value), diverged
