"""Truncated backpropagation through time (TBPTT) meta-gradients.

The meta-gradient of one truncation of ``truncation_length`` inner steps, by reverse-mode
differentiation through the unroll; the inner state enters each truncation through
``stop_gradient``, so the estimate ignores how theta shaped the state it starts from (biased towards
short horizons). ``remat=True`` rematerialises each inner step in the backward pass, so memory stays
at one step's activations plus the scan carries.

References:
  Wu et al., "Understanding Short-Horizon Bias in Stochastic Meta-Optimization", ICLR 2018.
  Metz et al., "Understanding and correcting pathologies in the training of learned optimizers",
  ICML 2019.
"""

from __future__ import annotations

from typing import Any

import jax

from metaopt import population
from metaopt.meta import base, truncation
from metaopt.meta.meta_loss import tree_all_finite
from metaopt.task_protocol import InnerTask

__all__ = ["TBPTT"]

PyTree = Any


class TBPTT(base.GradientEstimator):
    """Truncated backprop: exact gradient of the truncation's meta-loss with the carried state detached."""

    name = "tbptt"

    @property
    def members_per_task(self) -> int:
        return 1

    def init_group(self, key: jax.Array, theta: PyTree, task: InnerTask) -> base.EstimatorState:
        theta = population.replicate(theta, self.mesh)
        runs = truncation.init_runs(task, self.lopt, theta, key, self.config, 1, theta_axis=None)
        return base.EstimatorState(population.shard_population(runs, self.mesh), None)

    def estimate(self, theta: PyTree, state: base.EstimatorState, key: jax.Array, task: InnerTask
                 ) -> tuple[PyTree, base.EstimatorState, dict]:
        theta = population.replicate(theta, self.mesh)
        worst = self.worst(task)
        runs = population.shard_population(state.runs, self.mesh)

        def member_meta_loss(th, run):
            run = run._replace(inner=jax.lax.stop_gradient(run.inner))
            inner, value, diverged = truncation.truncation(task, self.lopt, th, run, self.config, worst)
            return value, (inner, diverged)

        grad_fn = jax.value_and_grad(member_meta_loss, has_aux=True)
        (meta_losses, (inner, diverged)), grads = population.map_population(
            lambda run: grad_fn(theta, run), runs, mesh=self.mesh, execution=self.execution)
        grads = population.shard_population(grads, self.mesh)
        # A diverged run's backward pass carries NaNs: drop the whole member, not just its bad entries.
        keep = ~diverged & jax.vmap(tree_all_finite)(grads)
        grad = base.masked_mean(grads, keep)
        runs, restarted = truncation.advance_runs(task, self.lopt, theta, runs, inner, diverged, key,
                                                  self.config, 1, theta_axis=None)
        runs = population.shard_population(runs, self.mesh)
        return base.zero_nonfinite(grad), base.EstimatorState(runs, None), self._metrics(
            meta_losses, diverged | (meta_losses >= worst), restarted)  # at the ceiling counts as diverged
