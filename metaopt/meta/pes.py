"""Persistent evolution strategies (PES): unbiased meta-gradients from truncated inner runs.

Each task slot runs ``num_perturbations`` antithetic pairs; within a truncation the + member runs
with theta + eps and the - member with theta - eps, each carrying its own inner state from one
truncation to the next. Every pair keeps the sum xi of the perturbations it has used since its run
started, and the estimate

    grad = sum_i (L(theta + eps_i) - L(theta - eps_i)) * xi_i / (2 sigma^2 N)

(N pairs) is unbiased for the gradient of the truncation's meta-loss through the whole inner run so
far, not just the truncation. The accumulators are reset when a run restarts.

References:
  Vicol et al., "Unbiased Gradient Estimation in Unrolled Computation Graphs with Persistent
  Evolution Strategies", ICML 2021.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from metaopt import population
from metaopt.meta import base, truncation
from metaopt.task_protocol import InnerTask

__all__ = ["sample_perturbations", "PES"]

PyTree = Any


def sample_perturbations(key: jax.Array, theta: PyTree, num: int, sigma: float) -> PyTree:
    """``num`` Gaussian perturbations of theta with standard deviation ``sigma`` (leading axis: num)."""
    leaves, treedef = jax.tree.flatten(theta)
    keys = jax.random.split(key, len(leaves))
    eps = [sigma * jax.random.normal(k, (num,) + jnp.shape(x), jnp.result_type(x)) for k, x in zip(keys, leaves)]
    return jax.tree.unflatten(treedef, eps)


def _leading(x: jax.Array, ndim: int) -> jax.Array:
    return jnp.reshape(x, x.shape + (1,) * (ndim - x.ndim))


class PES(base.GradientEstimator):
    """Persistent evolution strategies over truncations (antithetic, with per-pair accumulators)."""

    name = "pes"
    persistent = True

    @property
    def num_pairs(self) -> int:
        return self.config.num_tasks * self.config.num_perturbations

    @property
    def members_per_task(self) -> int:
        return 2 * self.config.num_perturbations

    @property
    def population_sizes(self) -> dict[str, int]:
        return {"population size": self.population_size, "number of perturbation pairs": self.num_pairs}

    def init_group(self, key: jax.Array, theta: PyTree, task: InnerTask) -> base.EstimatorState:
        theta = population.replicate(theta, self.mesh)
        runs = truncation.init_runs(task, self.lopt, theta, key, self.config, self.members_per_task,
                                    theta_axis=None)
        accumulator = None
        if self.persistent:
            accumulator = jax.tree.map(lambda x: jnp.zeros((self.num_pairs,) + jnp.shape(x), jnp.result_type(x)),
                                       theta)
            accumulator = population.shard_population(accumulator, self.mesh)
        return base.EstimatorState(population.shard_population(runs, self.mesh), accumulator)

    def estimate(self, theta: PyTree, state: base.EstimatorState, key: jax.Array, task: InnerTask
                 ) -> tuple[PyTree, base.EstimatorState, dict]:
        config, mesh = self.config, self.mesh
        theta = population.replicate(theta, mesh)
        worst = self.worst(task)
        eps_key, reset_key = jax.random.split(key)
        eps = population.shard_population(sample_perturbations(eps_key, theta, self.num_pairs, config.sigma), mesh)
        # Member m belongs to pair m // 2; even members take +eps, odd members -eps.
        signs = jnp.tile(jnp.asarray([1.0, -1.0], jnp.float32), self.num_pairs)
        thetas = jax.tree.map(
            lambda t, e: t[None] + _leading(signs, e.ndim).astype(e.dtype) * jnp.repeat(e, 2, axis=0), theta, eps)
        thetas = population.shard_population(thetas, mesh)
        runs = population.shard_population(state.runs, mesh)

        inner, meta_losses, diverged = population.map_population(
            lambda th, run: truncation.truncation(task, self.lopt, th, run, config, worst), thetas, runs,
            mesh=mesh, execution=self.execution)
        meta_losses = population.shard_population(meta_losses, mesh)

        xi = jax.tree.map(jnp.add, state.accumulator, eps) if self.persistent else eps
        pair_losses = meta_losses.reshape(self.num_pairs, 2)
        coef = (pair_losses[:, 0] - pair_losses[:, 1]) / (2.0 * config.sigma ** 2)
        keep = ~truncation.slot_any(diverged, self.members_per_task)[::2]
        grad = base.masked_mean(jax.tree.map(lambda x: _leading(coef, x.ndim).astype(x.dtype) * x, xi), keep)

        runs, restarted = truncation.advance_runs(task, self.lopt, thetas, runs, inner, diverged, reset_key,
                                                  config, self.members_per_task)
        runs = population.shard_population(runs, mesh)
        accumulator = None
        if self.persistent:
            restarted_pair = restarted[::2]
            accumulator = jax.tree.map(
                lambda x: jnp.where(_leading(restarted_pair, x.ndim), jnp.zeros_like(x), x), xi)
            accumulator = population.shard_population(accumulator, mesh)
        return base.zero_nonfinite(grad), base.EstimatorState(runs, accumulator), self._metrics(
            meta_losses, diverged | (meta_losses >= worst), restarted)  # at the ceiling counts as diverged
