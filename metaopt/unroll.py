"""Inner training runs as one ``lax.scan``: the building block of meta-training and evaluation.

An inner step draws a batch, takes the loss and gradient, and applies the optimizer; a run of
``num_steps`` of them is a single ``lax.scan``, so a whole run (or a truncation of one) is traced once
and can be vmapped over tasks, seeds and population members.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from metaopt.task_protocol import InnerTask

__all__ = ["InnerState", "init_inner_state", "inner_step", "unroll", "train"]

PyTree = Any


class InnerState(NamedTuple):
    """Where one inner run stands: parameters, optimizer state, the step reached, the data key."""

    params: PyTree
    opt_state: PyTree
    step: jax.Array
    key: jax.Array


def init_inner_state(task: InnerTask, tx: optax.GradientTransformation, key: jax.Array) -> InnerState:
    """A fresh inner run: new parameters from ``key`` and a fresh optimizer state."""
    init_key, data_key = jax.random.split(key)
    params = task.init(init_key)
    return InnerState(params, tx.init(params), jnp.zeros([], jnp.int32), data_key)


def inner_step(task: InnerTask, tx: optax.GradientTransformationExtraArgs, state: InnerState
               ) -> tuple[InnerState, jax.Array]:
    """One training step; returns the new state and the training loss before the step."""
    batch = task.batch(jax.random.fold_in(state.key, state.step), state.step)
    loss, grads = jax.value_and_grad(task.loss)(state.params, batch)
    updates, opt_state = tx.update(grads, state.opt_state, state.params, loss=loss)
    params = optax.apply_updates(state.params, updates)
    return InnerState(params, opt_state, state.step + 1, state.key), loss


def unroll(task: InnerTask, tx: optax.GradientTransformationExtraArgs, state: InnerState,
           num_steps: int) -> tuple[InnerState, jax.Array]:
    """Runs ``num_steps`` (static) inner steps in one ``lax.scan``.

    Returns:
      The final state and the per-step training losses, shape ``(num_steps,)``.
    """

    def body(carry, _):
        return inner_step(task, tx, carry)

    return jax.lax.scan(body, state, None, length=num_steps)


def train(task: InnerTask, tx: optax.GradientTransformationExtraArgs, key: jax.Array,
          num_steps: int) -> tuple[PyTree, jax.Array]:
    """A whole inner run from scratch; returns the final parameters and the training-loss curve."""
    state = init_inner_state(task, tx, key)
    state, losses = unroll(task, tx, state, num_steps)
    return state.params, losses
