"""Models as researchers write them in flax ``nnx``, and inner tasks that train them.

The models use flax's default initialisation and standard parametrization (no µP readout
multiplier, attention logits scaled by 1/sqrt(head_dim)), so they test the plug-in path of a learned
optimizer the way a user's own model does: roles come from parameter paths and shapes
(``metaopt.mup.infer_param_meta``), nothing here declares them.

- ``MLP``: ``nnx.Linear`` layers with gelu, a 10-class readout;
- ``CNN``: two 3x3 ``nnx.Conv`` layers with average pooling, a dense readout;
- ``Transformer``: ``nnx.Embed`` tokens and positions, pre-norm blocks of causal
  ``nnx.MultiHeadAttention`` and a gelu MLP, ``nnx.LayerNorm``, a dense readout over 256 bytes.

``FlaxTask`` wraps a model and a dataset (digits images, or bytes of the Python standard library)
into the ``metaopt.task_protocol.InnerTask`` protocol, with the params as the plain pytree of
``nnx.state(model, nnx.Param)``, so ``metaopt.unroll.train`` runs a whole training run in one
jitted ``lax.scan``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from metaopt.tasks import data, nn, normalizers

__all__ = ["CNN", "FlaxTask", "MLP", "Transformer", "user_tasks"]

NUM_CLASSES = 10
VOCAB_SIZE = 256


class MLP(nnx.Module):
    """A gelu MLP with ``num_hidden`` hidden layers of ``width`` units."""

    def __init__(self, in_features: int, width: int, num_hidden: int, rngs: nnx.Rngs):
        sizes = [in_features] + [width] * num_hidden
        self.hidden = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])
        self.head = nnx.Linear(width, NUM_CLASSES, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.hidden:
            x = jax.nn.gelu(layer(x))
        return self.head(x)


class CNN(nnx.Module):
    """Two 3x3 convolutions of ``width`` channels (relu, 2x2 average pooling), a dense readout."""

    def __init__(self, width: int, rngs: nnx.Rngs, image_size: int = 8):
        self.conv1 = nnx.Conv(1, width, (3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(width, width, (3, 3), rngs=rngs)
        side = image_size // 4
        self.head = nnx.Linear(width * side * side, NUM_CLASSES, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.avg_pool(jax.nn.relu(self.conv1(x)), (2, 2), strides=(2, 2))
        x = nnx.avg_pool(jax.nn.relu(self.conv2(x)), (2, 2), strides=(2, 2))
        return self.head(x.reshape(x.shape[0], -1))


class Block(nnx.Module):
    """A pre-norm transformer block: causal self-attention and a gelu MLP, each residual."""

    def __init__(self, width: int, num_heads: int, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(width, rngs=rngs)
        self.attention = nnx.MultiHeadAttention(num_heads=num_heads, in_features=width, decode=False,
                                                rngs=rngs)
        self.norm2 = nnx.LayerNorm(width, rngs=rngs)
        self.up = nnx.Linear(width, 4 * width, rngs=rngs)
        self.down = nnx.Linear(4 * width, width, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        mask = nnx.make_causal_mask(jnp.ones(x.shape[:2]))
        x = x + self.attention(self.norm1(x), mask=mask)
        return x + self.down(jax.nn.gelu(self.up(self.norm2(x))))


class Transformer(nnx.Module):
    """A decoder-only byte-level transformer."""

    def __init__(self, width: int, depth: int, num_heads: int, context_length: int, rngs: nnx.Rngs):
        self.tokens = nnx.Embed(VOCAB_SIZE, width, rngs=rngs)
        self.positions = nnx.Embed(context_length, width, rngs=rngs)
        self.blocks = nnx.List([Block(width, num_heads, rngs) for _ in range(depth)])
        self.norm = nnx.LayerNorm(width, rngs=rngs)
        self.head = nnx.Linear(width, VOCAB_SIZE, rngs=rngs)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        x = self.tokens(tokens) + self.positions(jnp.arange(tokens.shape[-1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


@dataclasses.dataclass(frozen=True)
class FlaxTask:
    """An ``InnerTask`` that trains a flax ``nnx`` model built by ``kind`` and its size fields.

    Attributes:
      kind: ``"mlp"`` (digits, flattened), ``"cnn"`` (digits as 8x8 images) or ``"transformer"``
        (next-byte prediction on the standard library's sources).
      width: hidden width (MLP units, CNN channels, transformer model width).
      depth: hidden layers (MLP) or blocks (transformer); unused by the CNN.
      batch_size: training minibatch size (sequences, for the transformer).
      context_length: the transformer's sequence length.
      num_heads: the transformer's attention heads.
      seed: picks the data split.
    """

    kind: str
    width: int
    depth: int = 2
    batch_size: int = 64
    context_length: int = 32
    num_heads: int = 4
    seed: int = 0

    def __post_init__(self):
        if self.kind not in ("mlp", "cnn", "transformer"):
            raise ValueError(f"kind: got {self.kind!r}, expected one of ('mlp', 'cnn', 'transformer')")

    @property
    def name(self) -> str:
        return f"{self.kind}_w{self.width}"

    def model(self, key: jax.Array) -> nnx.Module:
        """A fresh model, initialised by flax's defaults from ``key``."""
        rngs = nnx.Rngs(key)
        if self.kind == "mlp":
            return MLP(64, self.width, self.depth, rngs)
        if self.kind == "cnn":
            return CNN(self.width, rngs)
        return Transformer(self.width, self.depth, self.num_heads, self.context_length, rngs)

    @functools.cached_property
    def _graph(self):
        graphdef, _ = nnx.split(self.model(jax.random.key(0)))
        return graphdef

    @functools.cached_property
    def data(self):
        if self.kind == "transformer":
            return data.stdlib_corpus(self.seed)
        return data.digits_split(self.seed, per_feature=self.kind == "mlp")

    def init(self, key: jax.Array) -> Any:
        """The model's ``nnx.State`` (of ``nnx.Param`` variables), as ``nnx.split`` gives it."""
        return nnx.split(self.model(key))[1]

    def apply(self, params: Any, x: jax.Array) -> jax.Array:
        return nnx.merge(self._graph, params)(x)

    def _inputs(self, x: jax.Array) -> jax.Array:
        return x.reshape(x.shape[0], 8, 8, 1) if self.kind == "cnn" else x

    def _sequences(self, stream: jax.Array, starts: jax.Array) -> jax.Array:
        return stream[starts[:, None] + jnp.arange(self.context_length + 1)].astype(jnp.int32)

    def batch(self, key: jax.Array, step: Any = 0) -> Any:
        if self.kind == "transformer":
            stream = self.data.train
            starts = jax.random.randint(key, (self.batch_size,), 0, stream.shape[0] - self.context_length - 1)
            return {"tokens": self._sequences(stream, starts)}
        d = self.data
        idx = jax.random.randint(key, (self.batch_size,), 0, d.x_train.shape[0])
        return {"x": self._inputs(d.x_train[idx]), "y": d.y_train[idx]}

    def loss(self, params: Any, batch: Any) -> jax.Array:
        if self.kind == "transformer":
            tokens = batch["tokens"]
            return nn.cross_entropy(self.apply(params, tokens[:, :-1]), tokens[:, 1:])
        return nn.cross_entropy(self.apply(params, batch["x"]), batch["y"])

    def eval_loss(self, params: Any) -> jax.Array:
        if self.kind == "transformer":
            stream = self.data.valid
            starts = jnp.linspace(0, stream.shape[0] - self.context_length - 2, 64).astype(jnp.int32)
            return self.loss(params, {"tokens": self._sequences(stream, starts)})
        d = self.data
        return nn.cross_entropy(self.apply(params, self._inputs(d.x_eval)), d.y_eval)

    def normalize_loss(self, loss: jax.Array) -> jax.Array:
        return normalizers.classification(loss, VOCAB_SIZE if self.kind == "transformer" else NUM_CLASSES)

    @property
    def param_meta(self) -> Any:
        """Roles inferred from the model's paths and shapes, as for any user's model (SP)."""
        from metaopt import mup

        return mup.infer_param_meta(jax.eval_shape(self.init, jax.random.key(0)), warn=False)

    @property
    def num_params(self) -> int:
        return sum(x.size for x in jax.tree.leaves(jax.eval_shape(self.init, jax.random.key(0))))

    @property
    def flops_per_step(self) -> float:
        return 6.0 * self.num_params * self.batch_size * (self.context_length if self.kind == "transformer" else 1)


def user_tasks() -> list[FlaxTask]:
    """The six user-style models of the plug-in report: two widths each of MLP, CNN, transformer."""
    return [FlaxTask("mlp", 128), FlaxTask("mlp", 512), FlaxTask("cnn", 16), FlaxTask("cnn", 64),
            FlaxTask("transformer", 64, depth=1, batch_size=16), FlaxTask("transformer", 128, depth=1, batch_size=16)]
