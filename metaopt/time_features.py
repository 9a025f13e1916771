"""Time features: how far a run has got, as inputs to learned optimizers and learned schedules.

Two groups, each a vector shared by every parameter of the model at a given step:

- *fraction* features (temporal awareness): the fraction trained x = t/T embedded as
  tanh(10 (x - c)) for the centres c in ``FRACTION_CENTERS``, plus the horizon log T scaled to Θ(1)
  (``horizon_feature``). They need the run length T (``num_steps``).
- *step* features (small_fc_lopt): the absolute step count embedded as tanh(t / tau - 1) for the
  timescales tau in ``STEP_TIMESCALES``; they do not depend on T.

``step`` is the number of updates already applied (0 at the first update) and ``num_steps`` the run
length; both may be traced integers, so horizons can vary across a vmapped population.

References:
  Metz et al., "VeLO: Training Versatile Learned Optimizers by Scaling Up", 2022 (fraction features).
  Jackson et al., "Discovering Temporally-Aware Reinforcement Learning Algorithms", ICLR 2024.
  Metz et al., "Practical tradeoffs between memory, compute, and performance in learned optimizers",
  CoLLAs 2022 (step features).
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "FRACTION_CENTERS", "STEP_TIMESCALES", "NUM_FRACTION_FEATURES", "NUM_STEP_FEATURES",
    "check_num_steps", "fraction_trained", "horizon_feature", "fraction_features", "step_features",
    "num_time_features", "time_features",
]

FRACTION_CENTERS = (0.03, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0, 1.1)
STEP_TIMESCALES = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1e3, 3e3, 1e4, 3e4, 1e5)

# The horizon feature is log10(T) - 3: 0 at 1000 steps, -1 at 100, +1.4 at 25k.
_HORIZON_CENTER = 3.0

NUM_FRACTION_FEATURES = len(FRACTION_CENTERS) + 1
NUM_STEP_FEATURES = len(STEP_TIMESCALES)


def check_num_steps(num_steps: Any, name: str = "num_steps") -> None:
    """Checks a concrete ``num_steps``: a positive whole number, or an array of them (traced values pass).

    Raises:
      TypeError: not a number or a numeric array (a string, None, a bool).
      ValueError: not positive, or not a whole number (2.5 steps).
    """
    if isinstance(num_steps, jax.core.Tracer):
        return
    what = "a positive whole number of steps"
    if isinstance(num_steps, (bool, np.bool_)) or not (
            isinstance(num_steps, (numbers.Real, np.ndarray, jax.Array))):
        raise TypeError(f"{name}: expected {what}, got {num_steps!r}")
    value = np.asarray(num_steps)
    if not (np.issubdtype(value.dtype, np.integer) or np.issubdtype(value.dtype, np.floating)):
        raise TypeError(f"{name}: expected {what}, got {num_steps!r}")
    if (value.size == 0 or not np.all(np.isfinite(value)) or np.any(value <= 0)
            or np.any(value != np.round(value))):
        raise ValueError(f"{name}: expected {what}, got {num_steps!r}")


def fraction_trained(step: jax.Array, num_steps: jax.Array) -> jax.Array:
    """t/T as float32."""
    return jnp.asarray(step, jnp.float32) / jnp.asarray(num_steps, jnp.float32)


def horizon_feature(num_steps: jax.Array) -> jax.Array:
    """The run length as a Θ(1) scalar: log10(T) - 3."""
    return jnp.log10(jnp.asarray(num_steps, jnp.float32)) - _HORIZON_CENTER


def fraction_features(step: jax.Array, num_steps: jax.Array) -> jax.Array:
    """VeLO's tanh(10 (t/T - c)) for every centre c, followed by the horizon feature; shape (10,)."""
    x = fraction_trained(step, num_steps)
    centers = jnp.asarray(FRACTION_CENTERS, jnp.float32)
    return jnp.concatenate([jnp.tanh(10.0 * (x - centers)), horizon_feature(num_steps)[None]])


def step_features(step: jax.Array) -> jax.Array:
    """small_fc_lopt's tanh(t / tau - 1) for every timescale tau; shape (11,)."""
    taus = jnp.asarray(STEP_TIMESCALES, jnp.float32)
    return jnp.tanh(jnp.asarray(step, jnp.float32) / taus - 1.0)


def num_time_features(fraction: bool = True, absolute: bool = True) -> int:
    """Length of ``time_features(..., fraction, absolute)``."""
    return NUM_FRACTION_FEATURES * int(fraction) + NUM_STEP_FEATURES * int(absolute)


def time_features(step: jax.Array, num_steps: jax.Array, fraction: bool = True,
                  absolute: bool = True) -> jax.Array:
    """The selected time feature groups, concatenated (fraction first); shape (num_time_features,).

    Args:
      step: updates applied so far (int, may be traced).
      num_steps: the run length T (may be traced; unused when ``fraction`` is False).
      fraction: include the fraction features and the horizon feature.
      absolute: include the absolute-step features.

    Returns:
      A float32 vector, empty when both groups are off.
    """
    parts = []
    if fraction:
        parts.append(fraction_features(step, num_steps))
    if absolute:
        parts.append(step_features(step))
    if not parts:
        return jnp.zeros((0,), jnp.float32)
    return jnp.concatenate(parts)

