"""One stretch of an inner run and its meta-loss: the unroll every estimator differentiates or scores.

A stretch is ``length`` inner steps in one ``lax.scan``; its meta-loss is the task's normalised
training loss, held-out loss or a weighted mixture of the two (on a linear or log scale), averaged
over the stretch or taken at its end, and a diverged stretch gets the worst meta-loss.
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
                scale: str = "linear", eval_weight: float = 0.5) -> tuple[InnerState, jax.Array, jax.Array]:
    """Trains ``length`` inner steps (one ``lax.scan``) and takes the meta-loss of the stretch.

    With ``reduction="mean"`` the meta-loss averages the normalised loss *after* each step (for the
    training loss: the next step's, which costs one extra forward pass for the last step), so every
    term depends on this stretch's updates; with "final" it is the loss at the end.

    Args:
      task: the inner task.
      tx: the inner optimizer (an optax transformation taking ``loss=``).
      inner: the starting inner state.
      length: number of steps (static).
      meta_loss: "train", "eval" or "mixed".
      reduction: "mean" or "final".
      worst: the meta-loss of a diverged run.
      remat: rematerialise each step in the backward pass.
      horizon: when given, steps at or beyond it leave the state unchanged and are left out of the
        mean (a whole run of traced length inside a scan of static length).
      scale: "linear" or "log", the scale of the normalised losses that are averaged
        (``meta_loss.scaled``).
      eval_weight: the held-out term's weight in "mixed" (the training term's is ``1 - eval_weight``).

    Returns:
      The final inner state, the meta-loss (``worst`` if the stretch diverged) and whether it diverged.
    """
    with_train, with_eval = meta_loss_lib.uses_train(meta_loss), meta_loss_lib.uses_eval(meta_loss)
    eval_each_step = with_eval and reduction == "mean"

    def body(state, _):
        new_state, loss = inner_step(task, tx, state)
        if horizon is not None:
            new_state = tree_where(state.step < horizon, new_state, state)
        return new_state, (loss, task.eval_loss(new_state.params) if eval_each_step else None)

    if remat:
        body = jax.checkpoint(body)
    start = inner.step
    final, (train_values, eval_values) = jax.lax.scan(body, inner, None, length=length)

    def final_train_loss():
        batch = task.batch(jax.random.fold_in(final.key, final.step), final.step)
        return task.loss(final.params, batch)

    raws = []
    if reduction == "mean":
        valid = jnp.arange(length) < (length if horizon is None else jnp.clip(horizon - start, 1, length))
        if with_train:
            raws.append(jnp.concatenate([train_values[1:], final_train_loss()[None]]))
        if with_eval:
            raws.append(eval_values)
    else:
        valid = jnp.ones((1,), bool)
        if with_train:
            raws.append(final_train_loss()[None])
        if with_eval:
            raws.append(task.eval_loss(final.params)[None])
    weights = [1.0 - eval_weight, eval_weight] if meta_loss == "mixed" else [1.0]
    value, diverged = 0.0, ~meta_loss_lib.tree_all_finite(final.params)
    for weight, raw in zip(weights, raws):
        values = meta_loss_lib.scaled(meta_loss_lib.normalized(task, raw, worst), scale, worst)
        value = value + weight * (jnp.sum(jnp.where(valid, values, 0.0)) / jnp.sum(valid))
        diverged = diverged | jnp.any(valid & ~jnp.isfinite(raw))
    return final, jnp.where(diverged, worst, value), diverged
