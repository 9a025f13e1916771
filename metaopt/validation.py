"""Checks of constructor arguments: one-line errors that name the field and say what is allowed.

A value of the wrong type raises ``TypeError``, a value of the right type out of its range (or not
finite) raises ``ValueError``; both messages read ``FIELD: expected WHAT ALLOWED, got VALUE``.
NumPy scalars count as the Python numbers they hold; ``bool`` is never taken for a number.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Optional, Sequence


__all__ = ["MAX_INT32", "MAX_SEED", "check_int", "check_bool", "check_number", "check_decays", "check_choice",
           "check_name", "check_mapping"]

# The largest count a step counter (int32) holds.
MAX_INT32 = 2**31 - 1
# The largest seed ``jax.random.key`` tells apart (it keeps 32 bits: 2**32 gives the key of 0).
MAX_SEED = 2**32 - 1


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_int(value: Any, field: str, minimum: int = 1, maximum: Optional[int] = None) -> int:
    """An int >= ``minimum`` (and <= ``maximum`` when given)."""
    what = f"an int >= {minimum}"
    if not _is_int(value):
        raise TypeError(f"{field}: expected {what}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{field}: expected {what}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{field}: expected an int in [{minimum}, {maximum}], got {value!r}")
    return int(value)


def check_bool(value: Any, field: str) -> bool:
    """True or False (not 0, 1 or a string)."""
    if not isinstance(value, bool):
        raise TypeError(f"{field}: expected True or False, got {value!r}")
    return value


def _range_text(low: Optional[float], high: Optional[float], low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"a number {'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"a number {'<' if high_open else '<='} {high:g}"
    return "a finite number"


def check_number(value: Any, field: str, *, low: Optional[float] = None, high: Optional[float] = None,
                 low_open: bool = False, high_open: bool = False, allow_none: bool = False) -> Any:
    """A finite real number in the given range (``None`` too when ``allow_none``)."""
    if value is None and allow_none:
        return None
    what = _range_text(low, high, low_open, high_open) + (" or None" if allow_none else "")
    if not _is_real(value):
        raise TypeError(f"{field}: expected {what}, got {value!r}")
    number = float(value)
    if (not math.isfinite(number)
            or (low is not None and (number <= low if low_open else number < low))
            or (high is not None and (number >= high if high_open else number > high))):
        raise ValueError(f"{field}: expected {what}, got {value!r}")
    return value


def check_decays(value: Any, field: str) -> tuple:
    """A non-empty list or tuple of decays in [0, 1)."""
    what = "a non-empty list of decays in [0, 1)"
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{field}: expected {what}, got {value!r}")
    if not value:
        raise ValueError(f"{field}: expected {what}, got {value!r}")
    for i, d in enumerate(value):
        if not _is_real(d):
            raise TypeError(f"{field}: expected {what}, got {value!r} (entry {i} is {d!r})")
        if not (math.isfinite(float(d)) and 0.0 <= float(d) < 1.0):
            raise ValueError(f"{field}: expected {what}, got {value!r} (entry {i} is {d!r})")
    return tuple(value)


def check_choice(value: Any, field: str, choices: Sequence[str]) -> str:
    """One of ``choices``."""
    if not isinstance(value, str):
        raise TypeError(f"{field}: expected one of {list(choices)}, got {value!r}")
    if value not in choices:
        raise ValueError(f"{field}: expected one of {list(choices)}, got {value!r}")
    return value


def check_name(value: Any, field: str, pattern: bool = True) -> str:
    """A non-empty string; with ``pattern``, of letters, digits, '_', '-' and '.' only (a file name)."""
    if not isinstance(value, str) or not value:
        raise TypeError(f"{field}: expected a non-empty string, got {value!r}")
    if pattern and not all(c.isalnum() or c in "_.-" for c in value):
        raise ValueError(f"{field}: expected letters, digits, '_', '-' or '.', got {value!r}")
    return value


def check_mapping(value: Any, field: str) -> dict:
    """A mapping (a dict)."""
    if not isinstance(value, dict):
        raise TypeError(f"{field}: expected a mapping, got {value!r}")
    return value
