"""Learning-rate schedules for the hand-designed baselines.

Every schedule starts with a linear warm-up from 0 to ``peak_value`` over ``warmup_steps`` steps and
then follows its shape until ``num_steps``:

- ``constant``: stays at the peak;
- ``cosine``: cosine decay from the peak to ``final_fraction * peak_value`` at ``num_steps``;
- ``linear``: linear decay from the peak to ``final_fraction * peak_value`` at ``num_steps``;
- ``wsd`` (warmup-stable-decay): stays at the peak, then decays linearly to
  ``final_fraction * peak_value`` over the last ``decay_fraction`` of the run.

The shape is built from optax's schedules with unit peak and then scaled by ``peak_value``, so
``peak_value`` may be a traced scalar (a grid of learning rates vmapped in one program) while every
step boundary stays a Python int.

References:
  Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts", 2017 (cosine).
  Hu et al., "MiniCPM: Unveiling the Potential of Small Language Models with Scalable Training
  Strategies", 2024 (warmup-stable-decay).
"""

from __future__ import annotations

import numbers
from typing import Any

import jax.numpy as jnp
import optax

SCHEDULES = ("constant", "cosine", "linear", "wsd")


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name}: expected a Python int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: must be >= {minimum}, got {value}")
    return int(value)


def _check_fraction(name: str, value: Any) -> float:
    if not isinstance(value, numbers.Real) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name}: expected a number in [0, 1], got {value!r}")
    return float(value)


def _decay(name: str, steps: int, final_fraction: float) -> optax.Schedule:
    """A unit-peak decay over ``steps`` steps (counted from its own start)."""
    if name == "constant":
        return optax.constant_schedule(1.0)
    if steps == 0:
        # Warm-up took the whole run: the decay has already ended.
        return optax.constant_schedule(final_fraction)
    if name == "cosine":
        return optax.cosine_decay_schedule(1.0, steps, alpha=final_fraction)
    return optax.linear_schedule(1.0, final_fraction, steps)


def unit_schedule(name: str, num_steps: int, warmup_steps: int = 0, *, final_fraction: float = 0.0,
                  decay_fraction: float = 0.2) -> optax.Schedule:
    """The schedule shape with peak 1; see ``make_schedule`` for the arguments."""
    if name not in SCHEDULES:
        raise ValueError(f"schedule: unknown {name!r}; allowed: {list(SCHEDULES)}")
    num_steps = _check_int("num_steps", num_steps, 1)
    warmup_steps = _check_int("warmup_steps", warmup_steps, 0)
    if warmup_steps > num_steps:
        raise ValueError(f"warmup_steps: must be <= num_steps ({num_steps}), got {warmup_steps}")
    final_fraction = _check_fraction("final_fraction", final_fraction)
    decay_fraction = _check_fraction("decay_fraction", decay_fraction)

    if name == "wsd":
        decay_steps = int(round(decay_fraction * num_steps))
        decay_start = max(warmup_steps, num_steps - decay_steps)
        pieces = [optax.constant_schedule(1.0),
                  _decay("linear", num_steps - decay_start, final_fraction)]
        after_warmup = optax.join_schedules(pieces, [decay_start - warmup_steps])
    else:
        after_warmup = _decay(name, num_steps - warmup_steps, final_fraction)
    if warmup_steps == 0:
        return after_warmup
    warmup = optax.linear_schedule(0.0, 1.0, warmup_steps)
    return optax.join_schedules([warmup, after_warmup], [warmup_steps])


def make_schedule(name: str, peak_value: Any, num_steps: int, warmup_steps: int = 0, *,
                  final_fraction: float = 0.0, decay_fraction: float = 0.2) -> optax.Schedule:
    """A learning-rate schedule: linear warm-up from 0, then the named shape.

    Args:
      name: one of ``"constant"``, ``"cosine"``, ``"linear"``, ``"wsd"``.
      peak_value: the learning rate reached at the end of warm-up; a float or a (traced) scalar.
      num_steps: length of the run (Python int >= 1); decays reach their final value here.
      warmup_steps: steps of linear warm-up from 0 (Python int, 0 <= warmup_steps <= num_steps).
      final_fraction: the final value as a fraction of ``peak_value`` (cosine, linear, wsd).
      decay_fraction: fraction of ``num_steps`` spent in the final linear decay (wsd only).

    Returns:
      An optax schedule ``count -> learning rate``.

    Raises:
      ValueError: unknown name, or a step count or fraction out of range.
    """
    if isinstance(peak_value, numbers.Real) and peak_value < 0:
        raise ValueError(f"peak_value: must be >= 0, got {peak_value}")
    shape = unit_schedule(name, num_steps, warmup_steps, final_fraction=final_fraction,
                          decay_fraction=decay_fraction)

    def schedule(count):
        return jnp.asarray(peak_value) * shape(count)

    return schedule
