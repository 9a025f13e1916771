"""Maximal Update Parametrization (µP) metadata and per-tensor multipliers.

Every tensor of a model has a µP *role*, fixed by which of its dimensions grow with the model's width
(for a weight of shape (fan_in, fan_out)):

- ``hidden``: both fan_in and fan_out grow with width;
- ``input``: only fan_out grows (fan_in is fixed by the data);
- ``output``: only fan_in grows (fan_out is fixed by the number of classes or the vocabulary);
- ``bias``: vectors (biases, normalisation gains): sized by width, fan_in of 1; input-like.

From the role follow two multipliers:

- the learned optimizer's update multiplier s_W (µLO): 1/fan_in for hidden matrices, 1 for every other
  tensor;
- µAdam's learning-rate multiplier: base_fan_in/fan_in for hidden matrices (so a learning rate tuned at
  the base width carries over to any width), 1 for every other tensor.

Tasks attach a ``ParamMeta`` to every tensor. For a user's own model, ``infer_param_meta`` guesses roles
from shapes (most reliably by comparing with the same model built at a base width), and either can be
overridden with a pytree of roles or of multipliers.

References:
  Yang et al., "Tensor Programs V: Tuning Large Neural Networks via Zero-Shot Hyperparameter Transfer",
  2022. Therien et al., "µLO: Compute-Efficient Meta-Generalization of Learned Optimizers", ICLR 2026.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import jax
import numpy as np

ROLES = ("input", "hidden", "output", "bias")


@dataclasses.dataclass(frozen=True)
class ParamMeta:
    """µP metadata of one tensor.

    Attributes:
      role: one of ``ROLES``.
      fan_in: the tensor's fan-in (product of all dimensions but the last for a matrix or a
        convolution kernel; 1 for vectors).
      fan_out: the tensor's last dimension (its size, for vectors).
      base_fan_in: the fan-in this tensor has in the same model at the base width; µAdam's hidden
        multiplier is base_fan_in / fan_in. ``None`` means the tensor is at its base width.
      lr_multiplier: µAdam's learning-rate multiplier when the model's own convention fixes it
        (a task whose readout is scaled by output_mult/width sets base_fan_in/output_mult on its
        readout, so that at the base width every layer moves as under SP Adam); ``None`` means the
        role's default.
    """

    role: str
    fan_in: int
    fan_out: int
    base_fan_in: Optional[int] = None
    lr_multiplier: Optional[float] = None

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"ParamMeta.role: got {self.role!r}, expected one of {ROLES}")
        if self.fan_in < 1 or self.fan_out < 1:
            raise ValueError(f"ParamMeta.fan_in/fan_out must be >= 1, got {self.fan_in}, {self.fan_out}")

    @property
    def lo_multiplier(self) -> float:
        """µLO's update multiplier s_W: 1/fan_in for hidden matrices, 1 otherwise."""
        return 1.0 / self.fan_in if self.role == "hidden" else 1.0

    @property
    def adam_multiplier(self) -> float:
        """µAdam's learning-rate multiplier: base_fan_in/fan_in for hidden matrices, 1 otherwise.

        A ``lr_multiplier`` set by the task takes precedence.
        """
        if self.lr_multiplier is not None:
            return self.lr_multiplier
        if self.role != "hidden":
            return 1.0
        base = self.fan_in if self.base_fan_in is None else self.base_fan_in
        return base / self.fan_in


def _is_meta(x: Any) -> bool:
    return isinstance(x, ParamMeta)


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """(fan_in, fan_out) of a tensor stored as (..., fan_in dims, fan_out) (flax/optax convention)."""
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return 1, int(shape[0])
    return int(math.prod(shape[:-1])), int(shape[-1])


def _role_from_growth(ndim: int, in_grows: bool, out_grows: bool) -> str:
    if ndim <= 1:
        return "bias"
    if in_grows and out_grows:
        return "hidden"
    if in_grows:
        return "output"
    return "input"


