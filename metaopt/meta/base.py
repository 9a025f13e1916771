"""The estimator contract, and the meta-gradient estimators over truncated inner runs.

An ``Estimator`` is one rule for an outer step of meta-training, gradient-based or evolutionary:
``init(key, theta, group_keys, tasks)`` gives theta, the outer state and one state per task group,
and ``step(theta, outer_state, group_state, key, task, count)`` returns their new values and a dict
of scalar metrics. Both are pure and jittable; the trainer (``metaopt.meta.trainer``) calls them
without knowing which estimator it holds.

A ``GradientEstimator`` owns the population of inner runs of one task group and, given theta,
advances them by one truncation and returns an estimate of the meta-gradient d(meta-loss)/d(theta)
(``estimate``); its ``step`` applies an optax outer optimizer to that estimate.

References:
  Vicol et al., "Unbiased Gradient Estimation in Unrolled Computation Graphs with Persistent
  Evolution Strategies", ICML 2021 (the truncated estimators compared here).
"""

from __future__ import annotations

import abc
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import optax

from metaopt import population
from metaopt.learned_optimizer import LearnedOptimizer
from metaopt.meta import meta_loss as meta_loss_lib
from metaopt.meta import truncation
from metaopt.task_protocol import InnerTask

__all__ = ["Estimator", "EstimatorState", "GradientEstimator", "zero_nonfinite", "masked_mean"]

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


class Estimator(abc.ABC):
    """The contract of every meta-training estimator.

    Attributes:
      name: the estimator's name in configs.
      lopt: the learned optimizer.
      config: the estimator's settings (a frozen dataclass).
      mesh: optional 1-D ``jax.sharding.Mesh`` (axis "pop") to split the population over.
      execution: how the population's members run on each device (``metaopt.population.Execution``).
    """

    name: str = ""

    def __init__(self, lopt: LearnedOptimizer, config: Any, mesh=None,
                 execution: population.Execution = population.Execution()):
        self.lopt = lopt
        self.config = config
        self.mesh = mesh
        self.execution = execution

    @property
    @abc.abstractmethod
    def num_steps(self) -> int:
        """The (longest) inner horizon theta is meta-trained for."""

    @property
    @abc.abstractmethod
    def population_sizes(self) -> dict[str, int]:
        """The sizes of the leading axes split over the mesh's devices, by what they count."""

    @property
    @abc.abstractmethod
    def inner_steps_per_step(self) -> tuple[int, str]:
        """The most inner steps one outer step takes, summed over the population, and the setting
        that gives the length of each run's stretch."""

    @abc.abstractmethod
    def init(self, key: jax.Array, theta: PyTree, group_keys: Sequence[jax.Array],
             tasks: Sequence[InnerTask]) -> tuple[PyTree, Any, tuple]:
        """The first (theta, outer state, per-group states); ``group_keys`` has one key per task."""

    @abc.abstractmethod
    def step(self, theta: PyTree, outer_state: Any, group_state: Any, key: jax.Array, task: InnerTask,
             count: jax.Array) -> tuple[PyTree, Any, Any, dict]:
        """One outer step on ``task`` (``count``: outer steps taken so far).

        Returns:
          (theta, outer_state, group_state, metrics): metrics is a dict of scalar arrays with at
          least "meta_loss", "inner_steps" and "diverged" (fraction of runs that diverged).
        """


class GradientEstimator(Estimator):
    """Base class: a meta-gradient estimate from one truncation of a population of inner runs,
    applied to theta by an optax outer optimizer.

    Args:
      lopt: the learned optimizer.
      config: ``truncation.TruncationConfig``.
      mesh: optional 1-D ``jax.sharding.Mesh`` (axis "pop") to split the population over.
      outer_optimizer: the optax transformation updating theta from the estimate.
      outer_learning_rate: optional schedule of the outer optimizer's learning rate, reported as the
        metric "outer_lr".
      execution: see ``Estimator``.
    """

    def __init__(self, lopt: LearnedOptimizer, config: truncation.TruncationConfig, mesh=None,
                 outer_optimizer: Optional[optax.GradientTransformation] = None,
                 outer_learning_rate: Optional[Callable[[jax.Array], jax.Array]] = None,
                 execution: population.Execution = population.Execution()):
        super().__init__(lopt, config, mesh, execution)
        self.outer_optimizer = optax.adam(1e-3) if outer_optimizer is None else outer_optimizer
        self.outer_learning_rate = outer_learning_rate

    @property
    @abc.abstractmethod
    def members_per_task(self) -> int:
        """Inner runs per task slot."""

    @property
    def population_size(self) -> int:
        """Inner runs per task group."""
        return self.config.num_tasks * self.members_per_task

    @property
    def num_steps(self) -> int:
        return self.config.max_horizon

    @property
    def population_sizes(self) -> dict[str, int]:
        return {"population size": self.population_size}

    @property
    def inner_steps_per_estimate(self) -> int:
        """Inner steps taken by one ``estimate`` call, summed over the population."""
        return self.population_size * self.config.truncation_length

    @property
    def inner_steps_per_step(self) -> tuple[int, str]:
        return self.inner_steps_per_estimate, "truncation_length"

    def worst(self, task: InnerTask) -> jax.Array:
        """The meta-loss of a diverged run on ``task``."""
        return meta_loss_lib.worst_meta_loss(task, self.config.max_meta_loss)

    def init(self, key, theta, group_keys, tasks):
        outer_state = self.outer_optimizer.init(theta)
        return theta, outer_state, tuple(self.init_group(k, theta, task) for k, task in zip(group_keys, tasks))

    def step(self, theta, outer_state, group_state, key, task, count):
        grad, group_state, metrics = self.estimate(theta, group_state, key, task)
        grad = population.replicate(grad, self.mesh)
        updates, new_outer_state = self.outer_optimizer.update(grad, outer_state, theta)
        new_theta = optax.apply_updates(theta, updates)
        # Never let a bad update into theta: keep the old theta and outer state instead.
        ok = meta_loss_lib.tree_all_finite(new_theta)
        metrics = dict(metrics, grad_norm=optax.tree.norm(grad), update_ok=ok.astype(jnp.float32))
        if self.outer_learning_rate is not None:
            metrics["outer_lr"] = jnp.asarray(self.outer_learning_rate(count), jnp.float32)
        return (population.tree_where(ok, new_theta, theta), population.tree_where(ok, new_outer_state, outer_state),
                group_state, metrics)

    @abc.abstractmethod
    def init_group(self, key: jax.Array, theta: PyTree, task: InnerTask) -> EstimatorState:
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
