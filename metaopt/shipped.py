"""Meta-trained learned optimizers shipped inside the package, usable with no network.

Each shipped optimizer is a ``metaopt.save`` folder under ``metaopt/pretrained_weights/NAME`` whose
metadata records what made it: the meta-training config, the code version, the command that
reproduces it and what it cost (written by ``python -m meta_train.ship``). ``pretrained(name,
num_steps)`` returns the ready optax transform.

Example::

    tx = metaopt.pretrained("mulo-mlp", num_steps=5000)
    tx = optax.chain(optax.clip_by_global_norm(1.0), tx)
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Any, NamedTuple

import optax

from metaopt import checkpoint

__all__ = [
    "WEIGHTS_PACKAGE", "PretrainedInfo", "info", "list_pretrained", "load_pretrained", "pretrained", "weights_root",
]

WEIGHTS_PACKAGE = "metaopt.pretrained_weights"


class PretrainedInfo(NamedTuple):
    """What a shipped learned optimizer is and how it was made."""

    name: str
    description: str
    kind: str
    command: str
    cost: str
    path: Path


def weights_root() -> Path:
    """The folder of the shipped weights inside the installed package."""
    return Path(str(importlib.resources.files(WEIGHTS_PACKAGE)))


def _names() -> list[str]:
    root = weights_root()
    return sorted(p.name for p in root.iterdir() if checkpoint.is_checkpoint(p))


def _path(name: str) -> Path:
    """The folder of the shipped learned optimizer ``name``; ``ValueError`` listing the shipped ones."""
    names = _names()
    if name not in names:
        raise ValueError(f"name: no pretrained learned optimizer {name!r}; shipped: {names}")
    return weights_root() / name


def info(name: str) -> PretrainedInfo:
    """The record of the shipped learned optimizer ``name`` (read from its manifest; theta is not loaded).

    Raises:
      ValueError: ``name`` is not shipped (the message lists the shipped names).
    """
    path = _path(name)
    record = checkpoint.load_metadata(path).get("pretrained", {})
    return PretrainedInfo(name=name, description=record.get("description", ""),
                          kind=checkpoint.load_kind(path), command=record.get("command", ""),
                          cost=record.get("cost", ""), path=path)


def list_pretrained() -> list[PretrainedInfo]:
    """Every shipped learned optimizer, with a one-line description, its command and its cost."""
    return [info(name) for name in _names()]


def load_pretrained(name: str) -> tuple[Any, Any]:
    """``(lopt, theta)`` of the shipped learned optimizer ``name``."""
    return checkpoint.load(_path(name))


def pretrained(name: str, num_steps: int, **transform_kwargs) -> optax.GradientTransformationExtraArgs:
    """The optax transform of a shipped learned optimizer for a run of ``num_steps`` steps.

    Args:
      name: a shipped name (see ``pretrained.list()``).
      num_steps: the length of the training run (the time features use it).
      **transform_kwargs: passed to the learned optimizer's ``transform`` (``param_meta=``,
        ``roles=``, ``multipliers=``, ``base_params=`` for µP roles; ``base=`` for a schedule).

    Returns:
      An ``optax.GradientTransformationExtraArgs``; pass ``loss=`` to ``update`` where the
      optimizer's features use it.
    """
    lopt, theta = load_pretrained(name)
    return lopt.transform(theta, num_steps, **transform_kwargs)


pretrained.list = list_pretrained  # type: ignore[attr-defined]
pretrained.info = info  # type: ignore[attr-defined]
pretrained.load = load_pretrained  # type: ignore[attr-defined]
