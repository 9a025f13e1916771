"""The interface of a meta-gradient estimator over truncated inner runs.

A ``GradientEstimator`` owns the population of inner runs of one task group and, given theta,
advances them by one truncation and returns an estimate of the meta-gradient d(meta-loss)/d(theta).
The outer update (an optax optimizer on theta) lives in ``metaopt.meta.trainer``. Estimators are
pure: ``init`` and ``estimate`` are jittable functions of their arguments.

References:
  Vicol et al., "Unbiased Gradient Estimation in Unrolled Computation Graphs with Persistent
  Evolution Strategies", ICML 2021 (the truncated estimators compared here).
"""

from __future__ import annotations

import abc
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from metaopt.learned_optimizer import LearnedOptimizer
from metaopt.meta import meta_loss as meta_loss_lib
from metaopt.meta import truncation
from metaopt.task_protocol import InnerTask

__all__ = ["EstimatorState", "GradientEstimator", "zero_nonfinite", "masked_mean"]

PyTree = Any


class EstimatorState(NamedTuple):
    """State of a truncated estimator for one task group.

    Attributes:
      runs: the population's inner runs (``truncation.RunState``, leading axis: members).
      accumulator: per perturbation pair, the sum of the perturbations applied since the pair's run
        started (PES); ``None`` for estimators without one.
    """

    runs: truncation.RunState
    accumulator: Any


class GradientEstimator(abc.ABC):
    """Base class: a meta-gradient estimate from one truncation of a population of inner runs.

    Args:
      lopt: the learned optimizer.
      config: ``truncation.TruncationConfig``.
      mesh: optional 1-D ``jax.sharding.Mesh`` (axis "pop") to split the population over.
    """

    name: str = ""

    def __init__(self, lopt: LearnedOptimizer, config: truncation.TruncationConfig, mesh=None):
        self.lopt = lopt
        self.config = config
        self.mesh = mesh

    @property
    @abc.abstractmethod
    def members_per_task(self) -> int:
        """Inner runs per task slot."""

    @property
    def population_size(self) -> int:
        """Inner runs per task group."""
        return self.config.num_tasks * self.members_per_task

    @property
    def inner_steps_per_estimate(self) -> int:
        """Inner steps taken by one ``estimate`` call, summed over the population."""
        return self.population_size * self.config.truncation_length

    def worst(self, task: InnerTask) -> jax.Array:
        """The meta-loss of a diverged run on ``task``."""
        return meta_loss_lib.worst_meta_loss(task, self.config.max_meta_loss)

    @abc.abstractmethod
    def init(self, key: jax.Array, theta: PyTree, task: InnerTask) -> EstimatorState:
        """The population's first (staggered) inner runs on ``task``."""

    @abc.abstractmethod
    def estimate(self, theta: PyTree, state: EstimatorState, key: jax.Array, task: InnerTask
                 ) -> tuple[PyTree, EstimatorState, dict]:
        """Advances the population by one truncation.

        Returns:
          (grad, state, metrics): the meta-gradient estimate (structure of theta, finite), the new
          state, and a dict of scalar metrics including "meta_loss" and "inner_steps".
        """

    def _metrics(self, meta_losses: jax.Array, diverged: jax.Array, restarted: jax.Array) -> dict:
        return {
            "meta_loss": jnp.mean(meta_losses),
            "inner_steps": jnp.asarray(self.inner_steps_per_estimate, jnp.int32),
            "diverged": jnp.mean(diverged.astype(jnp.float32)),
            "restarts": jnp.sum(restarted.astype(jnp.int32)) // self.members_per_task,
        }


def zero_nonfinite(tree: PyTree) -> PyTree:
    """Replaces NaN and inf entries by zero."""
    return jax.tree.map(lambda x: jnp.where(jnp.isfinite(x), x, jnp.zeros_like(x)), tree)


def masked_mean(per_member: PyTree, keep: jax.Array) -> PyTree:
    """Mean over the leading axis of the members with ``keep``; members left out count zero.

    Divides by the number kept (at least one) so a diverged member does not shrink the estimate.
    """
    count = jnp.maximum(jnp.sum(keep.astype(jnp.float32)), 1.0)

    def reduce(x):
        k = jnp.reshape(keep, keep.shape + (1,) * (x.ndim - 1))
        return jnp.sum(jnp.where(k, x, jnp.zeros_like(x)), axis=0) / count

    return jax.tree.map(reduce, per_member)
