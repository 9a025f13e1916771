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
    # Settings a warm start may change: those that only shape a fresh theta, and those that add
    # entries to it (the added entries keep their fresh values).
    init_fields: ClassVar[tuple] = ()

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

    def warm_start(self, fresh: PyTree, source: "LearnedOptimizer", theta: PyTree) -> PyTree:
        """``fresh`` (from ``init``) with every entry of ``source``'s ``theta`` put in its place.

        Meta-training can start from trained weights (a shipped optimizer) rather than a fresh
        theta. ``source`` must be this optimizer but for ``init_fields``; entries this one adds
        (a weight decay's, say) keep their fresh values.

        Raises:
          ValueError: a different kind, a differing setting outside ``init_fields``, or an entry
            this optimizer lacks or shapes differently, named.
        """
        if source.kind != self.kind:
            raise ValueError(f"kind: the weights are a {source.kind!r}, this optimizer a {self.kind!r}")
        mine, theirs = self.config(), source.config()
        differing = [k for k in sorted(set(mine) | set(theirs))
                     if k not in self.init_fields and mine.get(k) != theirs.get(k)]
        if differing:
            k = differing[0]
            raise ValueError(f"{k}: the weights were trained with {theirs.get(k)!r}, this optimizer has "
                             f"{mine.get(k)!r} (only {list(self.init_fields)} may differ)")
        if not (isinstance(fresh, dict) and isinstance(theta, dict)):
            self.check_theta(theta)
            return theta
        out = dict(fresh)
        for name, value in theta.items():
            if name not in fresh:
                raise ValueError(f"theta[{name!r}]: the weights have it, this optimizer does not")
            if tuple(fresh[name].shape) != tuple(value.shape):
                raise ValueError(f"theta[{name!r}]: shape {tuple(value.shape)} in the weights, "
                                 f"{tuple(fresh[name].shape)} here")
            out[name] = value
        return out
