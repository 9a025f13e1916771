"""Truncated inner runs of the truncated estimators (TBPTT, PES, truncated ES): their settings, their
state, and how runs start, advance by one truncation and restart.

A population of inner runs is trained in truncations of ``truncation_length`` steps; each outer step
advances every run by one truncation (``metaopt.meta.segment.run_segment`` per member, mapped over
the population with ``metaopt.population.map_population``). A run belongs to a task *instance* (init key, data key, horizon); when it reaches its horizon, or diverges, it is
replaced by a fresh instance, so every run trains from step 0 to its horizon and its truncations
follow each other.

Horizons are drawn per instance (``metaopt.meta.horizons``: constant, or log-uniform between
``min_horizon`` and ``max_horizon``) and rounded to a whole number of truncations, so restarts fall on truncation
boundaries and no truncation straddles two instances. The first instance of each run is cut short
after a random number of truncations, which staggers the population: its runs do not all restart
together.

Population layout: a task slot holds ``members_per_task`` members (1 for TBPTT; the +/- members of
each perturbation pair for PES and truncated ES). Members of a slot share the instance (same init,
same data, same horizon) and differ only by the theta they run with. Member ``m`` belongs to slot
``m // members_per_task``.

References:
  Metz et al., "Practical tradeoffs between memory, compute, and performance in learned optimizers",
  CoLLAs 2022 (truncated training with staggered resets, as in learned_optimization).
  Vicol et al., "Unbiased Gradient Estimation in Unrolled Computation Graphs with Persistent
  Evolution Strategies", ICML 2021.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from metaopt import validation as v
from metaopt.learned_optimizer import LearnedOptimizer
from metaopt.meta import meta_loss as meta_loss_lib
from metaopt.meta.horizons import HORIZON_SAMPLINGS, sample_horizon
from metaopt.meta.segment import run_segment
from metaopt.population import tree_where
from metaopt.task_protocol import InnerTask
from metaopt.unroll import InnerState, init_inner_state

__all__ = ["TruncationConfig", "RunState", "fresh_run", "slot_keys", "init_runs", "truncation", "slot_any",
           "advance_runs"]

PyTree = Any



@dataclasses.dataclass(frozen=True)
class TruncationConfig:
    """Settings of the truncated estimators.

    Attributes:
      num_tasks: parallel inner runs (task slots) per task group.
      truncation_length: inner steps per truncation (one outer step).
      min_horizon, max_horizon: bounds of the inner horizon (rounded to whole truncations).
      horizon_sampling: "constant" (always ``max_horizon``) or "log_uniform".
      num_perturbations: antithetic pairs per task slot (PES, truncated ES).
      sigma: standard deviation of the theta perturbations (PES, truncated ES).
      meta_loss: "train" (normalised training loss), "eval" (normalised held-out loss) or "mixed"
        (``meta_loss_eval_weight`` of the held-out term plus the rest of the training term).
      meta_loss_reduction: "mean" over the truncation's steps, or "final" (at its end).
      meta_loss_scale: "linear" (the normalised loss) or "log" (its logarithm, see ``meta_loss``).
      meta_loss_eval_weight: the held-out term's weight in the "mixed" meta-loss, in (0, 1).
      remat: rematerialise the unroll in the backward pass (TBPTT), bounding memory by one step.
      max_meta_loss: optional cap on the meta-loss (the value a diverged run gets when the task's
        normaliser is unbounded).
    """

    num_tasks: int = 8
    truncation_length: int = 50
    min_horizon: int = 100
    max_horizon: int = 1000
    horizon_sampling: str = "log_uniform"
    num_perturbations: int = 8
    sigma: float = 0.01
    meta_loss: str = "train"
    meta_loss_reduction: str = "mean"
    meta_loss_scale: str = "linear"
    meta_loss_eval_weight: float = 0.5
    remat: bool = True
    max_meta_loss: Optional[float] = None

    def __post_init__(self):
        for name in ("num_tasks", "truncation_length", "min_horizon", "max_horizon", "num_perturbations"):
            v.check_int(getattr(self, name), name, 1, v.MAX_INT32)
        if self.min_horizon > self.max_horizon:
            raise ValueError(f"min_horizon: must be <= max_horizon ({self.max_horizon}), got {self.min_horizon}")
        if self.horizon_sampling not in HORIZON_SAMPLINGS:
            raise ValueError(f"horizon_sampling: got {self.horizon_sampling!r}, expected one of {HORIZON_SAMPLINGS}")
        v.check_number(self.sigma, "sigma", low=0.0, low_open=True)
        v.check_bool(self.remat, "remat")
        v.check_number(self.max_meta_loss, "max_meta_loss", low=0.0, low_open=True, allow_none=True)
        meta_loss_lib.check_meta_loss_options(self.meta_loss, self.meta_loss_reduction, scale=self.meta_loss_scale,
                                              eval_weight=self.meta_loss_eval_weight)


class RunState(NamedTuple):
    """Inner runs of a population (leading axis: members).

    Attributes:
      inner: the inner state (params, optimizer state, step, data key).
      horizon: the instance's horizon, the ``num_steps`` the learned optimizer is built with.
      stop: the step at which the run ends (the horizon, or earlier for the staggered first run).
    """

    inner: InnerState
    horizon: jax.Array
    stop: jax.Array


def fresh_run(task: InnerTask, lopt: LearnedOptimizer, theta: PyTree, key: jax.Array, config: TruncationConfig,
              staggered: bool) -> RunState:
    """A new task instance from ``key``: horizon, initial parameters and optimizer state, data key.

    Args:
      task, lopt, theta: the task, the learned optimizer and the theta this member runs with.
      key: the instance key (members of one task slot pass the same key).
      config: the truncation settings.
      staggered: cut the run short after a random number of truncations (the first instance).
    """
    horizon_key, init_key, stop_key = jax.random.split(key, 3)
    horizon = sample_horizon(horizon_key, config.min_horizon, config.max_horizon, config.horizon_sampling,
                             config.truncation_length)
    tx = lopt.transform(theta, horizon, param_meta=task.param_meta)
    inner = init_inner_state(task, tx, init_key)
    stop = horizon
    if staggered:
        num_truncations = horizon // config.truncation_length
        stop = config.truncation_length * jax.random.randint(stop_key, (), 1, num_truncations + 1)
    return RunState(inner, horizon, stop.astype(jnp.int32))


def slot_keys(key: jax.Array, num_tasks: int, members_per_task: int) -> jax.Array:
    """One instance key per task slot, repeated for each member of the slot."""
    keys = jax.random.split(key, num_tasks)
    return jnp.repeat(keys, members_per_task, axis=0)


def init_runs(task: InnerTask, lopt: LearnedOptimizer, thetas: PyTree, key: jax.Array, config: TruncationConfig,
              members_per_task: int, theta_axis: Optional[int] = 0) -> RunState:
    """The population's first instances (staggered), one per member.

    Args:
      thetas: theta per member (leading axis: members) or a single theta with ``theta_axis=None``.
    """
    keys = slot_keys(key, config.num_tasks, members_per_task)
    return jax.vmap(lambda th, k: fresh_run(task, lopt, th, k, config, True), in_axes=(theta_axis, 0))(thetas, keys)


def truncation(task: InnerTask, lopt: LearnedOptimizer, theta: PyTree, run: RunState, config: TruncationConfig,
               worst: jax.Array) -> tuple[InnerState, jax.Array, jax.Array]:
    """One member's truncation: builds the learned optimizer for the run's horizon and trains on.

    Returns:
      The inner state after the truncation, its meta-loss and whether it diverged.
    """
    tx = lopt.transform(theta, run.horizon, param_meta=task.param_meta)
    return run_segment(task, tx, run.inner, config.truncation_length, meta_loss=config.meta_loss,
                       reduction=config.meta_loss_reduction, worst=worst, remat=config.remat,
                       scale=config.meta_loss_scale, eval_weight=config.meta_loss_eval_weight)


def slot_any(flags: jax.Array, members_per_task: int) -> jax.Array:
    """Per member: whether any member of its task slot has the flag."""
    per_slot = jnp.any(flags.reshape(-1, members_per_task), axis=1)
    return jnp.repeat(per_slot, members_per_task)


def advance_runs(task: InnerTask, lopt: LearnedOptimizer, thetas: PyTree, runs: RunState, inner: InnerState,
                 diverged: jax.Array, key: jax.Array, config: TruncationConfig, members_per_task: int,
                 theta_axis: Optional[int] = 0) -> tuple[RunState, jax.Array]:
    """Carries the runs past a truncation: finished or diverged slots restart as fresh instances.

    Args:
      thetas: theta per member (or one theta with ``theta_axis=None``), for the fresh optimizer states.
      runs: the runs before the truncation.
      inner: their inner states after it.
      diverged: per member, whether its truncation diverged.
      key: key for the fresh instances.

    Returns:
      The runs for the next truncation, and per member whether its slot restarted.
    """
    restart = slot_any((inner.step >= runs.stop) | diverged, members_per_task)
    keys = slot_keys(key, config.num_tasks, members_per_task)
    fresh = jax.vmap(lambda th, k: fresh_run(task, lopt, th, k, config, False), in_axes=(theta_axis, 0))(thetas, keys)
    carried = RunState(inner, runs.horizon, runs.stop)
    return tree_where(restart, fresh, carried), restart
