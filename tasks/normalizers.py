"""Loss normalisers: map each family's loss onto one bounded meta-loss scale.

Meta-losses from different tasks are averaged by the meta-trainer, so each family maps its loss to
roughly "0 = solved, 1 = no better than the trivial predictor", clipped to [0, ``WORST``]. A NaN or
infinite loss (a diverged inner run) maps to ``WORST``, and the gradient through the normaliser is
zero there, so one diverged member cannot poison a meta-gradient.

- classification with C classes: ``clip(l, 0, 1.5 log C) / log C`` (chance level is 1).
- regression: ``clip(l / baseline, 0, 1.5)`` with ``baseline`` the loss of predicting zero.
- quadratics (losses spanning decades): ``clip(1 + log10(l / l0) / decades, 0, 1.5)`` with ``l0``
  the expected loss at initialisation.

References:
  Metz et al., "Practical tradeoffs between memory, compute, and performance in learned optimizers",
  CoLLAs 2022 (learned_optimization clips and rescales the loss per task family; it uses
  ``(clip(l, 0, log 2C) - log(C/5)) * 10 / log C``).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

__all__ = ["WORST", "classification", "regression", "log_ratio"]

WORST = 1.5


def _guard(loss: jax.Array, normalized_fn) -> jax.Array:
    loss = jnp.asarray(loss, jnp.float32)
    finite = jnp.isfinite(loss)
    # The non-finite branch sees a harmless value so that its gradient is zero, not NaN.
    safe = jnp.where(finite, loss, 0.0)
    return jnp.where(finite, normalized_fn(safe), jnp.float32(WORST))


@functools.partial(jax.jit, static_argnames="num_classes")
def classification(loss: jax.Array, num_classes: int) -> jax.Array:
    """Cross-entropy of a ``num_classes``-way classifier in units of the chance-level loss log C.

    Args:
      loss: the mean cross-entropy (any shape).
      num_classes: C >= 2.

    Returns:
      ``clip(loss, 0, 1.5 log C) / log C``; ``WORST`` (1.5) where ``loss`` is NaN or infinite.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes: must be >= 2, got {num_classes}")
    log_c = math.log(num_classes)
    return _guard(loss, lambda l: jnp.clip(l, 0.0, WORST * log_c) / log_c)


@functools.partial(jax.jit, static_argnames="baseline")
def regression(loss: jax.Array, baseline: float) -> jax.Array:
    """A squared error relative to ``baseline`` (the error of the trivial predictor).

    Returns:
      ``clip(loss / baseline, 0, 1.5)``; ``WORST`` where ``loss`` is NaN or infinite.
    """
    if not baseline > 0:
        raise ValueError(f"baseline: must be > 0, got {baseline}")
    return _guard(loss, lambda l: jnp.clip(l / baseline, 0.0, WORST))


@functools.partial(jax.jit, static_argnames=("initial_loss", "decades"))
def log_ratio(loss: jax.Array, initial_loss: float, decades: float = 3.0) -> jax.Array:
    """A loss that falls over many orders of magnitude, on a log scale.

    Returns:
      ``clip(1 + log10(loss / initial_loss) / decades, 0, 1.5)``: 1 at the initial loss, 0 once it
      has fallen by ``decades`` orders of magnitude; ``WORST`` where ``loss`` is NaN or infinite.
    """
    if not initial_loss > 0:
        raise ValueError(f"initial_loss: must be > 0, got {initial_loss}")
    if not decades > 0:
        raise ValueError(f"decades: must be > 0, got {decades}")

    def fn(l):
        ratio = jnp.maximum(l, 1e-30) / initial_loss
        return jnp.clip(1.0 + jnp.log10(ratio) / decades, 0.0, WORST)

    return _guard(loss, fn)
