"""Model building blocks in µP and SP form: initialisers, activations, dense MLPs, param metadata.

Both parametrizations initialise input and hidden weights N(0, 1/fan_in) and biases at zero. They
differ at the readout: SP draws it N(0, 1/fan_in) and applies it as is; µP initialises it at zero and
multiplies its output by ``output_mult / width``, which keeps the logits' updates Θ(1) as the width
grows (with µAdam's per-tensor learning rates, or a µLO learned optimizer).

``output_mult = 1`` is µLO's readout (1/fan_in), balanced against its 1/fan_in hidden update
multiplier. µAdam's hidden multiplier is base_fan_in/fan_in instead, so against that readout a plain
learning rate would move the readout base_width times more slowly than the hidden layers; the
readout's metadata therefore carries µAdam's own multiplier base_fan_in/output_mult
(``ParamMeta.lr_multiplier``), which restores SP's balance at the base width and keeps the µP
scaling in width.

References:
  Yang et al., "Tensor Programs V: Tuning Large Neural Networks via Zero-Shot Hyperparameter
  Transfer", 2022. Therien et al., "µLO: Compute-Efficient Meta-Generalization of Learned
  Optimizers", ICLR 2026.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from metaopt import mup

__all__ = [
    "ACTIVATIONS", "normal", "readout_init", "readout_scale", "layer_name", "mlp_sizes", "mlp_init",
    "mlp_roles", "mlp_apply", "matmul_flops", "mup_output_mult", "param_meta_from", "cross_entropy",
]

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    "tanh": jnp.tanh,
    "silu": jax.nn.silu,
}


def normal(key: jax.Array, shape: tuple[int, ...], fan_in: int) -> jax.Array:
    """N(0, 1/fan_in) weights."""
    return jax.random.normal(key, shape, jnp.float32) / jnp.sqrt(jnp.float32(fan_in))


def readout_init(key: jax.Array, fan_in: int, fan_out: int, parametrization: str) -> jax.Array:
    """The readout matrix: zeros in µP, N(0, 1/fan_in) in SP."""
    if parametrization == "mup":
        return jnp.zeros((fan_in, fan_out), jnp.float32)
    return normal(key, (fan_in, fan_out), fan_in)


def readout_scale(width: int, parametrization: str, output_mult: float) -> float:
    """The readout's output multiplier: ``output_mult / width`` in µP, 1 in SP."""
    return output_mult / width if parametrization == "mup" else 1.0


def layer_name(i: int) -> str:
    return f"layer_{i:02d}"


def mlp_sizes(in_dim: int, width: int, depth: int, out_dim: int) -> list[int]:
    """Layer sizes of an MLP with ``depth`` weight matrices."""
    return [in_dim] + [width] * (depth - 1) + [out_dim]


def mlp_init(key: jax.Array, sizes: list[int], parametrization: str) -> dict:
    """Parameters ``{"layer_00": {"w", "b"}, ...}`` of an MLP with layer ``sizes``."""
    keys = jax.random.split(key, len(sizes) - 1)
    params = {}
    last = len(sizes) - 2
    for i, (k, fan_in, fan_out) in enumerate(zip(keys, sizes[:-1], sizes[1:])):
        w = readout_init(k, fan_in, fan_out, parametrization) if i == last else normal(
            k, (fan_in, fan_out), fan_in)
        params[layer_name(i)] = {"w": w, "b": jnp.zeros((fan_out,), jnp.float32)}
    return params


def mlp_roles(depth: int) -> dict:
    """µP roles of ``mlp_init``'s parameters: input, hidden ..., output; biases are ``bias``."""
    roles = {}
    for i in range(depth):
        role = "input" if i == 0 else ("output" if i == depth - 1 else "hidden")
        roles[layer_name(i)] = {"w": role, "b": "bias"}
    return roles


def mlp_apply(params: dict, x: jax.Array, activation: str, out_scale: float,
              return_preactivations: bool = False):
    """Runs the MLP on ``x`` (batch, in_dim).

    Args:
      params: from ``mlp_init``.
      x: inputs.
      activation: a name in ``ACTIVATIONS``.
      out_scale: the readout multiplier (``readout_scale``).
      return_preactivations: also return the list of hidden pre-activations (for coordinate checks).

    Returns:
      The outputs (batch, out_dim), and the hidden pre-activations if asked for.
    """
    act = ACTIVATIONS[activation]
    depth = len(params)
    h, pre = x, []
    for i in range(depth - 1):
        layer = params[layer_name(i)]
        z = h @ layer["w"] + layer["b"]
        pre.append(z)
        h = act(z)
    last = params[layer_name(depth - 1)]
    out = out_scale * (h @ last["w"]) + last["b"]
    return (out, pre) if return_preactivations else out


def matmul_flops(sizes: list[int], batch_size: int) -> float:
    """Forward multiply-add FLOPs (2 per MAC) of an MLP with layer ``sizes`` on a batch."""
    return 2.0 * batch_size * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


def mup_output_mult(config: Any) -> float | None:
    """``config.output_mult`` in µP form, ``None`` in SP (whose readout has no multiplier)."""
    return config.output_mult if config.parametrization == "mup" else None


def param_meta_from(roles: Any, params_shape: Any, base_params_shape: Any,
                    output_mult: float | None = None) -> Any:
    """A pytree of ``ParamMeta`` from explicit roles, the shapes, and the shapes at the base width.

    Args:
      roles: pytree of role strings matching the parameters.
      params_shape: the parameters' shapes (``jax.eval_shape`` of ``init``).
      base_params_shape: the same model's shapes at the base width.
      output_mult: the µP readout's multiplier numerator (readout scaled by ``output_mult / width``);
        when given, the readout's µAdam learning-rate multiplier is ``base_fan_in / output_mult``, so
        that at the base width the readout moves as under SP Adam while µLO's 1/width readout stays
        balanced against its 1/fan_in hidden update. ``None`` (SP) keeps the role's default.

    Every ``ParamMeta`` records the parametrization: ``"mup"`` when ``output_mult`` is given,
    ``"sp"`` otherwise (a µLO then scales the SP readout's update by 1/fan_in; see ``metaopt.mup``).
    """
    parametrization = "sp" if output_mult is None else "mup"
    leaves, treedef = jax.tree.flatten(params_shape)
    base_leaves = treedef.flatten_up_to(base_params_shape)
    role_leaves = treedef.flatten_up_to(roles)
    metas = []
    for role, leaf, base in zip(role_leaves, leaves, base_leaves):
        fan_in, fan_out = mup.fans(tuple(leaf.shape))
        base_fan_in, _ = mup.fans(tuple(base.shape))
        lr_multiplier = None
        if role == "output" and output_mult is not None:
            lr_multiplier = base_fan_in / output_mult
        metas.append(mup.ParamMeta(role, fan_in, fan_out, base_fan_in, lr_multiplier, parametrization))
    return jax.tree.unflatten(treedef, metas)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy with integer labels."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, labels[..., None], axis=-1))
