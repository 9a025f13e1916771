"""Inner runs of one optimizer on one cell: one compiled program, shared by the grid and the seeds.

A batch of runs (learning rates x data/initialisation keys) of one optimizer on one task is
``metaopt.unroll.train`` (one ``lax.scan`` over the inner steps) followed by the held-out loss, for
every run of the batch, under one ``jax.jit``. The task and the optimizer's static description are
static arguments; the learning rate is traced (a grid of learning rates is one program) and the
learned optimizer's theta is an argument, not a constant.

Every batch of a cell has the same number of runs, its *lanes* (``CellRunner``; the number of
reported seeds by default): the reported seeds are one batch, a tuning grid of 9 learning rates is
three batches of 3 (the last batch padded when the grid does not divide evenly), a grid extension
more of the same. So each optimizer compiles once per cell shape, and a cell whose task and horizon
equal another's reuses that cell's programs. Batches are dispatched before their results are read,
so the device never waits on the host between them.

On CPU the runs of a batch execute one after another (``lax.map``) rather than vmapped: vmapping
turns every small matmul of the model and of the learned optimizer's per-parameter network into a
batched matmul whose operands overflow the caches (1.4-1.8x slower for the learned optimizer on
width-128 and width-256 MLPs, the same for Adam). Elsewhere (GPU, TPU) the batch is vmapped.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from metaopt import unroll
from metaopt.population import map_population

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

    # One run at a time on CPU, vmapped on accelerators (``Execution``'s choice for the backend).
    return map_population(one, learning_rates, keys)


def seed_keys(seeds: list[int]) -> jax.Array:
    """One PRNG key per seed value."""
    return jax.vmap(jax.random.key)(jnp.asarray(seeds, jnp.uint32))


def run(task, spec, num_steps: int, theta: PyTree, learning_rates, keys) -> tuple[np.ndarray, np.ndarray]:
    """``run_batch`` with host (NumPy float64) results."""
    learning_rates = jnp.asarray(np.asarray(learning_rates, np.float32))
    losses, evals = run_batch(task, spec, num_steps, theta, learning_rates, keys)
    return np.asarray(jax.device_get(losses), np.float64), np.asarray(jax.device_get(evals), np.float64)


# Compiled programs by (task, optimizer spec, horizon, lanes), oldest first: cells of the same task
# and horizon (and tests that evaluate the same tiny cell again) reuse them.
_PROGRAMS: dict = {}
_MAX_PROGRAMS = 64


class CellRunner:
    """Runs batches of inner runs on one cell, ``lanes`` runs per compiled call.

    Args:
      task: the cell's task.
      num_steps: the cell's horizon.
      lanes: runs per call (every call of every optimizer on this cell has this many).
      on_compile: called with (optimizer name, seconds) after each program is compiled (or loaded
        from the persistent cache), before it runs.
      before_compile: called with the optimizer name just before a program is compiled.
      before_run: called with a description of the runs (``label`` or the optimizer name) just
        before they are dispatched.

    Attributes:
      compile_seconds: optimizer name -> seconds spent compiling its program for this cell.
      run_seconds: seconds spent running (dispatch to results), compilation excluded.
      run_seconds_by_optimizer: the same by optimizer name.
      inner_steps: inner steps run (padding lanes excluded).
    """

    def __init__(self, task, num_steps: int, lanes: int, *,
                 on_compile: Optional[Callable[[str, float], None]] = None,
                 before_compile: Optional[Callable[[str], None]] = None,
                 before_run: Optional[Callable[[str], None]] = None):
        if lanes < 1:
            raise ValueError(f"lanes: expected a positive integer, got {lanes}")
        self.task = task
        self.num_steps = int(num_steps)
        self.lanes = int(lanes)
        self._on_compile = on_compile or (lambda name, seconds: None)
        self._before_compile = before_compile or (lambda name: None)
        self._before_run = before_run or (lambda label: None)
        self.compile_seconds: dict[str, float] = {}
        self.run_seconds = 0.0
        self.run_seconds_by_optimizer: dict[str, float] = {}
        self.inner_steps = 0

    def _program(self, name: str, spec, theta: PyTree, lrs: jax.Array, keys: jax.Array):
        key = (self.task, spec, self.num_steps, self.lanes)
        if key not in _PROGRAMS:
            self._before_compile(name)
            tic = time.perf_counter()
            _PROGRAMS[key] = run_batch.lower(self.task, spec, self.num_steps, theta, lrs, keys).compile()
            seconds = time.perf_counter() - tic
            self.compile_seconds[name] = self.compile_seconds.get(name, 0.0) + seconds
            self._on_compile(name, seconds)
            while len(_PROGRAMS) > _MAX_PROGRAMS:
                _PROGRAMS.pop(next(iter(_PROGRAMS)))
        return _PROGRAMS[key]

    def run(self, name: str, spec, theta: PyTree, learning_rates, keys: jax.Array,
            on_batch: Optional[Callable[[int], None]] = None, label: Optional[str] = None
            ) -> tuple[np.ndarray, np.ndarray]:
        """Every run of ``learning_rates`` x ``keys`` (same length), in calls of ``lanes`` runs.

        Args:
          name: the optimizer's name (for compile reports).
          spec: ``BaselineSpec`` or ``LearnedSpec``.
          theta: the learned optimizer's theta, or ``None``.
          learning_rates: (runs,) peak learning rates.
          keys: (runs,) PRNG keys.
          on_batch: called with the number of real runs as each call's results arrive.
          label: what the runs are, for ``before_run`` (default: ``name``).

        Returns:
          Host float64 training losses (runs, num_steps) and held-out losses (runs,).
        """
        lrs = np.asarray(learning_rates, np.float32).reshape(-1)
        runs = len(lrs)
        if runs != keys.shape[0]:
            raise ValueError(f"keys: expected {runs} keys, got {keys.shape[0]}")
        num_calls = -(-runs // self.lanes)
        pad = num_calls * self.lanes - runs
        # Padding lanes repeat the last run; their results are dropped.
        lrs = np.concatenate([lrs, np.repeat(lrs[-1:], pad)])
        keys = jnp.concatenate([keys, jnp.repeat(keys[-1:], pad, axis=0)]) if pad else keys
        lrs_dev = jnp.asarray(lrs).reshape(num_calls, self.lanes)
        keys_dev = keys.reshape((num_calls, self.lanes) + keys.shape[1:])
        program = self._program(name, spec, theta, lrs_dev[0], keys_dev[0])
        self._before_run(label or name)
        tic = time.perf_counter()
        pending = [program(theta, lrs_dev[i], keys_dev[i]) for i in range(num_calls)]
        losses, evals = [], []
        for i, (batch_losses, batch_evals) in enumerate(pending):
            real = min(self.lanes, runs - i * self.lanes)
            losses.append(np.asarray(jax.device_get(batch_losses), np.float64)[:real])
            evals.append(np.asarray(jax.device_get(batch_evals), np.float64)[:real])
            if on_batch is not None:
                on_batch(real)
        elapsed = time.perf_counter() - tic
        self.run_seconds += elapsed
        self.run_seconds_by_optimizer[name] = self.run_seconds_by_optimizer.get(name, 0.0) + elapsed
        self.inner_steps += runs * self.num_steps
        return np.concatenate(losses), np.concatenate(evals)


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

