"""µP roles and per-tensor multipliers for any model's parameters: task metadata, flax, or optax.

One pipeline turns a params pytree into per-tensor update multipliers:

1. **roles**: every tensor has a µP *role*, fixed by which of its dimensions grow with the model's
   width. For a weight read as a matrix (fan_in, fan_out):

   - ``hidden``: both grow (dense and conv kernels between hidden layers, attention projections);
   - ``input``: only fan_out grows (the first layer, embeddings);
   - ``output``: only fan_in grows (the readout: classes or vocabulary are fixed);
   - ``bias``: biases and normalisation gains (sized by width, fan_in 1; input-like).

   Roles come from a task's metadata (``task.param_meta``), are inferred from parameter paths and
   shapes (``infer_param_meta``), or are given (``roles=``).
2. **the model's parametrization**: ``"mup"`` when the model multiplies its readout by 1/width in
   the forward pass (metaopt's µP tasks), ``"sp"`` for an ordinary model (a user's flax or optax
   model: the default). It is recorded per tensor in ``ParamMeta.parametrization``.
3. **multipliers**: µLO's update multiplier s_W (``ParamMeta.lo_multiplier``) and µAdam's
   learning-rate multiplier (``ParamMeta.adam_multiplier``); or given outright (``multipliers=``).

µLO's multipliers on a µP model are 1/fan_in for hidden matrices and 1 elsewhere. A standard (SP)
model differs from a µP one only at the readout: the same N(0, 1/fan_in) input and hidden init and
the same biases, but no 1/width multiplier on the logits (Tensor Programs V, Table 3 and its
SP-equivalent formulation). A readout step dW changes the logits of a µP model by h dW / width and
those of the SP model by h dW, so the same learned step is width times too large on the SP model's
readout; multiplying its update by 1/fan_in (fan_in = width) makes the two models' trajectories the
same function of theta. Input, embedding, bias and norm-gain updates carry over unchanged. Hence
on an SP model a µLO uses 1/fan_in for hidden and readout matrices and 1 elsewhere. (A learned
optimizer meta-trained at base width b with a 1/width readout needs no base-width correction: at
every width, µP's readout multiplier is 1/width itself.) What no optimizer can compensate: attention
logits scaled by 1/sqrt(d_head) instead of µP's 1/d_head, a forward-pass choice.

Recognised layouts (flax's conventions, by parameter name and shape): dense kernels (in, out);
convolution kernels (*window, in, out) with fan_in = prod(window) * in and channels as the width;
embeddings (vocab, width), input-like; attention projections in ``DenseGeneral`` layout, query/key/
value (in, heads, head_dim) with fan_in = in and out (heads, head_dim, out) with fan_in =
heads * head_dim; biases and norm scales of any shape. Whatever stays a guess is listed in one
warning; ``param_table`` prints what was decided, so it can be checked before training.

Pytrees given alongside the params (``param_meta=``, ``roles=``, ``multipliers=``,
``base_params=``) are matched to them by path, so a flax ``nnx.State`` of ``nnx.Param`` variables
and the plain arrays that ``nnx.Optimizer`` passes to ``update`` match the same metadata.

References:
  Yang et al., "Tensor Programs V: Tuning Large Neural Networks via Zero-Shot Hyperparameter
  Transfer", 2022. Therien et al., "µLO: Compute-Efficient Meta-Generalization of Learned
  Optimizers", ICLR 2026.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import warnings
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "PARAMETRIZATIONS", "ROLES", "ParamMeta", "adam_multipliers", "check_multipliers", "check_params",
    "fans", "infer_param_meta", "lo_multipliers", "param_table", "resolve_param_meta", "roles_of",
    "tensor_paths", "unwrap",
]

ROLES = ("input", "hidden", "output", "bias")
PARAMETRIZATIONS = ("sp", "mup")

# Parameter names (the last path entry) that say what a tensor is.
_VECTOR_NAMES = frozenset({"bias", "b", "scale", "gamma", "beta", "offset"})
_EMBEDDING_NAMES = frozenset({"embedding", "embeddings", "embed", "wte", "wpe", "pos_embedding",
                              "position_embedding", "token_embedding"})
# Module names (any path entry) of attention projections in DenseGeneral layout.
_ATTENTION_IN = frozenset({"query", "key", "value", "qkv", "q_proj", "k_proj", "v_proj"})
_ATTENTION_OUT = frozenset({"out", "out_proj", "o_proj"})
# Module names of readouts: their output size is the classes or the vocabulary, never the width.
_READOUT_NAMES = frozenset({"head", "lm_head", "readout", "logits", "classifier", "unembed"})


@dataclasses.dataclass(frozen=True)
class ParamMeta:
    """µP metadata of one tensor.

    Attributes:
      role: one of ``ROLES``.
      fan_in: the tensor's fan-in read as a matrix (the input dimension of a dense kernel; window
        times input channels of a convolution; 1 for vectors).
      fan_out: the tensor's output size read as a matrix (its size, for vectors).
      base_fan_in: the fan-in this tensor has in the same model at the base width; µAdam's hidden
        multiplier is base_fan_in / fan_in. ``None`` means the tensor is at its base width.
      lr_multiplier: µAdam's learning-rate multiplier when the model's own convention fixes it
        (a task whose readout is scaled by output_mult/width sets base_fan_in/output_mult on its
        readout, so that at the base width every layer moves as under SP Adam); ``None`` means the
        role's default.
      parametrization: ``"mup"`` when the model scales its readout by 1/width in the forward pass,
        ``"sp"`` when it does not (see the module docstring).
    """

    role: str
    fan_in: int
    fan_out: int
    base_fan_in: Optional[int] = None
    lr_multiplier: Optional[float] = None
    parametrization: str = "mup"

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"ParamMeta.role: got {self.role!r}, expected one of {ROLES}")
        if self.fan_in < 1 or self.fan_out < 1:
            raise ValueError(f"ParamMeta.fan_in/fan_out must be >= 1, got {self.fan_in}, {self.fan_out}")
        if self.parametrization not in PARAMETRIZATIONS:
            raise ValueError(f"ParamMeta.parametrization: got {self.parametrization!r}, "
                             f"expected one of {PARAMETRIZATIONS}")

    @property
    def lo_multiplier(self) -> float:
        """µLO's update multiplier s_W: 1/fan_in for hidden matrices, and for the readout of an SP
        model (which has no 1/width output multiplier); 1 otherwise."""
        if self.role == "hidden" or (self.role == "output" and self.parametrization == "sp"):
            return 1.0 / self.fan_in
        return 1.0

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
    """(fan_in, fan_out) of a dense or convolution kernel (..., in, out) (flax/optax convention)."""
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return 1, int(shape[0])
    return int(math.prod(shape[:-1])), int(shape[-1])


# --- paths: matching pytrees to params ---------------------------------------------------------

def _is_variable(x: Any) -> bool:
    """A flax ``nnx.Variable`` (``nnx.Param`` ...), recognised without importing flax."""
    nnx = sys.modules.get("flax.nnx")
    return nnx is not None and isinstance(x, nnx.Variable)


def _value(variable: Any) -> Any:
    return variable.get_value() if hasattr(variable, "get_value") else variable.value


def unwrap(tree: Any) -> Any:
    """``tree`` with flax ``nnx`` variables replaced by their values (the structure ``update`` sees)."""
    return jax.tree.map(lambda x: _value(x) if _is_variable(x) else x, tree, is_leaf=_is_variable)


def _key_name(key: Any) -> Optional[str]:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _path_string(path: tuple) -> str:
    names = [_key_name(k) for k in path]
    # An nnx Variable flattens to its value through an attribute named "value".
    if names and names[-1] == "value" and isinstance(path[-1], jax.tree_util.GetAttrKey):
        names = names[:-1]
    return "/".join(names)


def _flatten_by_path(tree: Any, is_leaf: Optional[Callable[[Any], bool]] = None
                     ) -> tuple[list[str], list[Any]]:
    def leaf_test(x):
        return _is_variable(x) or (is_leaf is not None and is_leaf(x))

    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=leaf_test)
    paths, leaves = [], []
    for path, leaf in flat:
        paths.append(_path_string(path))
        leaves.append(_value(leaf) if _is_variable(leaf) else leaf)
    return paths, leaves


def tensor_paths(params: Any) -> list[str]:
    """The path of every tensor of ``params`` ("layer/kernel"), in ``jax.tree.leaves`` order."""
    return _flatten_by_path(params)[0]


def _match(params: Any, tree: Any, name: str, is_leaf: Optional[Callable[[Any], bool]] = None
           ) -> list[Any]:
    """The leaves of ``tree`` in the order of ``params``'s tensors, matched by path.

    Raises ``ValueError`` naming ``name`` and the paths that are missing or unexpected.
    """
    param_paths = tensor_paths(params)
    paths, leaves = _flatten_by_path(tree, is_leaf)
    by_path = dict(zip(paths, leaves))
    missing = [p for p in param_paths if p not in by_path]
    extra = [p for p in paths if p not in set(param_paths)]
    if missing or extra or len(by_path) != len(paths):
        parts = []
        if missing:
            parts.append(f"no entry for {missing[:5]}")
        if extra:
            parts.append(f"unexpected {extra[:5]}")
        if len(by_path) != len(paths):
            parts.append("repeated paths")
        raise ValueError(f"{name}: structure does not match params ({'; '.join(parts)})")
    return [by_path[p] for p in param_paths]


def _rebuild(params: Any, leaves: list[Any]) -> Any:
    """A pytree with the structure of ``unwrap(params)`` holding ``leaves``."""
    return jax.tree.unflatten(jax.tree.structure(unwrap(params)), leaves)


def check_params(params: Any, name: str = "params") -> None:
    """Raises ``ValueError`` unless every tensor of ``params`` is a real floating-point array and
    there is at least one: the message names the offending tensor."""
    paths, leaves = _flatten_by_path(params)
    if not leaves:
        raise ValueError(f"{name}: no tensors to optimise (the pytree has no array leaves)")
    for path, leaf in zip(paths, leaves):
        dtype = np.dtype(leaf.dtype) if hasattr(leaf, "dtype") else np.asarray(leaf).dtype
        if jnp.issubdtype(dtype, jnp.complexfloating):
            raise ValueError(f"{name}[{path!r}]: complex dtype {dtype} is not supported; "
                             "learned optimizers train real floating-point tensors")
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(f"{name}[{path!r}]: dtype {dtype} is not a floating-point type; "
                             "pass only the trainable float tensors (e.g. nnx.state(model, nnx.Param))")


# --- how each tensor reads as a matrix -----------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _View:
    """A tensor read as a matrix: its kind, the sizes it consumes and produces, and its fans."""

    kind: str  # "vector", "embedding", "dense", "conv", "attention_in", "attention_out"
    in_size: int
    out_size: int
    fan_in: int
    fan_out: int
    note: Optional[str] = None  # why the reading is a guess
    readout: bool = False  # a dense kernel in a module named like a readout


def _view(path: str, shape: tuple[int, ...]) -> _View:
    names = [n.lower() for n in path.split("/") if n]
    leaf = names[-1] if names else ""
    ndim = len(shape)
    size = int(math.prod(shape)) if shape else 1
    if ndim <= 1 or leaf in _VECTOR_NAMES:
        return _View("vector", 1, size, 1, size)
    if ndim == 2 and (leaf in _EMBEDDING_NAMES or any("embed" in n for n in names)):
        return _View("embedding", shape[0], shape[1], shape[0], shape[1])
    if ndim == 2:
        readout = any(n in _READOUT_NAMES for n in names[:-1])
        return _View("dense", shape[0], shape[1], shape[0], shape[1], readout=readout)
    if ndim == 3 and any(n in _ATTENTION_IN for n in names):
        return _View("attention_in", shape[0], shape[1] * shape[2], shape[0], shape[1] * shape[2])
    if ndim == 3 and any(n in _ATTENTION_OUT for n in names):
        return _View("attention_out", shape[0] * shape[1], shape[2], shape[0] * shape[1], shape[2])
    note = None
    if ndim == 3 and not any("conv" in n for n in names):
        note = "a 3-D kernel read as a 1-D convolution (window, in, out)"
    fan_in, fan_out = fans(shape)
    return _View("conv", shape[-2], shape[-1], fan_in, fan_out, note)


def _role(view: _View, in_grows: bool, out_grows: bool) -> tuple[str, Optional[str]]:
    if view.readout and in_grows:
        return "output", None
    if view.kind == "vector":
        return "bias", None
    if view.kind == "embedding":
        return "input", None
    if in_grows and out_grows:
        return "hidden", view.note
    if in_grows:
        return "output", view.note
    if out_grows:
        return "input", view.note
    return "input", "neither dimension looks like the width; read as input-like"


def _heuristic_roles(views: list[_View]) -> list[tuple[str, Optional[str]]]:
    """Roles from which sizes are both produced and consumed by kernels (widths are; data
    features are only consumed, classes and vocabularies only produced). A dense kernel after a
    flattened convolution consumes channels x positions: a conv's channel count that divides it
    counts as consumed."""
    kernels = [v for v in views if v.kind != "vector"]
    produced = {v.out_size for v in kernels}
    consumed = {v.in_size for v in kernels if v.kind != "embedding"}
    conv_channels = {v.out_size for v in kernels if v.kind == "conv" and v.out_size > 1}

    def flattened(v: _View) -> set:  # conv channel counts a dense kernel's input is a multiple of
        if v.kind != "dense":
            return set()
        return {c for c in conv_channels if v.in_size % c == 0 and v.in_size > c}

    for v in kernels:
        consumed |= flattened(v)
    width_like = produced & consumed
    return [_role(v, v.in_size in width_like or bool(flattened(v) & width_like), v.out_size in width_like)
            for v in views]


def infer_param_meta(params: Any, base_params: Any = None, parametrization: str = "sp",
                     warn: bool = True) -> Any:
    """Infers the µP role and fans of every tensor of a model from its parameter paths and shapes.

    Each tensor is first read as a matrix from its name and shape (see the module docstring). With
    ``base_params`` (the same model built at another width, arrays or ``jax.ShapeDtypeStruct``s), a
    matrix dimension grows with width exactly when its size differs between the two: the reliable
    route (as in the ``mup`` package's base shapes), which also records ``base_fan_in`` for µAdam.
    Without it (or when the two have the same shapes), a dimension is taken to grow with width when
    its size is both produced and consumed by some kernel. Guesses (a kernel where neither
    dimension looks like the width, a 3-D kernel outside attention and conv modules, an embedding in
    a model with no readout, which may be tied) are listed in one warning.

    Args:
      params: a pytree of arrays (or shape structs), flax ``nnx`` variables allowed.
      base_params: optional pytree of the same paths at the base width.
      parametrization: ``"sp"`` (the model has no 1/width readout multiplier: the usual case) or
        ``"mup"``.
      warn: emit the warning listing guesses.

    Returns:
      A pytree of ``ParamMeta`` with the structure of ``unwrap(params)``.
    """
    if parametrization not in PARAMETRIZATIONS:
        raise ValueError(f"parametrization: got {parametrization!r}, expected one of {PARAMETRIZATIONS}")
    paths, leaves = _flatten_by_path(params)
    shapes = [tuple(int(d) for d in np.shape(x)) for x in leaves]
    views = [_view(p, s) for p, s in zip(paths, shapes)]
    base_fan_ins = [v.fan_in for v in views]
    decided = None
    if base_params is not None:
        base_shapes = [tuple(int(d) for d in np.shape(x)) for x in _match(params, base_params, "base_params")]
        for path, shape, base_shape in zip(paths, shapes, base_shapes):
            if len(base_shape) != len(shape):
                raise ValueError(f"base_params[{path!r}]: a tensor of shape {shape} has base shape {base_shape}")
        if base_shapes != shapes:
            base_views = [_view(p, s) for p, s in zip(paths, base_shapes)]
            base_fan_ins = [b.fan_in for b in base_views]
            decided = [_role(v, v.in_size != b.in_size, v.out_size != b.out_size)
                       for v, b in zip(views, base_views)]
    if decided is None:
        decided = _heuristic_roles(views)
    roles = [r for r, _ in decided]
    notes = [n for _, n in decided]
    if "output" not in roles:
        for i, v in enumerate(views):
            if v.kind == "embedding":
                notes[i] = ("no readout found: if this embedding is also the readout (tied), "
                            "give its multiplier with multipliers=")
    metas = [ParamMeta(role, v.fan_in, v.fan_out, base, None, parametrization)
             for role, v, base in zip(roles, views, base_fan_ins)]
    guesses = [f"{p} {s}: {n}" for p, s, n in zip(paths, shapes, notes) if n]
    if warn and guesses:
        warnings.warn("metaopt.mup: µP roles guessed for " + "; ".join(guesses)
                      + ". Check with metaopt.mup.param_table(params); pass roles=, base_params= or "
                      "multipliers= to decide them.", stacklevel=2)
    return _rebuild(params, metas)


def resolve_param_meta(params: Any, param_meta: Any = None, roles: Any = None,
                       base_params: Any = None, parametrization: Optional[str] = None) -> Any:
    """The ``ParamMeta`` pytree for ``params``: given, or inferred, with optional role overrides.

    Args:
      params: the model's parameters (arrays or shape structs; flax ``nnx`` variables allowed).
      param_meta: a pytree of ``ParamMeta`` (e.g. ``task.param_meta``); inferred when ``None``.
      roles: optional pytree of role strings (or ``None`` leaves to keep the inferred role),
        matching ``params`` by path; overrides the roles.
      base_params: passed to ``infer_param_meta`` when inferring.
      parametrization: ``"sp"`` or ``"mup"``; overrides the metadata's. ``None`` keeps a given
        ``param_meta``'s and means ``"sp"`` when inferring (a user's model is standard unless said
        otherwise).

    Returns:
      A pytree of ``ParamMeta`` with the structure of ``unwrap(params)``.

    Raises:
      ValueError: a pytree does not match ``params`` (naming the paths), or a role is unknown.
    """
    if parametrization is not None and parametrization not in PARAMETRIZATIONS:
        raise ValueError(f"parametrization: got {parametrization!r}, expected one of {PARAMETRIZATIONS}")
    if param_meta is None:
        metas = jax.tree.leaves(infer_param_meta(params, base_params, parametrization or "sp"),
                                is_leaf=_is_meta)
    else:
        metas = _match(params, param_meta, "param_meta", is_leaf=_is_meta)
        for path, m in zip(tensor_paths(params), metas):
            if not _is_meta(m):
                raise ValueError(f"param_meta[{path!r}]: expected a ParamMeta, got {type(m).__name__}")
        if parametrization is not None:
            metas = [dataclasses.replace(m, parametrization=parametrization) for m in metas]
    if roles is not None:
        role_leaves = _match(params, roles, "roles", is_leaf=lambda x: x is None)
        for path, r in zip(tensor_paths(params), role_leaves):
            if r is not None and r not in ROLES:
                raise ValueError(f"roles[{path!r}]: got {r!r}, expected one of {ROLES} or None")
        metas = [m if r is None else dataclasses.replace(m, role=r) for m, r in zip(metas, role_leaves)]
    return _rebuild(params, metas)


def check_multipliers(params: Any, multipliers: Any, name: str = "multipliers") -> Any:
    """Validates a pytree of per-tensor multipliers (finite scalars >= 0) against ``params``.

    Returns:
      The multipliers as floats, with the structure of ``unwrap(params)``.
    """
    leaves = _match(params, multipliers, name)
    out = []
    for path, m in zip(tensor_paths(params), leaves):
        if np.ndim(m) != 0:
            raise ValueError(f"{name}[{path!r}]: every leaf must be a scalar, got shape {np.shape(m)}")
        if not isinstance(m, jax.core.Tracer):
            value = float(np.asarray(m))
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}[{path!r}]: must be a finite number >= 0, got {value}")
        out.append(m)
    return _rebuild(params, out)


def lo_multipliers(param_meta: Any) -> Any:
    """µLO update multipliers (``ParamMeta.lo_multiplier``) as a pytree of floats."""
    return jax.tree.map(lambda m: m.lo_multiplier, param_meta, is_leaf=_is_meta)


def adam_multipliers(param_meta: Any) -> Any:
    """µAdam learning-rate multipliers (base_fan_in/fan_in for hidden matrices, else 1)."""
    return jax.tree.map(lambda m: m.adam_multiplier, param_meta, is_leaf=_is_meta)


def roles_of(param_meta: Any) -> Any:
    """The pytree of role strings."""
    return jax.tree.map(lambda m: m.role, param_meta, is_leaf=_is_meta)


def param_table(params: Any, param_meta: Any = None, *, roles: Any = None, base_params: Any = None,
                parametrization: Optional[str] = None, multipliers: Any = None) -> str:
    """The table a learned optimizer will use for ``params``: path, shape, role, fan_in, and the
    µLO and µAdam multipliers (or the given ``multipliers``), one tensor per row.

    Takes the same arguments as the learned optimizers' ``transform`` and decides roles the same
    way, so ``print(metaopt.mup.param_table(params))`` shows what training will do.
    """
    paths, leaves = _flatten_by_path(params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metas = jax.tree.leaves(resolve_param_meta(params, param_meta, roles, base_params, parametrization),
                                is_leaf=_is_meta)
    given = None if multipliers is None else jax.tree.leaves(check_multipliers(params, multipliers))
    header = ["path", "shape", "role", "fan_in", "µLO mult" if given is None else "multiplier",
              "µAdam mult", "parametrization"]
    rows = []
    for i, (path, leaf, m) in enumerate(zip(paths, leaves, metas)):
        mult = m.lo_multiplier if given is None else float(given[i])
        rows.append([path, str(tuple(np.shape(leaf))), m.role, str(m.fan_in), f"{mult:.4g}",
                     f"{m.adam_multiplier:.4g}", m.parametrization])
    widths = [max(len(r[j]) for r in [header] + rows) for j in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header] + rows]
    return "\n".join(lines)
