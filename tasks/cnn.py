"""A small CNN classifier on scikit-learn's 8x8 digits, in µP or SP form.

``depth - 1`` convolutions (``kernel_size`` square, "SAME" padding, ``width`` channels; the first
at stride 1, later ones at stride 2 down to 2x2), a global average pool, and a dense readout. µP
roles for a kernel of shape (kh, kw, cin, cout) use fan_in = kh * kw * cin: the first convolution
is an input layer (cin = 1 is fixed), the others are hidden, the readout is the output layer.

With the default ``output_mult`` (readout scaled by 1/width from zero) the µP form sits on a loss
plateau for its first tens of Adam steps before the features start to move; SP learns sooner.

References:
  Yang et al., "Tensor Programs V: Tuning Large Neural Networks via Zero-Shot Hyperparameter
  Transfer", 2022 (µP for convolutions: fan_in counts the kernel's receptive field).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from metaopt.tasks import config_checks as checks
from metaopt.tasks import data, nn, normalizers
from metaopt.tasks.base import Task
from metaopt.tasks.family import ConfigFamily

__all__ = ["IMAGE_SIZE", "NUM_CLASSES", "CNNConfig", "CNNTask", "CNNDigitsFamily"]

IMAGE_SIZE = 8
NUM_CLASSES = 10


@dataclasses.dataclass(frozen=True)
class CNNConfig:
    """A CNN classification task on digits.

    Attributes:
      dataset: "digits" (8x8 grey images).
      width_multiplier: channels = base_width * width_multiplier.
      base_width: channels at width_multiplier 1.
      depth: number of weight tensors (>= 2): depth - 1 convolutions and the readout.
      activation: "relu", "gelu", "tanh" or "silu".
      batch_size: training minibatch size.
      parametrization: "mup" or "sp".
      kernel_size: odd kernel side (1, 3, 5).
      output_mult: µP readout multiplier numerator.
      seed: picks the train/held-out split.
    """

    dataset: str = "digits"
    width_multiplier: float = 1
    base_width: int = 32
    depth: int = 3
    activation: str = "relu"
    batch_size: int = 128
    parametrization: str = "mup"
    kernel_size: int = 3
    output_mult: float = 1.0
    seed: int = 0

    def __post_init__(self):
        checks.check_choice("dataset", self.dataset, ("digits",))
        checks.check_width(self)
        checks.check_int("depth", self.depth, minimum=2)
        checks.check_choice("activation", self.activation, checks.ACTIVATIONS)
        checks.check_int("batch_size", self.batch_size)
        checks.check_choice("parametrization", self.parametrization, checks.PARAMETRIZATIONS)
        checks.check_choice("kernel_size", self.kernel_size, (1, 3, 5))
        checks.check_positive("output_mult", self.output_mult)
        checks.check_seed(self)

    @property
    def width(self) -> int:
        return int(round(self.base_width * self.width_multiplier))


def _conv_name(i: int) -> str:
    return f"conv_{i:02d}"


def _stride(i: int, size: int) -> int:
    # The first convolution keeps the resolution; later ones halve it down to 2x2, so the final
    # average pool still sees where strokes are (pooling 8x8 maps directly loses most of the digit).
    return 2 if i > 0 and size > 2 else 1


def _spatial_sizes(depth: int) -> list[int]:
    sizes, size = [], IMAGE_SIZE
    for i in range(depth - 1):
        size = size // _stride(i, size)
        sizes.append(size)
    return sizes


def _init(key: jax.Array, c: CNNConfig, width: int) -> dict:
    keys = jax.random.split(key, c.depth)
    k = c.kernel_size
    params, cin = {}, 1
    for i in range(c.depth - 1):
        shape = (k, k, cin, width)
        params[_conv_name(i)] = {"w": nn.normal(keys[i], shape, k * k * cin),
                                 "b": jnp.zeros((width,), jnp.float32)}
        cin = width
    params["readout"] = {"w": nn.readout_init(keys[-1], width, NUM_CLASSES, c.parametrization),
                         "b": jnp.zeros((NUM_CLASSES,), jnp.float32)}
    return params


@dataclasses.dataclass(frozen=True)
class CNNTask(Task):
    """A CNN on digits; hashable by its config."""

    config: CNNConfig

    def __post_init__(self):
        if not isinstance(self.config, CNNConfig):
            raise ValueError(f"config: expected a CNNConfig, got {type(self.config).__name__}")

    @property
    def data(self) -> data.Split:
        # One mean and scale for all pixels keeps the images' spatial contrast.
        return data.digits_split(self.config.seed, per_feature=False)

    def init(self, key: jax.Array) -> dict:
        return _init(key, self.config, self.config.width)

    def apply(self, params: dict, x: jax.Array, return_preactivations: bool = False):
        """Logits for flattened images ``x`` (batch, 64)."""
        c = self.config
        act = nn.ACTIVATIONS[c.activation]
        h = x.reshape(x.shape[0], IMAGE_SIZE, IMAGE_SIZE, 1)
        pre = []
        for i in range(c.depth - 1):
            layer = params[_conv_name(i)]
            stride = _stride(i, h.shape[1])
            z = jax.lax.conv_general_dilated(h, layer["w"], (stride, stride), "SAME",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC")) + layer["b"]
            pre.append(z)
            h = act(z)
        pooled = jnp.mean(h, axis=(1, 2))
        scale = nn.readout_scale(c.width, c.parametrization, c.output_mult)
        out = scale * (pooled @ params["readout"]["w"]) + params["readout"]["b"]
        return (out, pre) if return_preactivations else out

    def batch(self, key: jax.Array, step: jax.Array = 0) -> dict:
        d = self.data
        idx = jax.random.randint(key, (self.config.batch_size,), 0, d.y_train.shape[0])
        return {"x": d.x_train[idx], "y": d.y_train[idx]}

    def loss(self, params: dict, batch: dict) -> jax.Array:
        return nn.cross_entropy(self.apply(params, batch["x"]), batch["y"])

    def eval_loss(self, params: dict) -> jax.Array:
        d = self.data
        return nn.cross_entropy(self.apply(params, d.x_eval), d.y_eval)

    def normalize_loss(self, loss: jax.Array) -> jax.Array:
        return normalizers.classification(loss, NUM_CLASSES)

    @functools.cached_property
    def param_meta(self) -> dict:
        c = self.config
        roles = {_conv_name(i): {"w": "input" if i == 0 else "hidden", "b": "bias"}
                 for i in range(c.depth - 1)}
        roles["readout"] = {"w": "output", "b": "bias"}
        key = jax.random.key(0)
        shapes = jax.eval_shape(self.init, key)
        base_shapes = jax.eval_shape(lambda k: _init(k, c, c.base_width), key)
        return nn.param_meta_from(roles, shapes, base_shapes, output_mult=nn.mup_output_mult(c))

    @property
    def flops_per_step(self) -> float:
        c = self.config
        k2, w = c.kernel_size ** 2, c.width
        macs = sum(size * size * k2 * (1 if i == 0 else w) * w
                   for i, size in enumerate(_spatial_sizes(c.depth)))
        forward = 2.0 * c.batch_size * (macs + w * NUM_CLASSES)
        return 3.0 * forward


class CNNDigitsFamily(ConfigFamily):
    """Small CNNs on digits: ``get_family("cnn_digits", widths=(16, 32), depths=(3,))``."""

    name = "cnn_digits"
    config_class = CNNConfig
    task_class = CNNTask
