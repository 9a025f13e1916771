"""Validation of task config fields: one-line ``ValueError``s that name the field and what is allowed.

Task configs call these from ``__post_init__``, so a bad value fails as soon as a config is made
(``family.make_config``, ``dataclasses.replace``) rather than deep inside a jitted function.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Sequence

__all__ = [
    "ACTIVATIONS", "PARAMETRIZATIONS", "check_int", "check_positive", "check_choice", "check_bool",
    "check_width", "check_seed",
]

ACTIVATIONS = ("relu", "gelu", "tanh", "silu")
PARAMETRIZATIONS = ("mup", "sp")


def check_int(name: str, value: Any, minimum: int = 1, maximum: int | None = None) -> None:
    """``value`` is an integer (not a bool) in [minimum, maximum]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name}: expected an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        upper = "" if maximum is None else f" and <= {maximum}"
        raise ValueError(f"{name}: must be >= {minimum}{upper}, got {value}")


def check_positive(name: str, value: Any, allow_zero: bool = False) -> None:
    """``value`` is a finite real number > 0 (or >= 0 with ``allow_zero``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}: must be {bound}, got {value}")


def check_choice(name: str, value: Any, allowed: Sequence[Any]) -> None:
    """``value`` is one of ``allowed``."""
    if value not in tuple(allowed):
        raise ValueError(f"{name}: got {value!r}, expected one of {tuple(allowed)}")


def check_bool(name: str, value: Any) -> None:
    """``value`` is a bool."""
    if not isinstance(value, bool):
        raise ValueError(f"{name}: expected True or False, got {value!r}")


def check_width(config: Any) -> int:
    """Validates ``base_width`` and ``width_multiplier``; returns width = base_width * width_multiplier.

    The width must come out a positive integer, so multipliers below 1 are allowed when they divide
    the base width (base_width 128, width_multiplier 0.5 is width 64).
    """
    check_int("base_width", config.base_width)
    check_positive("width_multiplier", config.width_multiplier)
    width = config.base_width * config.width_multiplier
    if abs(width - round(width)) > 1e-6 or round(width) < 1:
        raise ValueError(f"width_multiplier: base_width * width_multiplier must be a positive integer, "
                         f"got {config.base_width} * {config.width_multiplier}")
    return int(round(width))


def check_seed(config: Any) -> None:
    check_int("seed", config.seed, minimum=0)
