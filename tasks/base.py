"""Task and TaskFamily: the inner problems learned optimizers are trained and evaluated on.

A ``Task`` is one concrete inner problem (a model, its data, its loss) with static shapes; it is
hashable, so it can be a static argument of ``jax.jit``, and all its methods are pure and jittable.
A ``TaskFamily`` is a distribution over task configs: ``sample(key)`` draws a config and
``task(config)`` builds the Task. Configs differing only in their ``seed`` share shapes, so their
tasks can be vmapped; ``TaskFamily.shape_key(config)`` says which configs may be batched together.

References:
  Metz et al., "Practical tradeoffs between memory, compute, and performance in learned optimizers",
  CoLLAs 2022 (task families and loss normalisation in learned_optimization).
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any

import jax

from metaopt.mup import ParamMeta  # noqa: F401  (re-exported for task authors)

__all__ = ["ParamMeta", "Task", "TaskFamily"]

PyTree = Any


class Task(abc.ABC):
    """One inner problem. Subclasses are frozen dataclasses holding a ``config``.

    Implements ``metaopt.task_protocol.InnerTask``.
    """

    config: Any

    @abc.abstractmethod
    def init(self, key: jax.Array) -> PyTree:
        """Fresh parameters."""

    @abc.abstractmethod
    def batch(self, key: jax.Array, step: jax.Array) -> PyTree:
        """A training batch; jittable, ``step`` may be traced."""

    @abc.abstractmethod
    def loss(self, params: PyTree, batch: PyTree) -> jax.Array:
        """Mean training loss of ``params`` on ``batch``."""

    @abc.abstractmethod
    def eval_loss(self, params: PyTree) -> jax.Array:
        """Loss on the held-out split (deterministic)."""

    @abc.abstractmethod
    def normalize_loss(self, loss: jax.Array) -> jax.Array:
        """The loss on the task-independent meta-loss scale (finite and bounded)."""

    @property
    @abc.abstractmethod
    def param_meta(self) -> PyTree:
        """Pytree of ``ParamMeta`` matching ``init``'s output."""

    @property
    def num_params(self) -> int:
        shapes = jax.eval_shape(self.init, jax.random.key(0))
        return int(sum(x.size for x in jax.tree.leaves(shapes)))

    @property
    @abc.abstractmethod
    def flops_per_step(self) -> float:
        """Estimated FLOPs of one training step (forward + backward, about 3x forward)."""


class TaskFamily(abc.ABC):
    """A distribution over task configs, and the way to build a Task from one."""

    name: str

    @abc.abstractmethod
    def sample(self, key: jax.Array) -> Any:
        """Draws a config (a frozen dataclass with a ``width_multiplier`` field where it applies)."""

    @abc.abstractmethod
    def task(self, config: Any) -> Task:
        """Builds the Task of ``config``; raises ``ValueError`` naming the field for a bad config."""

    def make_config(self, **fields: Any) -> Any:
        """The family's default config with ``fields`` replaced.

        Raises:
          ValueError: a field is unknown to the config class, or a value is out of range (the message
            names the field).
        """
        raise NotImplementedError(f"{type(self).__name__} does not define make_config")

    def shape_key(self, config: Any) -> Any:
        """Configs with equal shape keys build tasks with identical shapes (vmappable together)."""
        return dataclasses.replace(config, seed=0) if hasattr(config, "seed") else config
