"""Vmapped inner runs: every run of an optimizer on a cell is one jitted program.

A batch of runs (learning rates x data/initialisation keys) of one optimizer on one task is
``jax.vmap`` of ``metaopt.unroll.train`` (one ``lax.scan`` over the inner steps) followed by the held-out
loss, under one ``jax.jit``. The task and the optimizer's static description are static arguments, so
the compiled program is reused for every batch of the same size on the same cell (the tuning grid
and its extensions share one, the reported seeds another). The learning rate is traced, so a grid of
learning rates is one program; the learned optimizer's theta is an argument, not a constant.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from metaopt import unroll

__all__ = [
    "BaselineSpec", "LearnedSpec", "hashable_hyper", "make_transform", "run_batch", "seed_keys", "run",
    "is_out_of_memory", "available_bytes",
]

PyTree = Any


class BaselineSpec(NamedTuple):
    """A hand-designed baseline, hashable (a static argument of ``jax.jit``).

    Attributes:
      name: a ``metaopt.baselines`` name.
      schedule: learning-rate schedule name ("cosine" or "linear").
      warmup_steps: linear warm-up steps.
      hyper: sorted ``(key, value)`` pairs of the baseline's own hyperparameters.
    """

    name: str
    schedule: str
    warmup_steps: int
    hyper: tuple = ()


class LearnedSpec(NamedTuple):
    """The learned optimizer under evaluation (its theta is passed separately)."""

    lopt: Any


def hashable_hyper(hyper: dict) -> tuple:
    """``hyper`` as sorted pairs with lists turned into tuples (so a spec can be hashed)."""
    def freeze(v):
        if isinstance(v, (list, tuple)):
            return tuple(freeze(x) for x in v)
        if isinstance(v, dict):
            return tuple(sorted((k, freeze(x)) for k, x in v.items()))
        return v
    return tuple(sorted((str(k), freeze(v)) for k, v in hyper.items()))


def make_transform(spec, task, theta: PyTree, learning_rate: jax.Array, num_steps: int):
    """The optax transformation of ``spec`` on ``task`` (µP metadata from ``task.param_meta``)."""
    if isinstance(spec, LearnedSpec):
        return spec.lopt.transform(theta, num_steps, param_meta=task.param_meta)
    from metaopt.baselines import get_baseline

    factory = get_baseline(spec.name)
    return factory(learning_rate, num_steps, schedule=spec.schedule, warmup_steps=spec.warmup_steps,
                   param_meta=task.param_meta, **dict(spec.hyper))


@functools.partial(jax.jit, static_argnames=("task", "spec", "num_steps"))
def run_batch(task, spec, num_steps: int, theta: PyTree, learning_rates: jax.Array, keys: jax.Array
              ) -> tuple[jax.Array, jax.Array]:
    """Runs a batch of whole inner runs in one program.

    Args:
      task: the inner task (hashable, static).
      spec: ``BaselineSpec`` or ``LearnedSpec`` (static).
      num_steps: the inner horizon (static).
      theta: the learned optimizer's meta-parameters (ignored by baselines; pass ``None``).
      learning_rates: (batch,) peak learning rates (ignored by the learned optimizer).
      keys: (batch,) PRNG keys; each seeds the initialisation and the data order of one run.

    Returns:
      Training losses (batch, num_steps) (entry t: the loss after t updates) and the held-out loss
      of the final parameters (batch,).
    """

    def one(learning_rate, key):
        tx = make_transform(spec, task, theta, learning_rate, num_steps)
        params, losses = unroll.train(task, tx, key, num_steps)
        return losses, task.eval_loss(params)

    return jax.vmap(one)(learning_rates, keys)


def seed_keys(seeds: list[int]) -> jax.Array:
    """One PRNG key per seed value."""
    return jax.vmap(jax.random.key)(jnp.asarray(seeds, jnp.uint32))


def run(task, spec, num_steps: int, theta: PyTree, learning_rates, keys) -> tuple[np.ndarray, np.ndarray]:
    """``run_batch`` with host (NumPy float64) results."""
    learning_rates = jnp.asarray(np.asarray(learning_rates, np.float32))
    losses, evals = run_batch(task, spec, num_steps, theta, learning_rates, keys)
    return np.asarray(jax.device_get(losses), np.float64), np.asarray(jax.device_get(evals), np.float64)


def is_out_of_memory(error: BaseException) -> bool:
    """Whether a runtime error is the device running out of memory."""
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or isinstance(error, MemoryError)


def available_bytes() -> Optional[int]:
    """Free memory of the default device: the accelerator's limit, or the host's available RAM."""
    try:
        device = jax.devices()[0]
        if device.platform != "cpu":
            mem = device.memory_stats() or {}
            if "bytes_limit" in mem:
                return int(mem["bytes_limit"]) - int(mem.get("bytes_in_use", 0))
        import os

        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError, RuntimeError):
        return None