def infer_param_meta(params: Any, base_params: Any = None) -> Any:
    """Infers the µP role of every tensor of a model from its shapes.

    With ``base_params`` (the same model built at the base width, arrays or ``jax.ShapeDtypeStruct``s),
    a dimension grows with width exactly when its size differs between the two; this is the reliable
    route (as in the ``mup`` package's base shapes), and it records ``base_fan_in`` for µAdam.

    Without it, a dimension is taken to grow with width when its size occurs both as some matrix's
    input dimension and as some matrix's output dimension (hidden sizes are produced and consumed;
    data features are only consumed, class counts only produced). For convolution kernels
    (..., in_channels, out_channels) the input dimension is ``in_channels``, while ``fan_in`` still
    counts the receptive field. The guess can be wrong for tied or square embeddings: pass ``roles=``
    to ``resolve_param_meta`` to override it. When ``base_params`` has exactly the shapes of
    ``params`` (the model is at its base width, so no dimension is seen to grow), roles come from the
    same guess and every ``base_fan_in`` equals ``fan_in``.

    Args:
      params: a pytree of arrays (or shape structs).
      base_params: optional pytree of the same structure at the base width.

    Returns:
      A pytree of ``ParamMeta`` with the structure of ``params``.
    """
    leaves, treedef = jax.tree.flatten(params)
    shapes = [tuple(np.shape(x)) for x in leaves]
    if base_params is not None:
        base_leaves, base_def = jax.tree.flatten(base_params)
        if base_def != treedef:
            raise ValueError("base_params: structure does not match params "
                             f"({base_def} vs {treedef})")
        base_shapes = [tuple(np.shape(x)) for x in base_leaves]
        for shape, base_shape in zip(shapes, base_shapes):
            if len(base_shape) != len(shape):
                raise ValueError(f"base_params: a tensor of shape {shape} has base shape {base_shape}")
        if base_shapes == shapes:
            # At the base width nothing is seen to grow; comparing would call every hidden matrix
            # "input" and drop µLO's 1/fan_in, so the roles come from the shape heuristic instead.
            metas = [dataclasses.replace(m, base_fan_in=m.fan_in) for m in _heuristic_metas(shapes)]
            return jax.tree.unflatten(treedef, metas)
        metas = []
        for shape, base_shape in zip(shapes, base_shapes):
            fan_in, fan_out = fans(shape)
            base_fan_in, base_fan_out = fans(base_shape)
            role = _role_from_growth(len(shape), fan_in != base_fan_in, fan_out != base_fan_out)
            metas.append(ParamMeta(role, fan_in, fan_out, base_fan_in))
        return jax.tree.unflatten(treedef, metas)
    return jax.tree.unflatten(treedef, _heuristic_metas(shapes))


def _heuristic_metas(shapes: list[tuple[int, ...]]) -> list[ParamMeta]:
    """Roles from which sizes occur both as an input and as an output dimension of some kernel."""
    kernels = [s for s in shapes if len(s) >= 2]
    produced = {s[-1] for s in kernels}
    consumed = {s[-2] for s in kernels}
    width_like = produced & consumed
    metas = []
    for shape in shapes:
        fan_in, fan_out = fans(shape)
        in_grows = len(shape) >= 2 and shape[-2] in width_like
        role = _role_from_growth(len(shape), in_grows, fan_out in width_like)
        metas.append(ParamMeta(role, fan_in, fan_out))
    return metas


def resolve_param_meta(params: Any, param_meta: Any = None, roles: Any = None,
                       base_params: Any = None) -> Any:
    """The ``ParamMeta`` pytree for ``params``: given, or inferred, with optional role overrides.

    Args:
      params: the model's parameters (arrays or shape structs).
      param_meta: a pytree of ``ParamMeta`` (e.g. ``task.param_meta``); inferred when ``None``.
      roles: optional pytree of role strings (or ``None`` leaves to keep the inferred role), matching
        ``params``; overrides the roles.
      base_params: passed to ``infer_param_meta`` when inferring.

    Raises:
      ValueError: a pytree does not match ``params``'s structure, or a role is unknown.
    """
    treedef = jax.tree.structure(params)
    if param_meta is None:
        param_meta = infer_param_meta(params, base_params)
    else:
        meta_def = jax.tree.structure(param_meta, is_leaf=_is_meta)
        if meta_def != treedef:
            raise ValueError(f"param_meta: structure {meta_def} does not match params {treedef}")
    if roles is not None:
        role_leaves = jax.tree.leaves(roles, is_leaf=lambda x: x is None)
        role_def = jax.tree.structure(roles, is_leaf=lambda x: x is None)
        if role_def != treedef:
            raise ValueError(f"roles: structure {role_def} does not match params {treedef}")
        metas = jax.tree.leaves(param_meta, is_leaf=_is_meta)
        merged = [m if r is None else dataclasses.replace(m, role=r) for m, r in zip(metas, role_leaves)]
        param_meta = jax.tree.unflatten(treedef, merged)
    return param_meta


def check_multipliers(params: Any, multipliers: Any, name: str = "multipliers") -> Any:
    """Validates a user pytree of per-tensor multipliers (scalars) against ``params``."""
    treedef = jax.tree.structure(params)
    mult_def = jax.tree.structure(multipliers)
    if mult_def != treedef:
        raise ValueError(f"{name}: structure {mult_def} does not match params {treedef}")
    for m in jax.tree.leaves(multipliers):
        if np.ndim(m) != 0:
            raise ValueError(f"{name}: every leaf must be a scalar, got shape {np.shape(m)}")
    return multipliers


def lo_multipliers(param_meta: Any) -> Any:
    """µLO update multipliers (1/fan_in for hidden matrices, else 1) as a pytree of floats."""
    return jax.tree.map(lambda m: m.lo_multiplier, param_meta, is_leaf=_is_meta)


def adam_multipliers(param_meta: Any) -> Any:
    """µAdam learning-rate multipliers (base_fan_in/fan_in for hidden matrices, else 1)."""
    return jax.tree.map(lambda m: m.adam_multiplier, param_meta, is_leaf=_is_meta)


def roles_of(param_meta: Any) -> Any:
    """The pytree of role strings."""
    return jax.tree.map(lambda m: m.role, param_meta, is_leaf=_is_meta)
