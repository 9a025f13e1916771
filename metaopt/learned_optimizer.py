"""The shape every learned optimizer and learned schedule in metaopt has.

A learned optimizer is a small, hashable object holding only static architecture choices. Its
meta-parameters ``theta`` are a plain pytree made by ``init(key)`` and passed as an argument to
``transform``, never held as state, so the same code serves ``jax.grad`` with respect to theta
(meta-gradients through an unroll) and ``jax.vmap`` over a population of thetas (evolution
strategies).
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar

import jax
import optax

__all__ = ["register", "lookup", "LearnedOptimizer"]

PyTree = Any

_REGISTRY: dict[str, type["LearnedOptimizer"]] = {}


def register(cls):
    """Class decorator: makes a learned optimizer class restorable from a checkpoint by its ``kind``."""
    _REGISTRY[cls.kind] = cls
    return cls


def lookup(kind: str) -> type["LearnedOptimizer"]:
    """The registered class of ``kind``; raises ``ValueError`` listing the known kinds."""
    if kind not in _REGISTRY:
        raise ValueError(f"kind: unknown learned optimizer {kind!r}; known: {sorted(_REGISTRY)}")
    return _REGISTRY[kind]


class LearnedOptimizer(abc.ABC):
    """Base class: subclasses are frozen dataclasses of static architecture choices."""

    kind: ClassVar[str]

    @abc.abstractmethod
    def init(self, key: jax.Array) -> PyTree:
        """Fresh meta-parameters theta (a pytree of arrays)."""

    @abc.abstractmethod
    def transform(self, theta: PyTree, num_steps: Any, **kwargs) -> optax.GradientTransformationExtraArgs:
        """The optax transformation that theta defines for a run of ``num_steps`` steps.

        ``num_steps`` may be a Python int or a traced integer (inner horizons vary across a
        vmapped population). Keyword arguments carry the per-tensor µP information
        (``param_meta=``, ``roles=``, ``multipliers=``, ``base_params=``) where the optimizer uses it.
        """

    def config(self) -> dict:
        """The JSON-serialisable architecture: enough to rebuild this object with ``from_config``."""
        out = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            out[field.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_config(cls, config: dict) -> "LearnedOptimizer":
        """Rebuilds from ``config()``; raises ``ValueError`` naming an unknown field."""
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(config) - set(names))
        if unknown:
            raise ValueError(f"config: unknown field(s) {unknown} for {cls.__name__}")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
        return cls(**kwargs)

    def check_theta(self, theta: PyTree) -> None:
        """Raises ``ValueError`` when ``theta`` does not have this architecture's structure and shapes."""
        expected = jax.eval_shape(self.init, jax.random.key(0))
        exp_def, got_def = jax.tree.structure(expected), jax.tree.structure(theta)
        if exp_def != got_def:
            raise ValueError(f"theta: structure {got_def} does not match {type(self).__name__}'s {exp_def}")
        for path_leaf, got in zip(jax.tree_util.tree_flatten_with_path(expected)[0], jax.tree.leaves(theta)):
            path, exp = path_leaf
            if tuple(exp.shape) != tuple(getattr(got, "shape", ())):
                raise ValueError(f"theta{jax.tree_util.keystr(path)}: shape {tuple(got.shape)} does not match "
                                 f"expected {tuple(exp.shape)}")
