"""A learned learning-rate schedule: a small MLP of training progress that scales a base optimizer.

At step t of a run of T steps, the network reads the fraction features tanh(10 (t/T - c)) and log T
(``metaopt.time_features``), plus t/T itself and, optionally, loss features (log of the loss over the
first loss seen, and an exponential moving average of it, from the ``loss=`` keyword of ``update``).
Its output o gives the multiplier exp(clip(o, log min_multiplier, log max_multiplier)), which scales
the whole update of the base optimizer (AdamW by default, or any optax transformation). The output
layer starts at zero, so a fresh theta gives multiplier 1 at every step: the base optimizer itself.

References:
  Moudgil et al., "Celo: Training Versatile Learned Optimizers on a Compute Diet", 2025 (a learned
  scheduler network whose exponentiated output is a global step size). Jackson et al., "Discovering
  Temporally-Aware Reinforcement Learning Algorithms", ICLR 2024 (t/T and log T as inputs).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metaopt import time_features as tf
from metaopt.learned_optimizer import LearnedOptimizer, register
from metaopt.mup import adam_multipliers, check_multipliers, resolve_param_meta

__all__ = ["BASES", "LearnedScheduleState", "LearnedSchedule"]

PyTree = Any

BASES = ("adamw", "adam", "sgd")

# Loss features are clipped so a diverging run cannot feed the network unbounded inputs.
_LOSS_FEATURE_CLIP = 10.0


class LearnedScheduleState(NamedTuple):
    """State of a learned schedule.

    Attributes:
      count: updates applied so far (int32 scalar).
      base_state: the base optimizer's state.
      initial_loss: the first loss seen (float32; 0 before it, or without loss features).
      loss_ema: moving average of log(loss / initial_loss) (float32).
    """

    count: jax.Array
    base_state: PyTree
    initial_loss: jax.Array
    loss_ema: jax.Array


@register
@dataclasses.dataclass(frozen=True)
class LearnedSchedule(LearnedOptimizer):
    """A learned multiplier of the learning rate of a base optimizer.

    Attributes:
      hidden_size: width of the hidden layers.
      num_hidden_layers: number of hidden ReLU layers (0: linear in the features).
      loss_features: also read log(loss / first loss) and its moving average (``update`` then
        needs ``loss=``).
      loss_ema_decay: decay of that moving average.
      base: the default base optimizer, one of ``BASES``; ``transform(..., base=tx)`` overrides it.
      base_learning_rate: learning rate of the default base optimizer (the multiplier scales it).
      weight_decay: AdamW's decoupled weight decay.
      b1, b2, eps: Adam's moment decays and epsilon (b1 is SGD's momentum for ``base="sgd"``).
      mup: scale each tensor's base update by its µAdam multiplier (base_fan_in/fan_in for hidden
        matrices), from ``param_meta=`` or inferred from shapes.
      min_multiplier, max_multiplier: the multiplier's range (the network's output is clipped in
        log space).
    """

    kind: ClassVar[str] = "learned_schedule"

    hidden_size: int = 32
    num_hidden_layers: int = 1
    loss_features: bool = False
    loss_ema_decay: float = 0.9
    base: str = "adamw"
    base_learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    mup: bool = False
    min_multiplier: float = 1e-4
    max_multiplier: float = 100.0

    def __post_init__(self):
        from metaopt import validation as v

        v.check_int(self.hidden_size, "hidden_size", 1)
        v.check_int(self.num_hidden_layers, "num_hidden_layers", 0)
        v.check_bool(self.loss_features, "loss_features")
        v.check_bool(self.mup, "mup")
        v.check_choice(self.base, "base", BASES)
        v.check_number(self.base_learning_rate, "base_learning_rate", low=0.0, low_open=True)
        v.check_number(self.loss_ema_decay, "loss_ema_decay", low=0.0, high=1.0, high_open=True)
        v.check_number(self.weight_decay, "weight_decay", low=0.0)
        v.check_number(self.b1, "b1", low=0.0, high=1.0, high_open=True)
        v.check_number(self.b2, "b2", low=0.0, high=1.0, high_open=True)
        v.check_number(self.eps, "eps", low=0.0, low_open=True)
        v.check_number(self.min_multiplier, "min_multiplier", low=0.0, high=1.0, low_open=True)
        v.check_number(self.max_multiplier, "max_multiplier", low=1.0)

    @property
    def num_inputs(self) -> int:
        """Number of network inputs: fraction features, log T, t/T, and two loss features if on."""
        return tf.NUM_FRACTION_FEATURES + 1 + (2 if self.loss_features else 0)

    def init(self, key: jax.Array) -> dict:
        """theta: ``{"w0", "b0", ..., "w{L}", "b{L}"}``; hidden layers He-normal, output layer zero
        (so the multiplier is 1 everywhere at init)."""
        sizes = [self.num_inputs] + [self.hidden_size] * self.num_hidden_layers + [1]
        keys = jax.random.split(key, len(sizes))
        theta = {}
        for i in range(len(sizes) - 1):
            if i == len(sizes) - 2:
                w = jnp.zeros((sizes[i], sizes[i + 1]), jnp.float32)
            else:
                w = np.sqrt(2.0 / sizes[i]) * jax.random.normal(keys[i], (sizes[i], sizes[i + 1]), jnp.float32)
            theta[f"w{i}"] = w
            theta[f"b{i}"] = jnp.zeros((sizes[i + 1],), jnp.float32)
        return theta

    def _inputs(self, count, num_steps, loss_ratio, loss_ema) -> jax.Array:
        parts = [tf.fraction_features(count, num_steps), tf.fraction_trained(count, num_steps)[None]]
        if self.loss_features:
            parts.append(jnp.stack([loss_ratio, loss_ema]).astype(jnp.float32))
        return jnp.concatenate(parts)

    def _log_multiplier(self, theta: dict, inputs: jax.Array) -> jax.Array:
        h = inputs
        for i in range(self.num_hidden_layers + 1):
            if i > 0:
                h = jax.nn.relu(h)
            h = h @ theta[f"w{i}"] + theta[f"b{i}"]
        return jnp.clip(h[0], math.log(self.min_multiplier), math.log(self.max_multiplier))

    def multiplier(self, theta: dict, count: jax.Array, num_steps: Any, loss_ratio: Any = 0.0,
                   loss_ema: Any = 0.0) -> jax.Array:
        """The learning-rate multiplier at step ``count`` of ``num_steps`` (loss features default 0)."""
        inputs = self._inputs(count, num_steps, jnp.asarray(loss_ratio, jnp.float32),
                              jnp.asarray(loss_ema, jnp.float32))
        return jnp.exp(self._log_multiplier(theta, inputs))

    def multiplier_curve(self, theta: dict, num_steps: int) -> jax.Array:
        """Multipliers at steps 0..num_steps-1 of a run of ``num_steps`` (loss features at 0).

        Args:
          theta: meta-parameters.
          num_steps: the run length (a Python int: it fixes the output's shape).

        Returns:
          float32 array of shape (num_steps,).
        """
        tf.check_num_steps(num_steps)
        steps = jnp.arange(int(num_steps), dtype=jnp.int32)
        return jax.vmap(lambda t: self.multiplier(theta, t, num_steps))(steps)

    def base_transform(self) -> optax.GradientTransformation:
        """The default base optimizer at ``base_learning_rate``."""
        if self.base == "adamw":
            return optax.adamw(self.base_learning_rate, b1=self.b1, b2=self.b2, eps=self.eps,
                               weight_decay=self.weight_decay)
        if self.base == "adam":
            return optax.adam(self.base_learning_rate, b1=self.b1, b2=self.b2, eps=self.eps)
        return optax.sgd(self.base_learning_rate, momentum=self.b1 or None)

    def _multipliers(self, params, param_meta, roles, multipliers, base_params):
        if multipliers is not None:
            check_multipliers(params, multipliers)
            return multipliers
        if not self.mup:
            return None
        return adam_multipliers(resolve_param_meta(params, param_meta, roles, base_params))

    def transform(self, theta: dict, num_steps: Any, *, base: Optional[optax.GradientTransformation] = None,
                  param_meta: Any = None, roles: Any = None, multipliers: Any = None,
                  base_params: Any = None) -> optax.GradientTransformationExtraArgs:
        """The base optimizer with its update scaled by the learned multiplier.

        Args:
          theta: meta-parameters from ``init`` (may be traced).
          num_steps: the run length T (int, may be traced).
          base: any optax transformation to schedule instead of the default base optimizer.
          param_meta, roles, base_params: µP metadata for the µAdam multipliers (``mup=True``).
          multipliers: explicit per-tensor multipliers of the base update (any mode).

        Returns:
          ``optax.GradientTransformationExtraArgs``; ``update(updates, state, params=None, *,
          loss=None, **extra)`` passes the extra keywords on to the base optimizer.

        Raises:
          ValueError: wrong theta structure, ``num_steps <= 0``, multipliers not matching params,
            or a missing ``loss=`` with ``loss_features=True``.
        """
        self.check_theta(theta)
        tf.check_num_steps(num_steps)
        base_tx = optax.with_extra_args_support(self.base_transform() if base is None else base)
        ema_decay = self.loss_ema_decay

        def init_fn(params):
            self._multipliers(params, param_meta, roles, multipliers, base_params)
            zero = jnp.zeros([], jnp.float32)
            return LearnedScheduleState(jnp.zeros([], jnp.int32), base_tx.init(params), zero, zero)

        def update_fn(updates, state, params=None, *, loss=None, **extra_args):
            if self.loss_features and loss is None:
                raise ValueError("loss: LearnedSchedule(loss_features=True) needs update(..., loss=...)")
            scales = self._multipliers(updates, param_meta, roles, multipliers, base_params)
            base_updates, base_state = base_tx.update(updates, state.base_state, params, loss=loss,
                                                      **extra_args)
            initial_loss, loss_ema = state.initial_loss, state.loss_ema
            loss_ratio = jnp.zeros([], jnp.float32)
            if self.loss_features:
                loss = jnp.asarray(loss, jnp.float32)
                initial_loss = jnp.where(state.count == 0, loss, state.initial_loss)
                # Losses can be negative or zero for some tasks: compare magnitudes, guarded.
                ratio = jnp.log(jnp.maximum(jnp.abs(loss), 1e-12) / jnp.maximum(jnp.abs(initial_loss), 1e-12))
                loss_ratio = jnp.clip(ratio, -_LOSS_FEATURE_CLIP, _LOSS_FEATURE_CLIP)
                loss_ema = jnp.where(state.count == 0, loss_ratio,
                                     ema_decay * state.loss_ema + (1 - ema_decay) * loss_ratio)
            mult = self.multiplier(theta, state.count, num_steps, loss_ratio, loss_ema)
            if scales is None:
                out = jax.tree.map(lambda u: (mult * u.astype(jnp.float32)).astype(u.dtype), base_updates)
            else:
                out = jax.tree.map(
                    lambda u, s: (mult * jnp.asarray(s, jnp.float32) * u.astype(jnp.float32)).astype(u.dtype),
                    base_updates, scales)
            return out, LearnedScheduleState(state.count + 1, base_state, initial_loss, loss_ema)

        return optax.GradientTransformationExtraArgs(init_fn, update_fn)
