"""A tiny tanh MLP regressing onto a fixed teacher: a model small enough for optimizer unit tests,
defined here so those tests need no task package."""

import jax
import jax.numpy as jnp
import numpy as np

SIZES = [4, 16, 1]


def init_mlp(key, sizes, dtype=jnp.float32):
    keys = jax.random.split(key, len(sizes))
    return {f"l{i}": {"w": (jax.random.normal(keys[i], (a, b)) / np.sqrt(a)).astype(dtype),
                      "b": jnp.zeros((b,), dtype)}
            for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))}


def apply_mlp(params, x):
    n = len(params)
    for i in range(n):
        x = x @ params[f"l{i}"]["w"] + params[f"l{i}"]["b"]
        if i < n - 1:
            x = jnp.tanh(x)
    return x


TEACHER = init_mlp(jax.random.key(42), SIZES)


def batch(key):
    x = jax.random.normal(key, (32, 4))
    return x, apply_mlp(TEACHER, x)


def loss_fn(params, data):
    """Mean squared error, computed in float32 whatever the parameters' dtype."""
    x, y = data
    pred = apply_mlp(params, x.astype(params["l0"]["w"].dtype))
    return jnp.mean(jnp.square(pred.astype(jnp.float32) - y))
