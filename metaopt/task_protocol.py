"""The small protocol through which metaopt sees an inner task.

metaopt never imports ``metaopt.tasks``; anything with these methods can be trained by a learned
optimizer, meta-trained on and evaluated. ``metaopt.tasks.Task`` is the reference implementation.
All methods are pure and jittable; a task object is hashable so it can be a static argument of
``jax.jit``.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import jax

__all__ = ["InnerTask"]

PyTree = Any


@runtime_checkable
class InnerTask(Protocol):
    """An inner optimisation problem.

    Methods:
      init(key) -> params: fresh parameters.
      batch(key, step) -> batch: a training batch; ``step`` may be a traced integer, so batches can be
        drawn inside ``lax.scan``.
      loss(params, batch) -> scalar: mean training loss on a batch.
      eval_loss(params) -> scalar: loss on the task's held-out data (deterministic).
      normalize_loss(loss) -> scalar: maps a loss to the task-independent meta-loss scale
        (bounded and finite for finite input; see ``metaopt.tasks.normalizers``).
      param_meta: pytree of ``metaopt.mup.ParamMeta`` with the structure of ``params``.
      num_params: number of scalar parameters.
      flops_per_step: estimated FLOPs of one training step (forward and backward).
    """

    def init(self, key: jax.Array) -> PyTree: ...

    def batch(self, key: jax.Array, step: jax.Array) -> PyTree: ...

    def loss(self, params: PyTree, batch: PyTree) -> jax.Array: ...

    def eval_loss(self, params: PyTree) -> jax.Array: ...

    def normalize_loss(self, loss: jax.Array) -> jax.Array: ...

    @property
    def param_meta(self) -> PyTree: ...

    @property
    def num_params(self) -> int: ...

    @property
    def flops_per_step(self) -> float: ...
