"""Inner horizons of meta-training: a fixed horizon or one drawn log-uniformly, rounded to whole
truncations so that restarts fall on truncation boundaries.

References:
  Metz et al., "Practical tradeoffs between memory, compute, and performance in learned optimizers",
  CoLLAs 2022 (sampled horizons of truncated training, as in learned_optimization).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["HORIZON_SAMPLINGS", "round_horizon", "sample_horizon"]

HORIZON_SAMPLINGS = ("constant", "log_uniform")


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
