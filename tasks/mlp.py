"""MLP classifiers on MNIST-1D and scikit-learn digits, in µP or SP form.

``MLPConfig`` fixes one task: dataset, width (``base_width * width_multiplier``), depth (number of
weight matrices), activation, batch size, parametrization and seed (the train/held-out split). The
families "mlp_mnist1d" and "mlp_digits" sample configs from tuples of choices.

References:
  Therien et al., "µLO: Compute-Efficient Meta-Generalization of Learned Optimizers", ICLR 2026
  (MLP meta-training tasks, width transfer). Greydanus & Kobak, "Scaling down deep learning with
  MNIST-1D", ICML 2024.
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


__all__ = ["MLPConfig", "MLPTask", "MLPMNIST1DFamily", "MLPDigitsFamily"]


@dataclasses.dataclass(frozen=True)
class MLPConfig:
    """An MLP classification task.

    Attributes:
      dataset: "mnist1d" (40 features) or "digits" (64 features); 10 classes either way.
      width_multiplier: width = base_width * width_multiplier.
      base_width: the width at which µAdam's learning rates are tuned (µP base shape).
      depth: number of weight matrices (>= 2: input, depth - 2 hidden, readout).
      activation: "relu", "gelu", "tanh" or "silu".
      batch_size: training minibatch size.
      parametrization: "mup" or "sp".
      output_mult: µP readout multiplier numerator (logits scaled by output_mult / width).
      seed: picks the train/held-out split.
    """

    dataset: str = "mnist1d"
    width_multiplier: float = 1
    base_width: int = 128
    depth: int = 3
    activation: str = "relu"
    batch_size: int = 128
    parametrization: str = "mup"
    output_mult: float = 1.0
    seed: int = 0

    def __post_init__(self):
        checks.check_choice("dataset", self.dataset, tuple(data.DATASETS))
        checks.check_width(self)
        checks.check_int("depth", self.depth, minimum=2)
        checks.check_choice("activation", self.activation, checks.ACTIVATIONS)
        checks.check_int("batch_size", self.batch_size)
        checks.check_choice("parametrization", self.parametrization, checks.PARAMETRIZATIONS)
        checks.check_positive("output_mult", self.output_mult)
        checks.check_seed(self)

    @property
    def width(self) -> int:
        return int(round(self.base_width * self.width_multiplier))


@dataclasses.dataclass(frozen=True)
class MLPTask(Task):
    """An MLP classifier task; hashable (only its config enters equality and hashing)."""

    config: MLPConfig

    def __post_init__(self):
        if not isinstance(self.config, MLPConfig):
            raise ValueError(f"config: expected an MLPConfig, got {type(self.config).__name__}")

    @property
    def in_dim(self) -> int:
        return data.DATASETS[self.config.dataset][1]

    @property
    def num_classes(self) -> int:
        return data.DATASETS[self.config.dataset][2]

    @property
    def sizes(self) -> list[int]:
        c = self.config
        return nn.mlp_sizes(self.in_dim, c.width, c.depth, self.num_classes)

    @property
    def data(self) -> data.Split:
        return data.classification_split(self.config.dataset, self.config.seed)

    def init(self, key: jax.Array) -> dict:
        return nn.mlp_init(key, self.sizes, self.config.parametrization)

    def apply(self, params: dict, x: jax.Array, return_preactivations: bool = False):
        """Logits for inputs ``x`` (batch, in_dim) (and the hidden pre-activations if asked)."""
        c = self.config
        scale = nn.readout_scale(c.width, c.parametrization, c.output_mult)
        return nn.mlp_apply(params, x, c.activation, scale, return_preactivations)

    def batch(self, key: jax.Array, step: jax.Array = 0) -> dict:
        d = self.data
        idx = jax.random.randint(key, (self.config.batch_size,), 0, d.y_train.shape[0])
        return {"x": d.x_train[idx], "y": d.y_train[idx]}

    def loss(self, params: dict, batch: dict) -> jax.Array:
        return nn.cross_entropy(self.apply(params, batch["x"]), batch["y"])

    def eval_loss(self, params: dict) -> jax.Array:
        d = self.data
        return nn.cross_entropy(self.apply(params, d.x_eval), d.y_eval)

    def eval_accuracy(self, params: dict) -> jax.Array:
        """Accuracy on the held-out set."""
        d = self.data
        return jnp.mean(jnp.argmax(self.apply(params, d.x_eval), -1) == d.y_eval)

    def normalize_loss(self, loss: jax.Array) -> jax.Array:
        return normalizers.classification(loss, self.num_classes)

    @functools.cached_property
    def param_meta(self) -> dict:
        base = dataclasses.replace(self.config, width_multiplier=1)
        base_sizes = nn.mlp_sizes(self.in_dim, base.width, base.depth, self.num_classes)
        key = jax.random.key(0)
        shapes = jax.eval_shape(self.init, key)
        base_shapes = jax.eval_shape(lambda k: nn.mlp_init(k, base_sizes, base.parametrization), key)
        return nn.param_meta_from(nn.mlp_roles(self.config.depth), shapes, base_shapes,
                                  output_mult=nn.mup_output_mult(self.config))

    @property
    def num_params(self) -> int:
        s = self.sizes
        return int(sum(a * b + b for a, b in zip(s[:-1], s[1:])))

    @property
    def flops_per_step(self) -> float:
        return 3.0 * nn.matmul_flops(self.sizes, self.config.batch_size)


class MLPMNIST1DFamily(ConfigFamily):
    """MLP classifiers on MNIST-1D: ``get_family("mlp_mnist1d", widths=(64, 128), depths=(3,))``."""

    name = "mlp_mnist1d"
    config_class = MLPConfig
    task_class = MLPTask
    fixed_defaults = {"dataset": "mnist1d"}


class MLPDigitsFamily(ConfigFamily):
    """MLP classifiers on scikit-learn digits."""

    name = "mlp_digits"
    config_class = MLPConfig
    task_class = MLPTask
    fixed_defaults = {"dataset": "digits"}
