"""Evolution strategies over whole inner runs, with evosax.

Each generation, the strategy proposes a population of thetas; every member trains
``num_tasks_per_member`` fresh task instances from step 0 to the horizon (one ``lax.scan`` per run,
vmapped over tasks, mapped over members with ``metaopt.population.map_population``), and its fitness is the normalised meta-loss at the end of the run
("final") or averaged over it ("mean"). Fitness taken over the whole run lets ES discover schedules
that truncated meta-gradients, being myopic, do not.

Members ``i`` and ``i + population_size // 2`` form an antithetic pair (evosax's layout) and see the
same task instances and data, so "pairwise" fitness shaping (within-pair ranks: the better member of
each pair gets the credit) compares them fairly even though tasks differ between pairs.

References:
  Jackson et al., "Discovering Temporally-Aware Reinforcement Learning Algorithms", ICLR 2024.
  Salimans et al., "Evolution Strategies as a Scalable Alternative to Reinforcement Learning", 2017.
  Lange, "evosax: JAX-based Evolution Strategies", GECCO 2023.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax
from evosax.algorithms import CMA_ES, PGPE, SNES, Open_ES
from evosax.core.fitness_shaping import centered_rank_fitness_shaping_fn

from metaopt import population
from metaopt import validation as v
from metaopt.learned_optimizer import LearnedOptimizer
from metaopt.meta import base, horizons
from metaopt.meta.segment import run_segment
from metaopt.meta import meta_loss as meta_loss_lib
from metaopt.task_protocol import InnerTask
from metaopt.unroll import init_inner_state

__all__ = [
    "STRATEGIES", "ANTITHETIC_STRATEGIES", "FITNESS", "FITNESS_SHAPINGS", "OPTIMIZERS", "ESConfig",
    "ESGroupState", "pairwise_fitness_shaping_fn", "EvolutionStrategy",
]

PyTree = Any

STRATEGIES = ("open_es", "pgpe", "snes", "cma_es")
ANTITHETIC_STRATEGIES = ("open_es", "pgpe")
FITNESS = ("final", "mean")
FITNESS_SHAPINGS = ("centered_rank", "pairwise")
OPTIMIZERS = ("adam", "sgd")


@dataclasses.dataclass(frozen=True)
class ESConfig:
    """Settings of ES over whole inner runs.

    Attributes:
      strategy: "open_es", "pgpe", "snes" or "cma_es".
      population_size: thetas per generation (even for the antithetic "open_es" and "pgpe").
      sigma: initial standard deviation of the search distribution.
      num_steps: the inner horizon of every run. When None, horizons are drawn per generation between
        ``min_horizon`` and ``max_horizon`` (default ``num_steps`` 100 when neither is given).
      min_horizon, max_horizon: bounds of the sampled horizon.
      horizon_sampling: "constant" (``max_horizon``) or "log_uniform".
      fitness: "final" (meta-loss at the end of the run) or "mean" (averaged over the run).
      fitness_shaping: "centered_rank" (ranks over the population; for "snes" and "cma_es" their own
        rank weights) or "pairwise" (within-pair ranks; antithetic strategies only).
      learning_rate: step size of the optimizer updating the mean ("open_es" and "pgpe").
      num_tasks_per_member: task instances each member is trained on per generation.
      meta_loss: "train", "eval" or "mixed" (normalised training loss, held-out loss, or
        ``meta_loss_eval_weight`` of the held-out term plus the rest of the training term).
      meta_loss_scale: "linear" (the normalised loss) or "log" (its logarithm, see ``meta_loss``).
      meta_loss_eval_weight: the held-out term's weight in the "mixed" meta-loss, in (0, 1).
      optimizer: "adam" or "sgd", the optimizer of the mean ("open_es" and "pgpe").
      max_meta_loss: optional cap on the meta-loss (the fitness of a diverged run).
    """

    strategy: str = "open_es"
    population_size: int = 32
    sigma: float = 0.01
    num_steps: Optional[int] = None
    min_horizon: Optional[int] = None
    max_horizon: Optional[int] = None
    horizon_sampling: str = "log_uniform"
    fitness: str = "final"
    fitness_shaping: str = "centered_rank"
    learning_rate: float = 1e-3
    num_tasks_per_member: int = 1
    meta_loss: str = "train"
    meta_loss_scale: str = "linear"
    meta_loss_eval_weight: float = 0.5
    optimizer: str = "adam"
    max_meta_loss: Optional[float] = None

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy: got {self.strategy!r}, expected one of {STRATEGIES}")
        for name in ("population_size", "num_tasks_per_member", "num_steps", "min_horizon", "max_horizon"):
            value = getattr(self, name)
            if value is not None or name in ("population_size", "num_tasks_per_member"):
                v.check_int(value, name, 1, v.MAX_INT32)
        if self.population_size < 2 or (self.strategy in ANTITHETIC_STRATEGIES and self.population_size % 2):
            raise ValueError(f"population_size: expected an even integer >= 2, got {self.population_size}")
        if self.min_horizon is not None and self.max_horizon is None:
            raise ValueError("max_horizon: required when min_horizon is given")
        if self.min_horizon is not None and self.min_horizon > self.max_horizon:
            raise ValueError(f"min_horizon: must be <= max_horizon ({self.max_horizon}), got {self.min_horizon}")
        if self.horizon_sampling not in horizons.HORIZON_SAMPLINGS:
            raise ValueError(f"horizon_sampling: got {self.horizon_sampling!r}, "
                             f"expected one of {horizons.HORIZON_SAMPLINGS}")
        v.check_number(self.sigma, "sigma", low=0.0, low_open=True)
        v.check_number(self.learning_rate, "learning_rate", low=0.0, low_open=True)
        if self.fitness not in FITNESS:
            raise ValueError(f"fitness: got {self.fitness!r}, expected one of {FITNESS}")
        if self.fitness_shaping not in FITNESS_SHAPINGS:
            raise ValueError(f"fitness_shaping: got {self.fitness_shaping!r}, expected one of {FITNESS_SHAPINGS}")
        if self.fitness_shaping == "pairwise" and self.strategy not in ANTITHETIC_STRATEGIES:
            raise ValueError(f"fitness_shaping: 'pairwise' needs an antithetic strategy {ANTITHETIC_STRATEGIES}, "
                             f"got strategy {self.strategy!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer: got {self.optimizer!r}, expected one of {OPTIMIZERS}")
        v.check_number(self.max_meta_loss, "max_meta_loss", low=0.0, low_open=True, allow_none=True)
        meta_loss_lib.check_meta_loss_options(self.meta_loss, self.fitness, reduction_field="fitness",
                                              scale=self.meta_loss_scale,
                                              eval_weight=self.meta_loss_eval_weight)

    @property
    def sampled_horizon(self) -> bool:
        """Whether horizons are drawn per generation."""
        return self.num_steps is None and self.max_horizon is not None

    @property
    def run_length(self) -> int:
        """Steps of the scan of one inner run (the longest horizon)."""
        if self.num_steps is not None:
            return self.num_steps
        return 100 if self.max_horizon is None else self.max_horizon


class ESGroupState(NamedTuple):
    """Per task group: the number of generations evaluated on it."""

    generations: jax.Array


def pairwise_fitness_shaping_fn(population, fitness, state, params):
    """Within-pair ranks for evosax (minimisation): the better of members i and i + N/2 gets -0.5.

    Ties give both members 0.
    """
    del population, state, params
    half = fitness.shape[-1] // 2
    score = 0.5 * jnp.sign(fitness[..., :half] - fitness[..., half:])
    return jnp.concatenate([score, -score], axis=-1)


class EvolutionStrategy(base.Estimator):
    """ES over whole inner runs: an evosax strategy plus the population's fitness evaluation.

    theta is the strategy's mean and the outer state the strategy's state; each step is one
    generation (ask, evaluate whole runs, tell).

    Args:
      lopt: the learned optimizer (its ``init`` gives the shape of theta).
      config: ``ESConfig``.
      mesh: optional 1-D ``jax.sharding.Mesh`` (axis "pop") to split the population over.
      execution: how the members run on each device (``metaopt.population.Execution``).
    """

    name = "es"

    def __init__(self, lopt: LearnedOptimizer, config: ESConfig, mesh=None,
                 execution: population.Execution = population.Execution()):
        super().__init__(lopt, config, mesh, execution)
        shapes = jax.eval_shape(lopt.init, jax.random.key(0))
        template = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        self.strategy = self._make_strategy(template)
        params = self.strategy.default_params
        if config.strategy != "open_es":
            params = params.replace(std_init=jnp.asarray(config.sigma, jnp.float32))
        self.params = params

    def _make_strategy(self, template: PyTree):
        config = self.config
        shaping = (pairwise_fitness_shaping_fn if config.fitness_shaping == "pairwise"
                   else centered_rank_fitness_shaping_fn)
        optimizer = (optax.adam if config.optimizer == "adam" else optax.sgd)(config.learning_rate)
        size = config.population_size
        if config.strategy == "open_es":
            return Open_ES(size, template, use_antithetic_sampling=True, optimizer=optimizer,
                           std_schedule=optax.constant_schedule(config.sigma), fitness_shaping_fn=shaping)
        if config.strategy == "pgpe":
            return PGPE(size, template, optimizer=optimizer, fitness_shaping_fn=shaping)
        if config.strategy == "snes":
            return SNES(size, template)
        return CMA_ES(size, template)

    @property
    def num_steps(self) -> int:
        """The (longest) inner horizon of a run."""
        return self.config.run_length

    @property
    def population_sizes(self) -> dict[str, int]:
        return {"population size": self.config.population_size}

    @property
    def inner_steps_per_step(self) -> tuple[int, str]:
        config = self.config
        field = "num_steps" if config.num_steps is not None or config.max_horizon is None else "max_horizon"
        return config.population_size * config.num_tasks_per_member * config.run_length, field

    def init(self, key, theta, group_keys, tasks):
        es_state = self.strategy.init(key, theta, self.params)
        return self.mean(es_state), es_state, tuple(ESGroupState(jnp.zeros([], jnp.int32)) for _ in tasks)

    def step(self, theta, outer_state, group_state, key, task, count):
        es_state, metrics = self.generation(outer_state, key, task)
        return self.mean(es_state), es_state, ESGroupState(group_state.generations + 1), metrics

    def mean(self, es_state) -> PyTree:
        """The strategy's mean as a theta pytree."""
        return self.strategy.get_mean(es_state)

    def fitness(self, thetas: PyTree, task_keys: jax.Array, horizon: Any, task: InnerTask
                ) -> tuple[jax.Array, jax.Array]:
        """Fitness of each member: its mean meta-loss over whole runs on its task instances.

        Args:
          thetas: the population (leading axis: members).
          task_keys: instance keys, shape (members, num_tasks_per_member).
          horizon: the inner horizon (int or traced scalar).
          task: the inner task.

        Returns:
          (fitness, diverged): per member, the finite fitness and whether any of its runs diverged
          (a non-finite loss, or a meta-loss at the ceiling ``worst_meta_loss``).
        """
        config = self.config
        worst = meta_loss_lib.worst_meta_loss(task, config.max_meta_loss)
        mask_horizon = horizon if config.sampled_horizon else None

        def run(theta, key):
            tx = self.lopt.transform(theta, horizon, param_meta=task.param_meta)
            inner = init_inner_state(task, tx, key)
            _, value, diverged = run_segment(
                task, tx, inner, config.run_length, meta_loss=config.meta_loss, reduction=config.fitness,
                worst=worst, horizon=mask_horizon, scale=config.meta_loss_scale,
                eval_weight=config.meta_loss_eval_weight)
            return value, diverged | (value >= worst)  # a run at the loss ceiling counts as diverged

        def member(theta, keys):
            values, diverged = jax.vmap(run, in_axes=(None, 0))(theta, keys)
            return jnp.mean(values), jnp.any(diverged)

        return population.map_population(member, thetas, task_keys, mesh=self.mesh, execution=self.execution)

    def generation(self, es_state, key: jax.Array, task: InnerTask):
        """One generation: ask, evaluate whole runs, tell.

        Returns:
          (es_state, metrics).
        """
        config, mesh = self.config, self.mesh
        ask_key, task_key, horizon_key, tell_key = jax.random.split(key, 4)
        es_state = population.replicate(es_state, mesh)
        members, es_state = self.strategy.ask(ask_key, es_state, self.params)
        members = population.shard_population(members, mesh)
        if config.sampled_horizon:
            min_horizon = config.max_horizon if config.min_horizon is None else config.min_horizon
            horizon = horizons.sample_horizon(horizon_key, min_horizon, config.max_horizon,
                                                config.horizon_sampling)
        else:
            horizon = config.run_length
        half = (config.population_size + 1) // 2
        pair_keys = jax.random.split(task_key, (half, config.num_tasks_per_member))
        task_keys = jnp.concatenate([pair_keys, pair_keys], axis=0)[: config.population_size]
        fitness, diverged = self.fitness(members, population.shard_population(task_keys, mesh), horizon, task)
        fitness = population.shard_population(fitness, mesh)
        new_state, _ = self.strategy.tell(tell_key, members, fitness, es_state, self.params)
        # A non-finite mean would poison every later generation: keep the previous one instead.
        ok = meta_loss_lib.tree_all_finite(new_state.mean)
        es_state = population.replicate(population.tree_where(ok, new_state, es_state), mesh)
        inner_steps = jnp.asarray(config.population_size * config.num_tasks_per_member, jnp.int32) * horizon
        metrics = {
            "meta_loss": jnp.mean(fitness),
            "best_fitness": jnp.min(fitness),
            "inner_steps": jnp.asarray(inner_steps, jnp.int32),
            "diverged": jnp.mean(diverged.astype(jnp.float32)),
            "horizon": jnp.asarray(horizon, jnp.int32),
        }
        return es_state, metrics
