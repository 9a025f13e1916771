"""Teacher-student regression: a student MLP (µP or SP) fits a fixed random teacher MLP under MSE.

Inputs are fresh draws ``x ~ N(0, I_input_dim)`` every batch (an endless stream from the batch key),
targets ``y = teacher(x) + noise_scale * eps``. The teacher is a random MLP fixed by ``seed``
(N(0, 1/fan_in) weights, biases N(0, 0.1^2)), its output standardised to zero mean and unit variance,
so predicting zero costs about 1 + noise_scale^2 and the normalised loss is comparable across seeds.
``eval_loss`` is the noiseless MSE on 1024 fixed inputs.

References:
  Saad & Solla, "On-line learning in soft committee machines", Phys. Rev. E 1995 (teacher-student
  setting). Metz et al., learned_optimization (synthetic task families).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from metaopt.tasks import config_checks as checks
from metaopt.tasks import nn, normalizers
from metaopt.tasks.base import Task
from metaopt.tasks.family import ConfigFamily

__all__ = ["NUM_EVAL", "TeacherStudentConfig", "TeacherStudentTask", "TeacherStudentFamily"]

NUM_EVAL = 1024
_NUM_PROBE = 4096


@dataclasses.dataclass(frozen=True)
class TeacherStudentConfig:
    """A teacher-student regression task.

    Attributes:
      width_multiplier: student width = base_width * width_multiplier.
      base_width: student width at width_multiplier 1.
      depth: student weight matrices (>= 2).
      activation: the student's activation.
      batch_size: examples per step.
      parametrization: "mup" or "sp" (the student's).
      input_dim: dimension of x.
      output_dim: dimension of y.
      teacher_width: the teacher's hidden width.
      teacher_depth: the teacher's weight matrices (>= 1).
      teacher_activation: the teacher's activation.
      noise_scale: label noise standard deviation (targets have unit variance before noise).
      output_mult: µP readout multiplier numerator.
      seed: picks the teacher and the evaluation inputs.
    """

    width_multiplier: float = 1
    base_width: int = 64
    depth: int = 3
    activation: str = "relu"
    batch_size: int = 64
    parametrization: str = "mup"
    input_dim: int = 16
    output_dim: int = 1
    teacher_width: int = 64
    teacher_depth: int = 3
    teacher_activation: str = "tanh"
    noise_scale: float = 0.1
    output_mult: float = 1.0
    seed: int = 0

    def __post_init__(self):
        checks.check_width(self)
        checks.check_int("depth", self.depth, minimum=2)
        checks.check_choice("activation", self.activation, checks.ACTIVATIONS)
        checks.check_int("batch_size", self.batch_size)
        checks.check_choice("parametrization", self.parametrization, checks.PARAMETRIZATIONS)
        checks.check_int("input_dim", self.input_dim)
        checks.check_int("output_dim", self.output_dim)
        checks.check_int("teacher_width", self.teacher_width)
        checks.check_int("teacher_depth", self.teacher_depth)
        checks.check_choice("teacher_activation", self.teacher_activation, checks.ACTIVATIONS)
        checks.check_positive("noise_scale", self.noise_scale, allow_zero=True)
        checks.check_positive("output_mult", self.output_mult)
        checks.check_seed(self)

    @property
    def width(self) -> int:
        return int(round(self.base_width * self.width_multiplier))


_NUMPY_ACTIVATIONS = {
    "relu": lambda z: np.maximum(z, 0.0),
    "tanh": np.tanh,
    # jax.nn.gelu's default tanh approximation.
    "gelu": lambda z: 0.5 * z * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (z + 0.044715 * z ** 3))),
    "silu": lambda z: z / (1.0 + np.exp(-z)),
}


def _teacher_forward(weights, x, activation: str, numpy: bool = False):
    act = _NUMPY_ACTIVATIONS[activation] if numpy else nn.ACTIVATIONS[activation]
    h = x
    for i, (w, b) in enumerate(weights):
        h = h @ w + b
        if i < len(weights) - 1:
            h = act(h)
    return h


@functools.lru_cache(maxsize=64)
def _teacher(input_dim: int, output_dim: int, width: int, depth: int, activation: str, seed: int):
    """The teacher's weights (standardised output) and the fixed evaluation set, as device arrays.

    Built in NumPy (float64) so that no small JAX computations are compiled for it.
    """
    rng = np.random.default_rng(seed)
    sizes = [input_dim] + [width] * (depth - 1) + [output_dim]
    weights = [(rng.standard_normal((a, b)) / np.sqrt(a), 0.1 * rng.standard_normal(b))
               for a, b in zip(sizes[:-1], sizes[1:])]
    x_eval = rng.standard_normal((NUM_EVAL, input_dim))
    probe = rng.standard_normal((_NUM_PROBE, input_dim))
    raw = _teacher_forward(weights, probe, activation, numpy=True)
    mean, std = raw.mean(0), raw.std(0)
    std = np.where(std < 1e-6, 1.0, std)
    # Fold the standardisation into the last layer.
    w, b = weights[-1]
    weights[-1] = (w / std, (b - mean) / std)
    y_eval = _teacher_forward(weights, x_eval, activation, numpy=True)
    with jax.ensure_compile_time_eval():
        device_weights = tuple((jnp.asarray(w, jnp.float32), jnp.asarray(b, jnp.float32))
                               for w, b in weights)
        return device_weights, jnp.asarray(x_eval, jnp.float32), jnp.asarray(y_eval, jnp.float32)


@dataclasses.dataclass(frozen=True)
class TeacherStudentTask(Task):
    """Student MLP regression onto a random teacher; hashable by its config."""

    config: TeacherStudentConfig

    def __post_init__(self):
        if not isinstance(self.config, TeacherStudentConfig):
            raise ValueError(f"config: expected a TeacherStudentConfig, got {type(self.config).__name__}")

    @property
    def teacher(self):
        c = self.config
        return _teacher(c.input_dim, c.output_dim, c.teacher_width, c.teacher_depth,
                        c.teacher_activation, c.seed)

    @property
    def sizes(self) -> list[int]:
        c = self.config
        return nn.mlp_sizes(c.input_dim, c.width, c.depth, c.output_dim)

    def init(self, key: jax.Array) -> dict:
        return nn.mlp_init(key, self.sizes, self.config.parametrization)

    def apply(self, params: dict, x: jax.Array, return_preactivations: bool = False):
        c = self.config
        scale = nn.readout_scale(c.width, c.parametrization, c.output_mult)
        return nn.mlp_apply(params, x, c.activation, scale, return_preactivations)

    def batch(self, key: jax.Array, step: jax.Array = 0) -> dict:
        c = self.config
        x_key, noise_key = jax.random.split(key)
        x = jax.random.normal(x_key, (c.batch_size, c.input_dim), jnp.float32)
        weights = self.teacher[0]
        y = _teacher_forward(weights, x, c.teacher_activation)
        y = y + c.noise_scale * jax.random.normal(noise_key, y.shape, jnp.float32)
        return {"x": x, "y": y}

    def loss(self, params: dict, batch: dict) -> jax.Array:
        return jnp.mean(jnp.sum((self.apply(params, batch["x"]) - batch["y"]) ** 2, -1))

    def eval_loss(self, params: dict) -> jax.Array:
        _, x_eval, y_eval = self.teacher
        return jnp.mean(jnp.sum((self.apply(params, x_eval) - y_eval) ** 2, -1))

    def normalize_loss(self, loss: jax.Array) -> jax.Array:
        # Predicting zero costs output_dim (unit-variance targets per output) plus the noise.
        c = self.config
        return normalizers.regression(loss, c.output_dim * (1.0 + c.noise_scale ** 2))

    @functools.cached_property
    def param_meta(self) -> dict:
        c = self.config
        base_sizes = nn.mlp_sizes(c.input_dim, c.base_width, c.depth, c.output_dim)
        key = jax.random.key(0)
        shapes = jax.eval_shape(self.init, key)
        base_shapes = jax.eval_shape(lambda k: nn.mlp_init(k, base_sizes, c.parametrization), key)
        return nn.param_meta_from(nn.mlp_roles(c.depth), shapes, base_shapes,
                                  output_mult=nn.mup_output_mult(c))

    @property
    def num_params(self) -> int:
        s = self.sizes
        return int(sum(a * b + b for a, b in zip(s[:-1], s[1:])))

    @property
    def flops_per_step(self) -> float:
        c = self.config
        teacher = nn.mlp_sizes(c.input_dim, c.teacher_width, c.teacher_depth, c.output_dim)
        return 3.0 * nn.matmul_flops(self.sizes, c.batch_size) + nn.matmul_flops(teacher, c.batch_size)


class TeacherStudentFamily(ConfigFamily):
    """Teacher-student regression: ``get_family("teacher_student", widths=(64, 256))``."""

    name = "teacher_student"
    config_class = TeacherStudentConfig
    task_class = TeacherStudentTask
