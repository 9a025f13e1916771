"""Learning-rate schedules for the hand-designed baselines.

Every schedule starts with a linear warm-up to ``peak_value`` over ``warmup_steps`` steps (from 0, or
from ``peak_value / warmup_steps`` at the first step: ``warmup_from_zero``) and then follows its shape
until ``num_steps``. Baselines and the meta-training outer optimizer both take theirs from here:

- ``constant``: stays at the peak;
- ``cosine``: cosine decay from the peak to ``final_fraction * peak_value`` at ``num_steps``;
- ``linear``: linear decay from the peak to ``final_fraction * peak_value`` at ``num_steps``;
- ``wsd`` (warmup-stable-decay): stays at the peak, then decays linearly to
  ``final_fraction * peak_value`` over the last ``decay_fraction`` of the run;
- ``rex``: REX's reflected-exponential profile (1 - z) / (1 - z/2) of the decay's progress z,
  floored at ``final_fraction``;
- ``power``: the power scheduler's min(1, (n / n_w)^(-b)) with b = ``POWER_EXPONENT`` after the
  warm-up (n counts steps, n_w the warm-up length, at least 1), then a linear decay to
  ``final_fraction`` of its value over the last ``decay_fraction`` of the run, as in WSD.

The shapes other than cosine are built from optax's schedules with unit peak and then scaled by
``peak_value``; the cosine is ``final + (peak - final) * (1 + cos(pi * progress)) / 2``. Either way
``peak_value`` may be a traced scalar (a grid of learning rates vmapped in one program) while every
step boundary stays a Python int.

References:
  Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts", 2017 (cosine).
  Hu et al., "MiniCPM: Unveiling the Potential of Small Language Models with Scalable Training
  Strategies", 2024 (warmup-stable-decay). Chen et al., "REX: Revisiting Budgeted Training with an
  Improved Schedule", MLSys 2022. Shen et al., "Power Scheduler: A Batch Size and Token Number
  Agnostic Learning Rate Scheduler", 2024.
"""

from __future__ import annotations

import numbers
from typing import Any

import jax.numpy as jnp
import optax

__all__ = ["SCHEDULES", "POWER_EXPONENT", "unit_schedule", "make_schedule"]

SCHEDULES = ("constant", "cosine", "linear", "wsd", "rex", "power")
# The power scheduler's exponent b (Shen et al. 2024 use 0.51).
POWER_EXPONENT = 0.51


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
    if name == "rex":
        def rex(count):
            z = jnp.clip(jnp.asarray(count, jnp.float32) / steps, 0.0, 1.0)
            return jnp.maximum((1.0 - z) / (1.0 - 0.5 * z), final_fraction)
        return rex
    return optax.linear_schedule(1.0, final_fraction, steps)


def unit_schedule(name: str, num_steps: int, warmup_steps: int = 0, *, final_fraction: float = 0.0,
                  decay_fraction: float = 0.2, warmup_from_zero: bool = True) -> optax.Schedule:
    """The schedule shape with peak 1; see ``make_schedule`` for the arguments."""
    return make_schedule(name, 1.0, num_steps, warmup_steps, final_fraction=final_fraction,
                         decay_fraction=decay_fraction, warmup_from_zero=warmup_from_zero)


def _after_warmup(name: str, num_steps: int, warmup_steps: int, final_fraction: float,
                  decay_fraction: float) -> optax.Schedule:
    """The unit-peak shape after the warm-up, as a function of the steps since the warm-up ended."""
    if name in ("wsd", "power"):
        decay_steps = int(round(decay_fraction * num_steps))
        decay_start = max(warmup_steps, num_steps - decay_steps)
        if name == "wsd":
            stable = optax.constant_schedule(1.0)
            level = 1.0
        else:
            start = max(warmup_steps, 1)

            def stable(count):  # count runs from the end of warm-up
                n = jnp.asarray(count, jnp.float32) + warmup_steps
                return jnp.minimum(1.0, (jnp.maximum(n, 1.0) / start) ** -POWER_EXPONENT)

            level = min(1.0, (max(decay_start, 1) / start) ** -POWER_EXPONENT)
        decay = _decay("linear", num_steps - decay_start, final_fraction)
        pieces = [stable, lambda count: level * decay(count)]
        return optax.join_schedules(pieces, [decay_start - warmup_steps])
    return _decay(name, num_steps - warmup_steps, final_fraction)


def make_schedule(name: str, peak_value: Any, num_steps: int, warmup_steps: int = 0, *,
                  final_fraction: float = 0.0, decay_fraction: float = 0.2,
                  warmup_from_zero: bool = True) -> optax.Schedule:
    """A learning-rate schedule: linear warm-up, then the named shape.

    Args:
      name: one of ``SCHEDULES``.
      peak_value: the learning rate reached at the end of warm-up; a float or a (traced) scalar.
      num_steps: length of the run (Python int >= 1); decays reach their final value here.
      warmup_steps: steps of linear warm-up (Python int, 0 <= warmup_steps <= num_steps).
      final_fraction: the final value as a fraction of ``peak_value`` (cosine, linear, wsd).
      decay_fraction: fraction of ``num_steps`` spent in the final linear decay (wsd, power).
      warmup_from_zero: the warm-up's value at step t is ``peak_value * t / warmup_steps``, from 0
        (True), or ``peak_value * (t + 1) / warmup_steps``, so that the first step already moves and
        step ``warmup_steps - 1`` reaches the peak (False; the meta-training outer schedule).

    Returns:
      An optax schedule ``count -> learning rate``.

    Raises:
      ValueError: unknown name, or a step count or fraction out of range.
    """
    if name not in SCHEDULES:
        raise ValueError(f"schedule: unknown {name!r}; allowed: {list(SCHEDULES)}")
    if isinstance(peak_value, numbers.Real) and peak_value < 0:
        raise ValueError(f"peak_value: must be >= 0, got {peak_value}")
    num_steps = _check_int("num_steps", num_steps, 1)
    warmup_steps = _check_int("warmup_steps", warmup_steps, 0)
    if warmup_steps > num_steps:
        raise ValueError(f"warmup_steps: must be <= num_steps ({num_steps}), got {warmup_steps}")
    final_fraction = _check_fraction("final_fraction", final_fraction)
    decay_fraction = _check_fraction("decay_fraction", decay_fraction)
    if not isinstance(warmup_from_zero, bool):
        raise ValueError(f"warmup_from_zero: expected a bool, got {warmup_from_zero!r}")
    # A Python peak keeps the cosine's end points in float64 until the last operation.
    peak = peak_value if isinstance(peak_value, numbers.Real) else jnp.asarray(peak_value)
    decay_steps = num_steps - warmup_steps
    offset = 0.0 if warmup_from_zero else 1.0

    if name == "cosine":
        final = peak * final_fraction

        def after(count):
            if decay_steps == 0:  # warm-up took the whole run: the decay has already ended
                return final * jnp.ones_like(count, jnp.float32)
            progress = jnp.clip((count - warmup_steps) / decay_steps, 0.0, 1.0)
            return final + (peak - final) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    else:
        shape = _after_warmup(name, num_steps, warmup_steps, final_fraction, decay_fraction)

        def after(count):
            return peak * shape(count - warmup_steps)

    def schedule(count):
        count = jnp.asarray(count, jnp.float32)
        if warmup_steps == 0:
            return after(count)
        warm = peak * jnp.minimum((count + offset) / warmup_steps, 1.0)
        return jnp.where(count < warmup_steps, warm, after(count))

    return schedule
