"""Noisy quadratics with controlled conditioning.

``f(x) = 0.5 (x - m)^T A (x - m) - 0.5 tr(A) noise_scale^2 / batch_size`` with
``A = Q diag(lambda) Q^T``: eigenvalues log-spaced from 1 to ``condition_number`` (order shuffled by
the seed), ``Q`` a random rotation (``rotate=True``) or the identity. Each batch draws the offset
``m ~ N(0, noise_scale^2 / batch_size I)``, so the gradient ``A (x - m)`` is an unbiased, noisy
estimate of ``A x`` whose noise falls with the batch size; the constant makes the batch loss an
unbiased estimate of ``0.5 x^T A x``, which ``eval_loss`` returns exactly. Parameters start at
``x ~ N(0, I)``.

References:
  Zhang et al., "Which Algorithmic Choices Matter at Which Batch Sizes? Insights From a Noisy
  Quadratic Model", NeurIPS 2019. Metz et al., learned_optimization (quadratic task families).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from metaopt import mup
from metaopt.tasks import config_checks as checks
from metaopt.tasks import normalizers
from metaopt.tasks.base import Task
from metaopt.tasks.family import ConfigFamily

__all__ = ["MAX_ROTATED_DIM", "QuadraticConfig", "QuadraticTask", "QuadraticFamily"]

MAX_ROTATED_DIM = 4096


@dataclasses.dataclass(frozen=True)
class QuadraticConfig:
    """A noisy quadratic.

    Attributes:
      width_multiplier: dimension = base_width * width_multiplier.
      base_width: dimension at width_multiplier 1.
      condition_number: largest over smallest eigenvalue (>= 1).
      rotate: rotate the eigenbasis by a random orthogonal matrix (dimension <= 4096).
      noise_scale: standard deviation of one example's offset (0 for exact gradients).
      batch_size: examples averaged per step (gradient noise falls as 1/sqrt(batch_size)).
      seed: picks the rotation and the order of the eigenvalues.
    """

    width_multiplier: float = 1
    base_width: int = 64
    condition_number: float = 100.0
    rotate: bool = True
    noise_scale: float = 1.0
    batch_size: int = 16
    seed: int = 0

    def __post_init__(self):
        dim = checks.check_width(self)
        checks.check_positive("condition_number", self.condition_number)
        if self.condition_number < 1:
            raise ValueError(f"condition_number: must be >= 1, got {self.condition_number}")
        checks.check_bool("rotate", self.rotate)
        if self.rotate and dim > MAX_ROTATED_DIM:
            raise ValueError(f"rotate: a rotated quadratic needs dimension <= {MAX_ROTATED_DIM}, got {dim}")
        checks.check_positive("noise_scale", self.noise_scale, allow_zero=True)
        checks.check_int("batch_size", self.batch_size)
        checks.check_seed(self)

    @property
    def width(self) -> int:
        return int(round(self.base_width * self.width_multiplier))


@functools.lru_cache(maxsize=64)
def _problem(dim: int, condition_number: float, rotate: bool, seed: int):
    rng = np.random.default_rng(seed)
    eig = np.logspace(0.0, np.log10(condition_number), dim) if dim > 1 else np.ones(1)
    eig = rng.permutation(eig).astype(np.float32)
    q = None
    if rotate:
        g = rng.standard_normal((dim, dim))
        q, r = np.linalg.qr(g)
        q = (q * np.sign(np.diag(r))).astype(np.float32)  # Haar-distributed
    with jax.ensure_compile_time_eval():
        return jnp.asarray(eig), None if q is None else jnp.asarray(q)


@dataclasses.dataclass(frozen=True)
class QuadraticTask(Task):
    """A noisy quadratic; parameters ``{"x": (dim,)}``."""

    config: QuadraticConfig

    def __post_init__(self):
        if not isinstance(self.config, QuadraticConfig):
            raise ValueError(f"config: expected a QuadraticConfig, got {type(self.config).__name__}")

    @property
    def problem(self):
        c = self.config
        return _problem(c.width, float(c.condition_number), c.rotate, c.seed)

    @property
    def eigenvalues(self) -> jax.Array:
        return self.problem[0]

    def init(self, key: jax.Array) -> dict:
        return {"x": jax.random.normal(key, (self.config.width,), jnp.float32)}

    def _value(self, x: jax.Array) -> jax.Array:
        eig, q = self.problem
        y = x if q is None else x @ q
        return 0.5 * jnp.sum(eig * y * y)

    def batch(self, key: jax.Array, step: jax.Array = 0) -> dict:
        c = self.config
        std = c.noise_scale / np.sqrt(c.batch_size)
        return {"offset": std * jax.random.normal(key, (c.width,), jnp.float32)}

    def loss(self, params: dict, batch: dict) -> jax.Array:
        c = self.config
        bias = 0.5 * jnp.sum(self.eigenvalues) * c.noise_scale ** 2 / c.batch_size
        return self._value(params["x"] - batch["offset"]) - bias

    def eval_loss(self, params: dict) -> jax.Array:
        return self._value(params["x"])

    @property
    def initial_loss(self) -> float:
        """The expected loss at initialisation, 0.5 tr(A)."""
        c = self.config
        eig = np.logspace(0.0, np.log10(c.condition_number), c.width) if c.width > 1 else np.ones(1)
        return float(0.5 * eig.sum())

    def normalize_loss(self, loss: jax.Array) -> jax.Array:
        return normalizers.log_ratio(loss, self.initial_loss, decades=3.0)

    @functools.cached_property
    def param_meta(self) -> dict:
        dim = self.config.width
        return {"x": mup.ParamMeta("bias", 1, dim, 1)}

    @property
    def num_params(self) -> int:
        return self.config.width

    @property
    def flops_per_step(self) -> float:
        d = self.config.width
        forward = 2.0 * d * d + 4.0 * d if self.config.rotate else 4.0 * d
        return 3.0 * forward


class QuadraticFamily(ConfigFamily):
    """Noisy quadratics: ``get_family("quadratic", condition_numbers=(10., 1e3), widths=(64,))``."""

    name = "quadratic"
    config_class = QuadraticConfig
    task_class = QuadraticTask
