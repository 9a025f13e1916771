"""Truncated inner runs: the machinery shared by the truncated estimators (TBPTT, PES, truncated ES).

A population of inner runs is trained in truncations of ``truncation_length`` steps; each outer step
advances every run by one truncation (one ``lax.scan`` per member, mapped over the population with
``metaopt.population.map_population``). A run belongs
to a task *instance* (init key, data key, horizon); when it reaches its horizon, or diverges, it is
replaced by a fresh instance, so every run trains from step 0 to its horizon and its truncations
follow each other.

Horizons are drawn per instance (constant, or log-uniform between ``min_horizon`` and
``max_horizon``) and rounded to a whole number of truncations, so restarts fall on truncation
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
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from metaopt import validation as v
from metaopt.learned_optimizer import LearnedOptimizer
from metaopt.meta import meta_loss as meta_loss_lib
from metaopt.population import tree_where
from metaopt.task_protocol import InnerTask
from metaopt.unroll import InnerState, init_inner_state, inner_step

__all__ = [
    "HORIZON_SAMPLINGS", "TruncationConfig", "RunState", "round_horizon", "sample_horizon", "run_segment",
    "fresh_run", "slot_keys", "init_runs", "truncation", "slot_any", "advance_runs",
]

PyTree = Any

HORIZON_SAMPLINGS = ("constant", "log_uniform")


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
      meta_loss: "train" (normalised training loss) or "eval" (normalised held-out loss).
      meta_loss_reduction: "mean" over the truncation's steps, or "final" (at its end).
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
        meta_loss_lib.check_meta_loss_options(self.meta_loss, self.meta_loss_reduction)


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


def round_horizon(horizon: jax.Array, truncation_length: int) -> jax.Array:
    """Rounds to the nearest whole number of truncations (at least one)."""
    num = jnp.maximum(jnp.round(horizon / truncation_length), 1.0)
    return (num * truncation_length).astype(jnp.int32)


def sample_horizon(key: jax.Array, min_horizon: int, max_horizon: int, sampling: str,
                   truncation_length: int = 1) -> jax.Array:
    """Draws an inner horizon: ``max_horizon``, or log-uniform in [min_horizon, max_horizon].

    Args:
      key: PRNG key.
      min_horizon, max_horizon: bounds (inclusive).
      sampling: "constant" or "log_uniform".
      truncation_length: the horizon is rounded to a multiple of it (1: plain rounding).

    Returns:
      An int32 scalar.
    """
    if sampling == "constant" or min_horizon == max_horizon:
        return round_horizon(jnp.asarray(max_horizon, jnp.float32), truncation_length)
    if sampling != "log_uniform":
        raise ValueError(f"horizon_sampling: got {sampling!r}, expected one of {HORIZON_SAMPLINGS}")
    log_h = jax.random.uniform(key, (), jnp.float32, jnp.log(float(min_horizon)), jnp.log(float(max_horizon)))
    horizon = jnp.clip(jnp.exp(log_h), min_horizon, max_horizon)
    return round_horizon(horizon, truncation_length)


def run_segment(task: InnerTask, tx, inner: InnerState, length: int, *, meta_loss: str, reduction: str,
                worst: jax.Array, remat: bool = False, horizon: Optional[jax.Array] = None
                ) -> tuple[InnerState, jax.Array, jax.Array]:
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
    values = meta_loss_lib.normalized(task, raw, worst)
    value = jnp.sum(jnp.where(valid, values, 0.0)) / jnp.sum(valid)
    diverged = jnp.any(valid & ~jnp.isfinite(raw)) | ~meta_loss_lib.tree_all_finite(final.params)
    return final, jnp.where(diverged, worst, value), diverged


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
                       reduction=config.meta_loss_reduction, worst=worst, remat=config.remat)


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
