"""A decoder-only byte-level transformer LM on the Python standard library's sources, µP or SP.

Pre-LN blocks (causal multi-head attention, then a ``mlp_ratio``-wide MLP), learned or sinusoidal
positions, a final LayerNorm and an untied readout over 256 bytes. The number of heads is fixed, so
the head dimension grows with the width: µP scales attention logits by ``attn_mult / d_head``
(SP: ``1 / sqrt(d_head)``) and the readout by ``output_mult / width`` from a zero initialisation.

Roles: byte and position embeddings are input tensors (their fan_in, the vocabulary or the context,
does not grow), LayerNorm gains and biases are bias-like, the attention and MLP matrices are
hidden, the readout is the output.

References:
  Yang et al., "Tensor Programs V: Tuning Large Neural Networks via Zero-Shot Hyperparameter
  Transfer", 2022 (µP attention 1/d scaling). Therien et al., "µLO", ICLR 2026.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from metaopt.tasks import config_checks as checks
from metaopt.tasks import data, nn, normalizers
from metaopt.tasks.base import Task
from metaopt.tasks.family import ConfigFamily

__all__ = ["VOCAB_SIZE", "LMConfig", "sinusoidal_positions", "LMTask", "LMStdlibFamily"]

VOCAB_SIZE = 256


@dataclasses.dataclass(frozen=True)
class LMConfig:
    """A byte-level language-modelling task.

    Attributes:
      width_multiplier: model width d_model = base_width * width_multiplier.
      base_width: d_model at width_multiplier 1; must be divisible by num_heads.
      depth: number of transformer blocks (>= 1).
      num_heads: attention heads (fixed across widths, so d_head = width / num_heads).
      context_length: tokens per training sequence.
      positions: "learned" or "sinusoidal".
      activation: the MLP's activation ("relu", "gelu", "tanh", "silu").
      batch_size: sequences per training batch.
      parametrization: "mup" or "sp".
      mlp_ratio: MLP hidden width over d_model.
      output_mult: µP readout multiplier numerator.
      attn_mult: µP attention multiplier numerator (logits scaled by attn_mult / d_head).
      eval_sequences: held-out sequences in ``eval_loss``.
      seed: picks the train/validation split of the files.
    """

    width_multiplier: float = 1
    base_width: int = 64
    depth: int = 2
    num_heads: int = 4
    context_length: int = 64
    positions: str = "learned"
    activation: str = "gelu"
    batch_size: int = 16
    parametrization: str = "mup"
    mlp_ratio: int = 4
    output_mult: float = 1.0
    attn_mult: float = 1.0
    eval_sequences: int = 8
    seed: int = 0

    def __post_init__(self):
        width = checks.check_width(self)
        checks.check_int("depth", self.depth, minimum=1)
        checks.check_int("num_heads", self.num_heads)
        for name, w in (("base_width", self.base_width), ("width_multiplier", width)):
            if w % self.num_heads:
                raise ValueError(f"{name}: the width {w} must be divisible by num_heads={self.num_heads}")
        checks.check_int("context_length", self.context_length, minimum=2, maximum=4096)
        checks.check_choice("positions", self.positions, ("learned", "sinusoidal"))
        checks.check_choice("activation", self.activation, checks.ACTIVATIONS)
        checks.check_int("batch_size", self.batch_size)
        checks.check_choice("parametrization", self.parametrization, checks.PARAMETRIZATIONS)
        checks.check_int("mlp_ratio", self.mlp_ratio)
        checks.check_positive("output_mult", self.output_mult)
        checks.check_positive("attn_mult", self.attn_mult)
        checks.check_int("eval_sequences", self.eval_sequences, maximum=256)
        checks.check_seed(self)

    @property
    def width(self) -> int:
        return int(round(self.base_width * self.width_multiplier))


def _block_name(i: int) -> str:
    return f"block_{i:02d}"


def _layer_norm_params(width: int) -> dict:
    return {"scale": jnp.ones((width,), jnp.float32), "bias": jnp.zeros((width,), jnp.float32)}


def _init(key: jax.Array, c: LMConfig, width: int) -> dict:
    keys = iter(jax.random.split(key, 3 + 6 * c.depth))
    hidden = c.mlp_ratio * width
    # Embeddings look up rows by a one-hot input, whose effective fan_in is 1: unit variance.
    params = {"embed": jax.random.normal(next(keys), (VOCAB_SIZE, width), jnp.float32)}
    if c.positions == "learned":
        params["pos"] = jax.random.normal(next(keys), (c.context_length, width), jnp.float32)
    else:
        next(keys)
    for i in range(c.depth):
        params[_block_name(i)] = {
            "ln1": _layer_norm_params(width),
            "attn": {name: nn.normal(next(keys), (width, width), width)
                     for name in ("wq", "wk", "wv", "wo")},
            "ln2": _layer_norm_params(width),
            "mlp": {"w1": nn.normal(next(keys), (width, hidden), width),
                    "b1": jnp.zeros((hidden,), jnp.float32),
                    "w2": nn.normal(next(keys), (hidden, width), hidden),
                    "b2": jnp.zeros((width,), jnp.float32)},
        }
    params["ln_f"] = _layer_norm_params(width)
    params["readout"] = {"w": nn.readout_init(next(keys), width, VOCAB_SIZE, c.parametrization),
                         "b": jnp.zeros((VOCAB_SIZE,), jnp.float32)}
    return params


def _roles(c: LMConfig) -> dict:
    ln = {"scale": "bias", "bias": "bias"}
    roles = {"embed": "input"}
    if c.positions == "learned":
        roles["pos"] = "input"
    for i in range(c.depth):
        roles[_block_name(i)] = {
            "ln1": ln, "ln2": ln,
            "attn": {name: "hidden" for name in ("wq", "wk", "wv", "wo")},
            "mlp": {"w1": "hidden", "b1": "bias", "w2": "hidden", "b2": "bias"},
        }
    roles["ln_f"] = ln
    roles["readout"] = {"w": "output", "b": "bias"}
    return roles


def sinusoidal_positions(length: int, width: int) -> np.ndarray:
    """The fixed sine/cosine position table (length, width), entries in [-1, 1]."""
    pos = np.arange(length)[:, None]
    freq = np.exp(-math.log(10000.0) * np.arange(0, width, 2) / width)
    table = np.zeros((length, width), np.float32)
    table[:, 0::2] = np.sin(pos * freq)
    table[:, 1::2] = np.cos(pos * freq)[:, : width // 2]
    # Unit RMS per position, like the learned embeddings.
    return table * np.sqrt(2.0)


def _layer_norm(x: jax.Array, p: dict) -> jax.Array:
    mean = jnp.mean(x, -1, keepdims=True)
    var = jnp.var(x, -1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + 1e-5) * p["scale"] + p["bias"]


@dataclasses.dataclass(frozen=True)
class LMTask(Task):
    """A byte-level LM on stdlib sources; hashable by its config."""

    config: LMConfig

    def __post_init__(self):
        if not isinstance(self.config, LMConfig):
            raise ValueError(f"config: expected an LMConfig, got {type(self.config).__name__}")

    @property
    def data(self) -> data.Corpus:
        return data.stdlib_corpus(self.config.seed)

    def init(self, key: jax.Array) -> dict:
        return _init(key, self.config, self.config.width)

    def apply(self, params: dict, tokens: jax.Array, return_preactivations: bool = False):
        """Next-byte logits (batch, T, 256) for ``tokens`` (batch, T) int, T <= context_length."""
        c = self.config
        width, heads = c.width, c.num_heads
        d_head = width // heads
        t = tokens.shape[-1]
        x = params["embed"][tokens]
        if c.positions == "learned":
            x = x + params["pos"][:t]
        else:
            x = x + jnp.asarray(sinusoidal_positions(t, width))
        if c.parametrization == "mup":
            attn_scale = c.attn_mult / d_head
        else:
            attn_scale = 1.0 / math.sqrt(d_head)
        act = nn.ACTIVATIONS[c.activation]
        mask = jnp.tril(jnp.ones((t, t), bool))
        pre = []
        for i in range(c.depth):
            block = params[_block_name(i)]
            h = _layer_norm(x, block["ln1"])
            a = block["attn"]
            q, k, v = (jnp.reshape(h @ a[n], h.shape[:-1] + (heads, d_head)) for n in ("wq", "wk", "wv"))
            logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * attn_scale
            logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
            weights = jax.nn.softmax(logits, axis=-1)
            out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(h.shape)
            x = x + out @ a["wo"]
            h = _layer_norm(x, block["ln2"])
            m = block["mlp"]
            z = h @ m["w1"] + m["b1"]
            pre.append(z)
            x = x + act(z) @ m["w2"] + m["b2"]
        x = _layer_norm(x, params["ln_f"])
        scale = nn.readout_scale(width, c.parametrization, c.output_mult)
        out = scale * (x @ params["readout"]["w"]) + params["readout"]["b"]
        return (out, pre) if return_preactivations else out

    def _sequences(self, stream: jax.Array, starts: jax.Array) -> jax.Array:
        offsets = starts[:, None] + jnp.arange(self.config.context_length + 1)
        return stream[offsets].astype(jnp.int32)

    def batch(self, key: jax.Array, step: jax.Array = 0) -> dict:
        stream = self.data.train
        max_start = stream.shape[0] - self.config.context_length - 1
        starts = jax.random.randint(key, (self.config.batch_size,), 0, max_start)
        return {"tokens": self._sequences(stream, starts)}

    def loss(self, params: dict, batch: dict) -> jax.Array:
        tokens = batch["tokens"]
        logits = self.apply(params, tokens[:, :-1])
        return nn.cross_entropy(logits, tokens[:, 1:])

    def eval_loss(self, params: dict) -> jax.Array:
        stream = self.data.valid
        c = self.config
        max_start = stream.shape[0] - c.context_length - 1
        # Evenly spaced, fixed windows over the validation files.
        starts = jnp.asarray(np.linspace(0, max_start, c.eval_sequences).astype(np.int32))
        return self.loss(params, {"tokens": self._sequences(stream, starts)})

    def normalize_loss(self, loss: jax.Array) -> jax.Array:
        return normalizers.classification(loss, VOCAB_SIZE)

    @functools.cached_property
    def param_meta(self) -> dict:
        c = self.config
        key = jax.random.key(0)
        shapes = jax.eval_shape(self.init, key)
        base_shapes = jax.eval_shape(lambda k: _init(k, c, c.base_width), key)
        return nn.param_meta_from(_roles(c), shapes, base_shapes, output_mult=nn.mup_output_mult(c))

    @property
    def flops_per_step(self) -> float:
        c = self.config
        w, t = c.width, c.context_length
        per_token_macs = c.depth * (4 * w * w + 2 * c.mlp_ratio * w * w + 2 * t * w) + w * VOCAB_SIZE
        return 3.0 * 2.0 * per_token_macs * t * c.batch_size


class LMStdlibFamily(ConfigFamily):
    """Byte-level transformer LMs: ``get_family("lm_stdlib", widths=(64, 128), depths=(2,))``."""

    name = "lm_stdlib"
    config_class = LMConfig
    task_class = LMTask
