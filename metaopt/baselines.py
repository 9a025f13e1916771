"""Hand-designed optimizers the learned ones are measured against, behind one factory shape.

Every baseline is a factory::

    f(learning_rate, num_steps, *, schedule="cosine", warmup_steps=None, param_meta=None, roles=None,
      multipliers=None, base_params=None, **hyper) -> optax.GradientTransformationExtraArgs

tuned by its (peak) learning rate, which may be a traced scalar so a grid of learning rates can be
vmapped in one program. The learning rate follows ``metaopt.schedules.make_schedule(schedule, ...)``
with ``warmup_steps`` of linear warm-up (default: 5% of ``num_steps``). ``hyper`` holds the
optimizer's own hyperparameters (``weight_decay``, ``b1``, ``b2``, ``eps``, ``momentum``,
``nesterov``) and the schedule's ``final_fraction`` / ``decay_fraction``.

- ``adamw``: Adam with decoupled weight decay (default weight_decay 1e-4).
- ``muadam``: Adam under µP: each tensor's learning rate is multiplied by its µAdam multiplier
  (base_fan_in/fan_in for hidden matrices, 1 otherwise), so a learning rate tuned at the base width
  carries over to wider models. Multipliers come from ``multipliers=`` (a pytree of scalars), else
  from ``param_meta=`` (e.g. ``task.param_meta``), else are inferred at trace time from the updates'
  shapes with ``metaopt.mup.resolve_param_meta(roles=, base_params=)``; without ``base_params`` (or a
  param_meta carrying ``base_fan_in``) the model is taken to be at its base width and every multiplier
  is 1. Default weight_decay 0.
- ``lion``: sign-of-momentum updates (default b1 0.9, b2 0.99, weight_decay 1e-3).
- ``sgdm``: SGD with heavy-ball momentum (default momentum 0.9, weight_decay 0).
- ``muon``: Muon (``optax.contrib.muon``): momentum orthogonalised by Newton-Schulz iterations on
  every matrix, Adam on vectors and other tensors, one scheduled learning rate for both (default
  beta 0.95, weight_decay 0).

The µP arguments are accepted by every factory so callers can treat them alike; only ``muadam`` uses
them. ``default_lr_grid(name)`` gives the log-spaced grid the evaluation program tunes over.

References:
  Loshchilov & Hutter, "Decoupled Weight Decay Regularization", 2019 (AdamW). Yang et al.,
  "Tensor Programs V", 2022 (µAdam). Chen et al., "Symbolic Discovery of Optimization Algorithms",
  2023 (Lion). Therien et al., "µLO", ICLR 2026 (µAdam as the baseline for µP learned optimizers).
  Jordan et al., "Muon: An optimizer for hidden layers in neural networks", 2024.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metaopt import mup
from metaopt.schedules import make_schedule

__all__ = [
    "scale_by_mup_multipliers", "adamw", "muadam", "lion", "sgdm", "muon", "BASELINES", "LR_RANGES",
    "get_baseline", "default_lr_grid",
]

PyTree = Any

_SCHEDULE_HYPER = ("final_fraction", "decay_fraction")


def _split_hyper(name: str, hyper: dict, defaults: dict) -> tuple[dict, dict]:
    allowed = sorted(set(defaults) | set(_SCHEDULE_HYPER))
    unknown = sorted(set(hyper) - set(allowed))
    if unknown:
        raise ValueError(f"hyper: unknown {unknown} for {name}; allowed: {allowed}")
    own = {k: hyper.get(k, v) for k, v in defaults.items()}
    sched = {k: hyper[k] for k in _SCHEDULE_HYPER if k in hyper}
    return own, sched


def _is_zero(value: Any) -> bool:
    """True for a concrete zero; traced hyperparameters keep their transformation in the program."""
    return isinstance(value, numbers.Real) and value == 0


def _learning_rate(learning_rate: Any, num_steps: int, schedule: str, warmup_steps: Optional[int],
                   sched_kw: dict) -> optax.Schedule:
    if isinstance(learning_rate, numbers.Real) and not learning_rate > 0:
        raise ValueError(f"learning_rate: must be > 0, got {learning_rate}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Integral) or num_steps < 1:
        raise ValueError(f"num_steps: expected a Python int >= 1, got {num_steps!r}")
    if warmup_steps is None:
        warmup_steps = int(0.05 * num_steps)
    return make_schedule(schedule, learning_rate, int(num_steps), warmup_steps, **sched_kw)


def scale_by_mup_multipliers(*, param_meta: PyTree = None, roles: PyTree = None,
                             multipliers: PyTree = None, base_params: PyTree = None
                             ) -> optax.GradientTransformationExtraArgs:
    """Multiplies each tensor's update by its µAdam learning-rate multiplier.

    Args:
      param_meta: pytree of ``ParamMeta`` matching the parameters; inferred when ``None``.
      roles: optional pytree of role overrides (strings or ``None``).
      multipliers: optional pytree of scalars; when given it is used as is.
      base_params: the same model at its base width (arrays or shape structs), for inference.

    Returns:
      A stateless transformation; multipliers are resolved from the updates' shapes at trace time.

    References:
      Yang et al., "Tensor Programs V", 2022.
    """

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None, **extra):
        del params, extra
        if multipliers is not None:
            mults = mup.check_multipliers(updates, multipliers)
        else:
            meta = mup.resolve_param_meta(updates, param_meta, roles, base_params)
            mults = mup.adam_multipliers(meta)
        updates = jax.tree.map(lambda u, m: u * jnp.asarray(m, u.dtype), updates, mults)
        return updates, state

    return optax.with_extra_args_support(optax.GradientTransformation(init_fn, update_fn))


def adamw(learning_rate: Any, num_steps: int, *, schedule: str = "cosine",
          warmup_steps: Optional[int] = None, param_meta: PyTree = None, roles: PyTree = None,
          multipliers: PyTree = None, base_params: PyTree = None, **hyper
          ) -> optax.GradientTransformationExtraArgs:
    """AdamW with a scheduled learning rate.

    Args:
      learning_rate: peak learning rate (float or traced scalar).
      num_steps: run length (Python int).
      schedule: a ``metaopt.schedules`` name.
      warmup_steps: linear warm-up steps; default 5% of num_steps.
      param_meta, roles, multipliers, base_params: accepted for a uniform call shape; unused.
      **hyper: b1 (0.9), b2 (0.999), eps (1e-8), weight_decay (1e-4), final_fraction, decay_fraction.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    References:
      Loshchilov & Hutter, "Decoupled Weight Decay Regularization", 2019.
    """
    del param_meta, roles, multipliers, base_params
    own, sched = _split_hyper("adamw", hyper, {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": 1e-4})
    lr = _learning_rate(learning_rate, num_steps, schedule, warmup_steps, sched)
    return optax.with_extra_args_support(optax.adamw(lr, **own))


def muadam(learning_rate: Any, num_steps: int, *, schedule: str = "cosine",
           warmup_steps: Optional[int] = None, param_meta: PyTree = None, roles: PyTree = None,
           multipliers: PyTree = None, base_params: PyTree = None, **hyper
           ) -> optax.GradientTransformationExtraArgs:
    """Adam under µP: per-tensor learning rates scaled by base_fan_in/fan_in for hidden matrices.

    Args:
      learning_rate: peak learning rate at the base width (float or traced scalar).
      num_steps: run length (Python int).
      schedule: a ``metaopt.schedules`` name.
      warmup_steps: linear warm-up steps; default 5% of num_steps.
      param_meta: pytree of ``ParamMeta`` (with ``base_fan_in``), e.g. ``task.param_meta``.
      roles: role overrides for inference.
      multipliers: a pytree of per-tensor scalars used instead of the µP rule.
      base_params: the model at its base width, for inferring roles and base fan-ins.
      **hyper: b1 (0.9), b2 (0.999), eps (1e-8), weight_decay (0.0), final_fraction, decay_fraction.
        Weight decay is applied before the multipliers, so it scales with each tensor's learning rate.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    References:
      Yang et al., "Tensor Programs V", 2022. Therien et al., "µLO", ICLR 2026.
    """
    own, sched = _split_hyper("muadam", hyper, {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": 0.0})
    lr = _learning_rate(learning_rate, num_steps, schedule, warmup_steps, sched)
    parts = [optax.scale_by_adam(b1=own["b1"], b2=own["b2"], eps=own["eps"])]
    if not _is_zero(own["weight_decay"]):
        parts.append(optax.add_decayed_weights(own["weight_decay"]))
    parts.append(scale_by_mup_multipliers(param_meta=param_meta, roles=roles, multipliers=multipliers,
                                          base_params=base_params))
    parts.append(optax.scale_by_learning_rate(lr))
    return optax.with_extra_args_support(optax.chain(*parts))


def lion(learning_rate: Any, num_steps: int, *, schedule: str = "cosine",
         warmup_steps: Optional[int] = None, param_meta: PyTree = None, roles: PyTree = None,
         multipliers: PyTree = None, base_params: PyTree = None, **hyper
         ) -> optax.GradientTransformationExtraArgs:
    """Lion with a scheduled learning rate.

    Args:
      learning_rate: peak learning rate (float or traced scalar); typically 3-10x below Adam's.
      num_steps: run length (Python int).
      schedule: a ``metaopt.schedules`` name.
      warmup_steps: linear warm-up steps; default 5% of num_steps.
      param_meta, roles, multipliers, base_params: accepted for a uniform call shape; unused.
      **hyper: b1 (0.9), b2 (0.99), weight_decay (1e-3), final_fraction, decay_fraction.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    References:
      Chen et al., "Symbolic Discovery of Optimization Algorithms", 2023.
    """
    del param_meta, roles, multipliers, base_params
    own, sched = _split_hyper("lion", hyper, {"b1": 0.9, "b2": 0.99, "weight_decay": 1e-3})
    lr = _learning_rate(learning_rate, num_steps, schedule, warmup_steps, sched)
    return optax.with_extra_args_support(optax.lion(lr, **own))


def sgdm(learning_rate: Any, num_steps: int, *, schedule: str = "cosine",
         warmup_steps: Optional[int] = None, param_meta: PyTree = None, roles: PyTree = None,
         multipliers: PyTree = None, base_params: PyTree = None, **hyper
         ) -> optax.GradientTransformationExtraArgs:
    """SGD with momentum and a scheduled learning rate.

    Args:
      learning_rate: peak learning rate (float or traced scalar).
      num_steps: run length (Python int).
      schedule: a ``metaopt.schedules`` name.
      warmup_steps: linear warm-up steps; default 5% of num_steps.
      param_meta, roles, multipliers, base_params: accepted for a uniform call shape; unused.
      **hyper: momentum (0.9), nesterov (False), weight_decay (0.0), final_fraction, decay_fraction.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    References:
      Polyak, "Some methods of speeding up the convergence of iteration methods", 1964.
    """
    del param_meta, roles, multipliers, base_params
    own, sched = _split_hyper("sgdm", hyper, {"momentum": 0.9, "nesterov": False, "weight_decay": 0.0})
    lr = _learning_rate(learning_rate, num_steps, schedule, warmup_steps, sched)
    parts = []
    if not _is_zero(own["weight_decay"]):
        parts.append(optax.add_decayed_weights(own["weight_decay"]))
    momentum = None if _is_zero(own["momentum"]) else own["momentum"]
    parts.append(optax.sgd(lr, momentum=momentum, nesterov=bool(own["nesterov"])))
    return optax.with_extra_args_support(optax.chain(*parts))


def muon(learning_rate: Any, num_steps: int, *, schedule: str = "cosine",
         warmup_steps: Optional[int] = None, param_meta: PyTree = None, roles: PyTree = None,
         multipliers: PyTree = None, base_params: PyTree = None, **hyper
         ) -> optax.GradientTransformationExtraArgs:
    """Muon with a scheduled learning rate (``optax.contrib.muon``).

    Args:
      learning_rate: peak learning rate (float or traced scalar), shared by the orthogonalised
        matrix updates and the Adam updates of the other tensors.
      num_steps: run length (Python int).
      schedule: a ``metaopt.schedules`` name.
      warmup_steps: linear warm-up steps; default 5% of num_steps.
      param_meta, roles, multipliers, base_params: accepted for a uniform call shape; unused.
      **hyper: beta (0.95), weight_decay (0.0), final_fraction, decay_fraction.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    References:
      Jordan et al., "Muon: An optimizer for hidden layers in neural networks", 2024.
    """
    del param_meta, roles, multipliers, base_params
    own, sched = _split_hyper("muon", hyper, {"beta": 0.95, "weight_decay": 0.0})
    lr = _learning_rate(learning_rate, num_steps, schedule, warmup_steps, sched)
    return optax.with_extra_args_support(
        optax.contrib.muon(lr, beta=own["beta"], weight_decay=own["weight_decay"]))


BASELINES: dict[str, Callable[..., optax.GradientTransformationExtraArgs]] = {
    "adamw": adamw,
    "muadam": muadam,
    "lion": lion,
    "sgdm": sgdm,
    "muon": muon,
}

# (lowest, highest) peak learning rate searched when tuning each baseline: the evaluation program's
# default grids (its shipped suites and docs/RESULTS.md use these), wide enough that the best value of
# the small MLP/CNN/LM tasks lies well inside.
LR_RANGES: dict[str, tuple[float, float]] = {
    "adamw": (1e-4, 1.0),
    "muadam": (1e-4, 1.0),
    "lion": (1e-5, 1e-1),
    "sgdm": (1e-3, 10.0),
    "muon": (1e-4, 1.0),
}


def get_baseline(name: str) -> Callable[..., optax.GradientTransformationExtraArgs]:
    """The factory of the named baseline; raises ``ValueError`` listing the allowed names."""
    if name not in BASELINES:
        raise ValueError(f"baseline: unknown {name!r}; allowed: {sorted(BASELINES)}")
    return BASELINES[name]


def default_lr_grid(name: str, num: int = 10) -> np.ndarray:
    """The log-spaced grid of peak learning rates the evaluation program tunes ``name`` over.

    Args:
      name: a baseline name.
      num: number of grid points (>= 2), spread evenly in log space over ``LR_RANGES[name]``.

    Returns:
      A float64 numpy array of shape ``(num,)``, increasing.
    """
    get_baseline(name)
    if isinstance(num, bool) or not isinstance(num, numbers.Integral) or num < 2:
        raise ValueError(f"num: expected an int >= 2, got {num!r}")
    low, high = LR_RANGES[name]
    return np.geomspace(low, high, int(num))
