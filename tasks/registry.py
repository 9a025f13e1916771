"""The registry of task families by name: ``get_family``, ``list_families``, ``register_family``."""

from __future__ import annotations

from typing import Any, Callable

from metaopt.tasks.base import TaskFamily

__all__ = ["register_family", "get_family", "list_families"]

_FAMILIES: dict[str, Callable[..., TaskFamily]] = {}


def register_family(name: str, factory: Callable[..., TaskFamily] | None = None):
    """Registers ``factory(**kwargs) -> TaskFamily`` under ``name``; usable as a class decorator.

    Raises:
      ValueError: ``name`` is already registered to a different factory.
    """

    def add(f):
        if _FAMILIES.get(name, f) is not f:
            raise ValueError(f"name: task family {name!r} is already registered")
        _FAMILIES[name] = f
        return f

    return add if factory is None else add(factory)


def get_family(name: str, **family_kwargs: Any) -> TaskFamily:
    """The task family ``name`` with its distribution set by ``family_kwargs``.

    Example: ``get_family("mlp_mnist1d", widths=(64, 128), depths=(3,), activations=("relu",))``.

    Raises:
      ValueError: unknown ``name`` (the message lists the known families) or a bad keyword.
    """
    if name not in _FAMILIES:
        raise ValueError(f"name: unknown task family {name!r}; known: {list_families()}")
    return _FAMILIES[name](**family_kwargs)


def list_families() -> list[str]:
    """Names of the registered task families, sorted."""
    return sorted(_FAMILIES)
