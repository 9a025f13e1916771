"""The outer step of meta-training: an estimator plus the update of theta.

``make_meta_trainer`` builds a ``MetaTrainer`` from an estimator name ("tbptt", "pes",
"truncated_es" or "es"), a learned optimizer and a sequence of task groups. For the gradient
estimators the outer update is an optax optimizer on theta; for "es" it is the evosax strategy's own
update of its mean. ``trainer.step`` is pure and jittable with ``jax.jit(trainer.step,
static_argnums=2)``; the same key and state give the same result, so a run resumes exactly.

With a 1-D ``jax.sharding.Mesh`` (axis "pop") the population axis (tasks x perturbations, or ES
members) is split over the devices and theta and the outer state are replicated: the same code runs
on one device or many.

References:
  Vicol et al., "Unbiased Gradient Estimation in Unrolled Computation Graphs with Persistent
  Evolution Strategies", ICML 2021. Therien et al., "µLO: Compute-Efficient Meta-Generalization of
  Learned Optimizers", ICLR 2026 (PES meta-training with AdamW as outer optimizer).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import optax

from metaopt import population
from metaopt.learned_optimizer import LearnedOptimizer
from metaopt.meta import full_es, truncation
from metaopt.meta.base import Estimator
from metaopt.meta.pes import PES
from metaopt.meta.tbptt import TBPTT
from metaopt.meta.truncated_es import TruncatedES
from metaopt.task_protocol import InnerTask

__all__ = ["GRADIENT_ESTIMATORS", "ESTIMATORS", "MetaState", "MetaTrainer", "estimator_config",
           "estimator_settings", "make_meta_trainer"]

PyTree = Any

GRADIENT_ESTIMATORS = {"tbptt": TBPTT, "pes": PES, "truncated_es": TruncatedES}
ESTIMATORS = tuple(GRADIENT_ESTIMATORS) + ("es",)


class MetaState(NamedTuple):
    """Where meta-training stands.

    Attributes:
      theta: the learned optimizer's meta-parameters (for "es", the strategy's mean).
      outer_state: the outer optimizer's state (for "es", the evosax strategy's state).
      estimator_states: one per task group: the population's inner runs and PES accumulators
        (``base.EstimatorState``), or ``full_es.ESGroupState`` for "es".
      step: outer steps taken (int32).
    """

    theta: PyTree
    outer_state: Any
    estimator_states: tuple
    step: jax.Array


def _strong_types(tree: PyTree) -> PyTree:
    """Drops weak types, so a state has the same avals before and after a step (no recompilation)."""

    def strong(x):
        if jax.dtypes.issubdtype(jnp.result_type(x), jax.dtypes.prng_key):
            return x
        return jax.lax.convert_element_type(x, jnp.result_type(x))

    return jax.tree.map(strong, tree)


def _config_fields(cls) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


class MetaTrainer:
    """Meta-trains a learned optimizer on task groups with one estimator (``base.Estimator``).

    Use ``make_meta_trainer`` to build one.

    Attributes:
      estimator_name: the estimator's name.
      estimator: the estimator object.
      tasks: the task groups.
      num_steps: the meta-training inner horizon (``max_horizon``, or the ES run length).
      config: the resolved estimator settings as a dict.
    """

    def __init__(self, estimator_name: str, estimator: Estimator, lopt: LearnedOptimizer,
                 tasks: Sequence[InnerTask], mesh):
        self.estimator_name = estimator_name
        self.estimator = estimator
        self.lopt = lopt
        self.tasks = tuple(tasks)
        self.mesh = mesh
        self.config = dataclasses.asdict(estimator.config)
        # Building the first inner states op by op would be slow; one compiled call is not.
        self._init_jit = jax.jit(self._init)

    @property
    def num_steps(self) -> int:
        return self.estimator.num_steps

    def init(self, key: jax.Array, theta: PyTree) -> MetaState:
        """The first meta-state: theta, a fresh outer state, and each group's (staggered) inner runs.

        Args:
          key: PRNG key.
          theta: initial meta-parameters (e.g. ``lopt.init(key)`` or a loaded checkpoint).
        """
        self.lopt.check_theta(theta)
        return self._init_jit(key, theta)

    def _init(self, key: jax.Array, theta: PyTree) -> MetaState:
        theta = population.replicate(theta, self.mesh)
        outer_key, *group_keys = jax.random.split(key, len(self.tasks) + 1)
        theta, outer_state, states = self.estimator.init(outer_key, theta, group_keys, self.tasks)
        return _strong_types(MetaState(theta, population.replicate(outer_state, self.mesh), states,
                                       jnp.zeros([], jnp.int32)))

    def step(self, state: MetaState, key: jax.Array, group: int = 0) -> tuple[MetaState, dict]:
        """One outer step on task group ``group`` (a static index into ``tasks``).

        Returns:
          (state, metrics): metrics is a dict of scalar arrays with "meta_loss", "inner_steps",
          "diverged" (fraction of runs that diverged) and what the estimator adds ("grad_norm" ...).
        """
        if not 0 <= group < len(self.tasks):
            raise ValueError(f"group: expected an index in [0, {len(self.tasks)}), got {group}")
        states = list(state.estimator_states)
        theta, outer_state, states[group], metrics = self.estimator.step(
            state.theta, state.outer_state, states[group], key, self.tasks[group], state.step)
        theta = population.replicate(theta, self.mesh)
        outer_state = population.replicate(outer_state, self.mesh)
        return _strong_types(MetaState(theta, outer_state, tuple(states), state.step + 1)), metrics

    def theta(self, state: MetaState) -> PyTree:
        """The current meta-parameters (for "es", the strategy's mean)."""
        return state.theta


def estimator_config(estimator: str) -> type:
    """The settings class of the named estimator (``TruncationConfig`` or ``ESConfig``).

    Raises:
      ValueError: for an unknown estimator.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator: got {estimator!r}, expected one of {ESTIMATORS}")
    return full_es.ESConfig if estimator == "es" else truncation.TruncationConfig


def estimator_settings(estimator: str) -> tuple[str, ...]:
    """The settings (keyword arguments of ``make_meta_trainer``) the named estimator takes."""
    return _config_fields(estimator_config(estimator))


def make_meta_trainer(estimator: str, lopt: LearnedOptimizer, tasks: Sequence[InnerTask], *,
                      outer_optimizer: Optional[optax.GradientTransformation] = None,
                      outer_learning_rate: Optional[optax.Schedule] = None, mesh=None,
                      execution: Optional[population.Execution] = None, **estimator_kwargs) -> MetaTrainer:
    """Builds a meta-trainer.

    Args:
      estimator: "tbptt", "pes", "truncated_es" (truncated runs; settings in
        ``truncation.TruncationConfig``) or "es" (whole runs with evosax; settings in
        ``full_es.ESConfig``).
      lopt: the learned optimizer.
      tasks: a non-empty sequence of inner tasks, one per static-shape task group.
      outer_optimizer: optax transformation updating theta from the meta-gradient (default Adam at
        1e-3); ignored by "es".
      outer_learning_rate: optional schedule of that optimizer's learning rate, reported as the
        metric "outer_lr".
      mesh: optional 1-D ``jax.sharding.Mesh`` with axis "pop".
      execution: how the population's members run on each device (default: ``Execution()``, the
        choice for jax's backend).
      **estimator_kwargs: the estimator's settings.

    Returns:
      A ``MetaTrainer``.

    Raises:
      ValueError: for an unknown estimator or setting, or a bad value.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator: got {estimator!r}, expected one of {ESTIMATORS}")
    if not isinstance(lopt, LearnedOptimizer):
        raise ValueError(f"lopt: expected a metaopt.LearnedOptimizer, got {type(lopt).__name__}")
    tasks = tuple(tasks)
    if not tasks:
        raise ValueError("tasks: expected at least one task group")
    if mesh is not None and tuple(mesh.axis_names) != (population.POP_AXIS,):
        raise ValueError(f"mesh: expected a 1-D mesh with axis name {population.POP_AXIS!r}, "
                         f"got axes {tuple(mesh.axis_names)}")
    allowed = estimator_settings(estimator)
    unknown = sorted(set(estimator_kwargs) - set(allowed))
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown setting for estimator {estimator!r}; allowed: {list(allowed)}")
    config = estimator_config(estimator)(**estimator_kwargs)
    execution = population.Execution() if execution is None else execution
    if estimator == "es":
        est = full_es.EvolutionStrategy(lopt, config, mesh, execution)
    else:
        est = GRADIENT_ESTIMATORS[estimator](lopt, config, mesh, outer_optimizer, outer_learning_rate, execution)
    return MetaTrainer(estimator, est, lopt, tasks, mesh)
