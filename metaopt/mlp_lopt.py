"""A per-parameter MLP learned optimizer (small_fc_lopt), in µP (µLO) or standard form.

For every entry of every tensor, a small MLP reads the per-parameter features of
``metaopt.features`` (each normalised per tensor by its RMS) and emits a direction d and a magnitude
m; the step is lambda1 * d * exp(lambda2 * m), and the parameter moves by -s_W times it. In µP mode
(µLO) s_W is ``ParamMeta.lo_multiplier`` (1/fan_in for hidden matrices, 1 for input, output and bias
tensors); in SP mode s_W = 1.

Time features (the fraction trained t/T with log T, and the absolute step count; see
``metaopt.time_features``) are the same for every entry of a tensor, so their first-layer
contribution is computed once per step and added as a bias rather than broadcast into the
per-parameter feature tensor.

References:
  Therien et al., "µLO: Compute-Efficient Meta-Generalization of Learned Optimizers", ICLR 2026.
  Moudgil et al., "Celo2", ICLR 2026 (orthogonalised hidden-matrix steps, ``orthogonalize``).
  Metz et al., "Practical tradeoffs between memory, compute, and performance in learned optimizers",
  CoLLAs 2022. Metz et al., "VeLO: Training Versatile Learned Optimizers by Scaling Up", 2022.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Any, ClassVar, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metaopt import features as feat
from metaopt import time_features as tf
from metaopt.learned_optimizer import LearnedOptimizer, register
from metaopt.mup import check_multipliers, check_params, lo_multipliers, resolve_param_meta, roles_of, unwrap
from metaopt.orthogonalize import orthogonalized

__all__ = ["MLPLOpt"]

PyTree = Any

# Matrices with at least this many entries get their own pass (``MLPLOpt._matrix_step``); smaller
# tensors are batched into one, which is faster for them, both for a single small model's training
# step and for meta-training populations run one member at a time (figures: docs/PERFORMANCE.md,
# "the feature pass and the matrix pass").
_MATRIX_MIN_SIZE = 65536


def _past_end_warning(theta: Any, num_steps: Any):
    """A function of the step count that warns once when a run goes past ``num_steps``, or
    ``None`` when theta or num_steps are traced (meta-training and populations never do)."""
    if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((theta, num_steps))):
        return None
    limit = int(np.asarray(num_steps))
    warned = []

    def check(count):
        if not warned and np.any(np.asarray(count) >= limit):
            warned.append(True)
            warnings.warn(f"metaopt: training past num_steps={limit}: the learned optimizer's "
                          "fraction-trained features are out of the range it was meta-trained on; "
                          "build the transform with the run's real length", stacklevel=1)

    def at_step(count):
        jax.lax.cond(count == limit, lambda c: jax.debug.callback(check, c), lambda c: None, count)

    return at_step


def _num_blocks(rows: int, cols: int, row_block: Optional[int]) -> tuple[int, int]:
    """(rows per block, number of blocks) for a matrix's step: one block off CPU, without
    ``row_block`` or when small; otherwise about ``row_block`` entries per block, a divisor of
    ``rows`` when one is close."""
    if row_block is None or rows * cols <= 2 * row_block or jax.default_backend() != "cpu":
        return rows, 1
    target = max(1, min(rows, row_block // cols))
    divisor = max(d for d in range(1, target + 1) if rows % d == 0)
    block = divisor if 2 * divisor >= target else target
    return block, -(-rows // block)


@register
@dataclasses.dataclass(frozen=True)
class MLPLOpt(LearnedOptimizer):
    """Per-parameter MLP learned optimizer (µLO when ``mup=True``).

    Attributes:
      hidden_size: width of the MLP's hidden layers.
      num_hidden_layers: number of hidden ReLU layers (0: the outputs are linear in the features).
      mup: multiply each tensor's update by its µLO multiplier s_W (1/fan_in for hidden matrices).
      time_features: feed the fraction trained as tanh(10 (t/T - c)) and log T (needs ``num_steps``).
      step_features: feed the absolute step count as tanh(t / tau - 1).
      features: names of the per-parameter input features (a subset of
        ``metaopt.features.feature_names``); ``None`` means all of them.
      normalize_inputs: divide every per-parameter feature by its RMS over the tensor.
      lambda1: step scale; ``None`` means 0.01 with ``mup=True`` and 0.001 without.
      lambda2: magnitude scale inside the exponential.
      momentum_decays, second_moment_decay, factored_decays: the accumulators' decays.
      eps: Adam-style epsilon of the m/sqrt(v) and reciprocal-sqrt features.
      output_init_scale: scale of the random init of the output layer (small, so a fresh theta
        takes small, harmless steps before meta-training).
      init_rule: ``None`` (a random theta), or the name of a per-parameter feature (e.g.
        ``momentum_over_rms_0.9``: Adam's direction) that a fresh theta follows exactly: the step
        is ``init_learning_rate`` times the feature, times ``init_decay``'s schedule. Its other
        hidden units keep their random init with zero output weights, so meta-training starts
        from a hand-designed optimizer and learns what to change (see ``rule_theta``).
      init_learning_rate: the step size of ``init_rule``.
      init_decay: with ``time_features``, a fresh ``init_rule`` theta decays its step by a cosine
        in t/T from 1 to this fraction (in (0, 1)); ``None`` keeps it constant.
      orthogonalize: replace the step of every hidden weight tensor (role ``hidden``: hidden
        matrices and convolution kernels, seen as (fan_in, fan_out)) by its Newton–Schulz
        orthogonalisation at the same RMS (``metaopt.orthogonalize``), as Celo2 does; input,
        output, embedding and bias tensors keep the learned step.
      weight_decay: ``None`` (no decay), or the initial rate of a learned decoupled weight decay:
        every tensor of two or more dimensions (matrices, kernels, embeddings; not biases or
        norm scales) also shrinks by rate(t) * p per step, with rate(t) = ``weight_decay`` *
        exp(``weight_decay_lambda`` * (decay_b + time features . decay_time)); ``decay_b`` and
        ``decay_time`` are in theta. A fresh theta decays the rate by ``init_decay``'s cosine, as
        AdamW's decay follows its learning-rate schedule. The rate is per step and does not depend
        on width, so under µP it transfers across widths (Wang & Aitchison 2024).
      weight_decay_lambda: scale inside the decay's exponential, so that an outer step of the
        meta-optimizer's size moves the rate by a useful fraction (like ``lambda2``).
      row_block: on CPU, the step of a large matrix runs in blocks of rows of about this many
        entries, which bounds the memory of the per-entry network; ``None`` runs every matrix in
        one block, as accelerators do (XLA's FLOP count then covers every block). The order of
        summation, and so the last bits of a step, depend on it.

    With ``num_hidden_layers=0, normalize_inputs=False, mup=False, time_features=False,
    step_features=False, lambda1=lr`` and a theta whose direction row is one-hot on
    ``momentum_over_rms_0.9`` (``feature_theta("momentum_over_rms_0.9")``), the update is
    -lr * m_hat / (sqrt(v_hat) + eps) with beta1 = 0.9, beta2 = 0.999: exactly ``optax.adam(lr)``
    (up to ``eps_root`` = 1e-30 under the square root, below float32 resolution).

    References:
      Therien et al., "µLO: Compute-Efficient Meta-Generalization of Learned Optimizers", ICLR 2026.
      Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019 (``weight_decay``).
      Wang & Aitchison, "How to set AdamW's weight decay as you scale model and dataset size",
      2024 (the per-step rate as the quantity that transfers).
    """

    kind: ClassVar[str] = "mlp_lopt"
    init_fields: ClassVar[tuple] = ("output_init_scale", "init_rule", "init_learning_rate", "init_decay",
                                    "weight_decay", "weight_decay_lambda", "row_block")

    hidden_size: int = 32
    num_hidden_layers: int = 2
    mup: bool = True
    time_features: bool = True
    step_features: bool = True
    features: Optional[tuple] = None
    normalize_inputs: bool = True
    lambda1: Optional[float] = None
    lambda2: float = 0.001
    momentum_decays: tuple = feat.MOMENTUM_DECAYS
    second_moment_decay: float = feat.SECOND_MOMENT_DECAY
    factored_decays: tuple = feat.FACTORED_DECAYS
    eps: float = 1e-8
    output_init_scale: float = 0.1
    init_rule: Optional[str] = None
    init_learning_rate: float = 0.1
    init_decay: Optional[float] = None
    orthogonalize: bool = False
    weight_decay: Optional[float] = None
    weight_decay_lambda: float = 10.0
    row_block: Optional[int] = 32768

    def __post_init__(self):
        from metaopt import validation as v

        for name in ("momentum_decays", "factored_decays", "features"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        v.check_int(self.hidden_size, "hidden_size", 1)
        v.check_int(self.num_hidden_layers, "num_hidden_layers", 0)
        if self.row_block is not None:
            v.check_int(self.row_block, "row_block", 1)
        for name in ("mup", "time_features", "step_features", "normalize_inputs", "orthogonalize"):
            v.check_bool(getattr(self, name), name)
        v.check_number(self.lambda1, "lambda1", low=0.0, low_open=True, allow_none=True)
        v.check_number(self.lambda2, "lambda2", low=0.0)
        v.check_decays(self.momentum_decays, "momentum_decays")
        v.check_decays(self.factored_decays, "factored_decays")
        v.check_number(self.second_moment_decay, "second_moment_decay", low=0.0, high=1.0, high_open=True)
        v.check_number(self.eps, "eps", low=0.0, low_open=True)
        v.check_number(self.output_init_scale, "output_init_scale", low=0.0)
        v.check_number(self.weight_decay, "weight_decay", low=0.0, high=1.0, low_open=True, high_open=True,
                       allow_none=True)
        v.check_number(self.weight_decay_lambda, "weight_decay_lambda", low=0.0, low_open=True)
        if self.features is not None:
            if isinstance(self.features, str) or not isinstance(self.features, tuple):
                raise TypeError(f"features: expected None or a list of feature names, got {self.features!r}")
            known = feat.feature_names(self.momentum_decays, self.factored_decays)
            unknown = [n for n in self.features if n not in known]
            if unknown or not self.features:
                raise ValueError(f"features: unknown or empty {list(self.features)}; known: {list(known)}")
        if self.init_rule is not None and self.init_rule not in self.feature_names:
            raise ValueError(f"init_rule: {self.init_rule!r} is not an input feature; "
                             f"known: {list(self.feature_names)}")
        v.check_number(self.init_learning_rate, "init_learning_rate", low=0.0, low_open=True)
        v.check_number(self.init_decay, "init_decay", low=0.0, high=1.0, low_open=True, high_open=True,
                       allow_none=True)
        if self.init_decay is not None and not self.time_features:
            raise ValueError("init_decay: needs time_features=True (the schedule reads t/T)")
        if self.init_rule is not None and self.num_hidden_layers > 0 and self.hidden_size < 3:
            raise ValueError(f"hidden_size: init_rule needs hidden_size >= 3, got {self.hidden_size}")

    # --- architecture -------------------------------------------------------------------------

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Ordered names of the per-parameter input features (rows of ``theta["w0"]``)."""
        if self.features is not None:
            return tuple(self.features)
        return feat.feature_names(self.momentum_decays, self.factored_decays)

    @property
    def num_time_features(self) -> int:
        """Length of the time-feature vector (rows of ``theta["w0_time"]``)."""
        return tf.num_time_features(self.time_features, self.step_features)

    @property
    def step_scale(self) -> float:
        """lambda1: as given, else 0.01 in µP mode and 0.001 in SP mode."""
        if self.lambda1 is not None:
            return float(self.lambda1)
        return 0.01 if self.mup else 0.001

    def _layer_sizes(self) -> list[int]:
        return [len(self.feature_names)] + [self.hidden_size] * self.num_hidden_layers + [2]

    def init(self, key: jax.Array) -> dict:
        """Fresh theta: random (He-normal hidden layers, zero biases), or ``rule_theta`` when
        ``init_rule`` is set.

        Returns:
          ``{"w0", "b0", "w0_time", "w1", "b1", ...}``: layer i maps sizes[i] -> sizes[i+1], where
          sizes = [num features, hidden_size x num_hidden_layers, 2]; ``w0_time`` maps the time
          features into layer 0 (shape (num_time_features, sizes[1])). Output column 0 is the
          direction, column 1 the magnitude. With ``weight_decay``, also ``decay_b`` (a scalar)
          and ``decay_time`` (num_time_features,), the log-rate of the decay over
          ``weight_decay_lambda`` (see ``decay_rate``).
        """
        theta = self.rule_theta(key) if self.init_rule is not None else self._random_theta(key)
        if self.weight_decay is not None:
            theta.update(self._decay_theta())
        return theta

    def _decay_theta(self) -> dict:
        """The decay's fresh log-rate: ``init_decay``'s cosine in t/T (constant without it)."""
        fit_w, fit_b = self._decay_fit()
        decay_time = jnp.zeros((self.num_time_features,), jnp.float32)
        if fit_w is not None:
            decay_time = decay_time.at[:len(fit_w)].set(-fit_w / self.weight_decay_lambda)
        return {"decay_b": jnp.asarray(-fit_b / self.weight_decay_lambda, jnp.float32),
                "decay_time": decay_time}

    def decay_rate(self, theta: dict, time_vec: jax.Array) -> jax.Array:
        """The decoupled weight decay's rate per step at the time features ``time_vec`` (0 without
        ``weight_decay``)."""
        if self.weight_decay is None:
            return jnp.zeros([], jnp.float32)
        log_rate = theta["decay_b"] + time_vec @ theta["decay_time"]
        return self.weight_decay * jnp.exp(self.weight_decay_lambda * log_rate)

    def _random_theta(self, key: jax.Array) -> dict:
        sizes = self._layer_sizes()
        keys = jax.random.split(key, len(sizes))
        theta = {}
        num_layers = len(sizes) - 1
        for i in range(num_layers):
            rows = sizes[i] + (self.num_time_features if i == 0 else 0)
            gain = 2.0 if i < num_layers - 1 else 1.0
            scale = self.output_init_scale if i == num_layers - 1 else 1.0
            w = scale * np.sqrt(gain / max(rows, 1)) * jax.random.normal(keys[i], (rows, sizes[i + 1]),
                                                                       jnp.float32)
            if i == 0:
                theta["w0"] = w[:sizes[0]]
                if self.num_time_features:
                    theta["w0_time"] = w[sizes[0]:]
            else:
                theta[f"w{i}"] = w
            theta[f"b{i}"] = jnp.zeros((sizes[i + 1],), jnp.float32)
        return theta

    def feature_theta(self, feature: str, scale: float = 1.0) -> dict:
        """A theta whose direction is exactly ``scale`` times one input feature and magnitude 0.

        Through ReLU layers the feature is carried as relu(x) - relu(-x) on two hidden units.
        Useful as a hand-built starting point (e.g. ``momentum_over_rms_0.9``: Adam-like).
        """
        if feature not in self.feature_names:
            raise ValueError(f"feature: {feature!r} is not an input; known: {list(self.feature_names)}")
        if self.num_hidden_layers > 0 and self.hidden_size < 2:
            raise ValueError("hidden_size: feature_theta needs hidden_size >= 2")
        theta = jax.tree.map(jnp.zeros_like, self.init(jax.random.key(0)))
        j = self.feature_names.index(feature)
        if self.num_hidden_layers == 0:
            theta["w0"] = theta["w0"].at[j, 0].set(scale)
            return theta
        theta["w0"] = theta["w0"].at[j, 0].set(1.0).at[j, 1].set(-1.0)
        for i in range(1, self.num_hidden_layers):
            theta[f"w{i}"] = theta[f"w{i}"].at[0, 0].set(1.0).at[1, 1].set(1.0)
        last = f"w{self.num_hidden_layers}"
        theta[last] = theta[last].at[0, 0].set(scale).at[1, 0].set(-scale)
        return theta

    def rule_theta(self, key: jax.Array) -> dict:
        """A theta that follows a hand-designed rule: step = lr * feature * schedule(t/T).

        The rule is ``init_rule`` (a feature name), its step size ``init_learning_rate`` and, with
        ``init_decay``, a cosine decay from 1 to ``init_decay`` over the run. Hidden units 0 and 1
        carry the feature through the ReLU layers as relu(x) - relu(-x) into the direction; unit 2
        carries -log schedule(t/T) (a least-squares fit on the fraction features, non-negative)
        into the magnitude, so exp(lambda2 m) is the schedule. The remaining units keep their
        random init and have zero output weights: the fresh optimizer is exactly the rule (up to
        the schedule's fit), and meta-training perturbs every weight from there.

        Starting a learned optimizer from a hand-designed one is a common warm start (the learned
        update is a correction of Adam's in Metz et al. 2022's AdamW-based LOs; Celo keeps an
        Adam-like update with a learned schedule).
        """
        rule = self.init_rule or "momentum_over_rms_0.9"
        theta = self._random_theta(key)
        last = self.num_hidden_layers
        j = self.feature_names.index(rule)
        scale = self.init_learning_rate / self.step_scale
        fit_w, fit_b = self._decay_fit()  # -log schedule(x) ~= fit_w . tanh(10 (x - c)) + fit_b
        theta[f"w{last}"] = jnp.zeros_like(theta[f"w{last}"])
        theta[f"b{last}"] = jnp.zeros_like(theta[f"b{last}"])
        if last == 0:
            # Linear: the direction is scale * feature, the magnitude is -log schedule / lambda2.
            theta["w0"] = theta["w0"].at[j, 0].set(scale)
            if self.num_time_features and fit_w is not None:
                theta["w0_time"] = theta["w0_time"].at[:len(fit_w), 1].set(-fit_w / self.lambda2)
                theta["b0"] = theta["b0"].at[1].set(-fit_b / self.lambda2)
            return theta
        units = jnp.arange(3)
        theta["w0"] = theta["w0"].at[:, units].set(0.0).at[j, 0].set(1.0).at[j, 1].set(-1.0)
        theta["b0"] = theta["b0"].at[units].set(0.0)
        if self.num_time_features:
            theta["w0_time"] = theta["w0_time"].at[:, units].set(0.0)
            if fit_w is not None:
                theta["w0_time"] = theta["w0_time"].at[:len(fit_w), 2].set(fit_w)
                theta["b0"] = theta["b0"].at[2].set(fit_b)
        for i in range(1, last):
            w = theta[f"w{i}"].at[:, units].set(0.0)
            theta[f"w{i}"] = w.at[0, 0].set(1.0).at[1, 1].set(1.0).at[2, 2].set(1.0)
            theta[f"b{i}"] = theta[f"b{i}"].at[units].set(0.0)
        theta[f"w{last}"] = (theta[f"w{last}"].at[0, 0].set(scale).at[1, 0].set(-scale)
                             .at[2, 1].set(-1.0 / self.lambda2))
        return theta

    def _decay_fit(self) -> tuple[Optional[jax.Array], float]:
        """Least-squares weights on the fraction features for -log of ``init_decay``'s cosine.

        Returns ``(weights over FRACTION_CENTERS, bias)``, or ``(None, 0.0)`` for a constant step.
        """
        if self.init_decay is None:
            return None, 0.0
        x = np.linspace(0.0, 1.0, 401)
        target = -np.log(self.init_decay + (1.0 - self.init_decay) * 0.5 * (1.0 + np.cos(np.pi * x)))
        basis = np.tanh(10.0 * (x[:, None] - np.asarray(tf.FRACTION_CENTERS)[None, :]))
        design = np.concatenate([basis, np.ones((len(x), 1))], axis=1)
        coef, *_ = np.linalg.lstsq(design, target, rcond=None)
        return jnp.asarray(coef[:-1], jnp.float32), float(coef[-1])

    # --- the network --------------------------------------------------------------------------

    def _bias0(self, theta: dict, time_vec: jax.Array) -> jax.Array:
        """Layer 0's bias with the time features' contribution (the same for every parameter)."""
        if self.num_time_features:
            return theta["b0"] + time_vec @ theta["w0_time"]
        return theta["b0"]

    def _layers_after_first(self, theta: dict, h: jax.Array) -> jax.Array:
        """From layer 0's pre-activations h (hidden, n) to the step lambda1 d exp(lambda2 m), (n,).

        Features-major layout, (hidden, hidden) @ (hidden, n): the long parameter axis is the
        matmuls' output columns, which CPU matmul kernels handle faster than the transpose.
        """
        for i in range(1, self.num_hidden_layers + 1):
            h = theta[f"w{i}"].T @ jax.nn.relu(h) + theta[f"b{i}"][:, None]
        return self.step_scale * h[0] * jnp.exp(self.lambda2 * h[1])

    def _matrix_step(self, theta: dict, bias0: jax.Array, p, g, momentum, second, factored, count,
                     decays: dict) -> jax.Array:
        """The step of one matrix (before its multiplier s_W), shape ``g.shape``.

        The same arithmetic as the batched path, arranged for speed:

        - features that are broadcasts of the factored accumulators (``adafactor_row``/``col`` and
          their reciprocal square roots) are never broadcast: their layer-0 contribution is a
          (hidden, rows) and a (hidden, cols) matrix added to the pre-activations;
        - the per-tensor RMS normalisers of the per-entry features are folded into layer 0's
          weights;
        - on CPU a large matrix runs block by block of rows (``lax.map``), so a block's features
          and activations stay in cache instead of streaming arrays of the whole matrix through
          memory; the normalisers then come from a first pass over the same blocks.
        """
        names = self.feature_names
        axis_of = [feat.feature_axis(n) for n in names]
        pick = lambda axis: [i for i, a in enumerate(axis_of) if a == axis]
        dense, by_row, by_col = pick("param"), pick("row"), pick("col")
        rows, cols = g.shape
        row, col = factored
        w0 = theta["w0"]
        hidden = w0.shape[1]
        row_mean = jnp.mean(row, axis=-1)
        features = functools.partial(feat.tensor_features, tuple(names[i] for i in dense),
                                     count=count, eps=self.eps, row_mean=row_mean, **decays)

        def vector_part(idx, length):  # layer-0 contribution of the row or column features
            if not idx:
                return jnp.zeros((hidden, length), jnp.float32)
            x = feat.factored_vector_features([names[i] for i in idx], (row, col), eps=self.eps,
                                              factored_decays=decays["factored_decays"])
            if self.normalize_inputs:
                x = x * feat.feature_inv_rms(x)[:, None]
            return w0[jnp.asarray(idx)].T @ x

        row_part = vector_part(by_row, rows)
        col_part = vector_part(by_col, cols) + bias0[:, None]
        w0_dense = w0[jnp.asarray(dense, jnp.int32)]

        def block_step(x, row_part):
            h = jnp.einsum("fh,frc->hrc", w0_dense, x) + row_part[:, :, None] + col_part[:, None, :]
            return self._layers_after_first(theta, h.reshape(hidden, -1)).reshape(x.shape[1:])

        block, num_blocks = _num_blocks(rows, cols, self.row_block)
        if num_blocks == 1:
            x = features(p, g, momentum, second, (row, col))
            if self.normalize_inputs and dense:
                x = x * feat.feature_inv_rms(x)[:, None, None]
            return block_step(x, row_part)

        pad = num_blocks * block - rows
        if pad:
            # Padding rows hold moderate features (second moments of 1, not 0), so their discarded
            # steps stay finite and cannot turn meta-gradients into NaN.
            p, g = (jnp.pad(a, ((0, pad), (0, 0))) for a in (p, g))
            second = jnp.pad(second, ((0, pad), (0, 0)), constant_values=1.0)
            momentum = jnp.pad(momentum, ((0, 0), (0, pad), (0, 0)))
            row = jnp.pad(row, ((0, 0), (0, pad)), constant_values=1.0)
            row_part = jnp.pad(row_part, ((0, 0), (0, pad)))

        def block_slice(a, b, axis):
            return jax.lax.dynamic_slice_in_dim(a, b * block, block, axis)

        def block_features(b):
            return features(block_slice(p, b, 0), block_slice(g, b, 0), block_slice(momentum, b, 1),
                            block_slice(second, b, 0), (block_slice(row, b, 1), col))

        if self.normalize_inputs and dense:
            def block_sum_squares(b):
                x = block_features(b)
                if pad:  # padded rows do not count
                    x = jnp.where((b * block + jnp.arange(block) < rows)[None, :, None], x, 0.0)
                return jnp.sum(jnp.square(x), axis=(1, 2))

            sum_squares = jnp.sum(jax.lax.map(block_sum_squares, jnp.arange(num_blocks)), axis=0)
            w0_dense = w0_dense * jax.lax.rsqrt(sum_squares / (rows * cols) + 1e-30)[:, None]

        steps = jax.lax.map(lambda b: block_step(block_features(b), block_slice(row_part, b, 1)),
                            jnp.arange(num_blocks))
        return steps.reshape(num_blocks * block, cols)[:rows]

    # --- the optax transformation -------------------------------------------------------------

    def _per_tensor(self, params, param_meta, roles, multipliers, base_params, parametrization):
        """(s_W, whether the step is orthogonalised) per tensor, in ``jax.tree.leaves(unwrap(params))``
        order; the µP metadata is resolved once, where the multipliers or ``orthogonalize`` need it."""
        count = len(jax.tree.leaves(unwrap(params)))
        given = any(x is not None for x in (param_meta, roles, base_params))
        meta = None
        if self.orthogonalize or (multipliers is None and (self.mup or given)):
            meta = resolve_param_meta(params, param_meta, roles, base_params, parametrization)  # validates
        if multipliers is not None:
            scales = jax.tree.leaves(check_multipliers(params, multipliers))
        elif self.mup:
            scales = jax.tree.leaves(lo_multipliers(meta))
        else:
            scales = [1.0] * count
        hidden = [r == "hidden" for r in jax.tree.leaves(roles_of(meta))] if self.orthogonalize else [False] * count
        return scales, hidden

    def transform(self, theta: dict, num_steps: Any, *, param_meta: Any = None, roles: Any = None,
                  multipliers: Any = None, base_params: Any = None, parametrization: Optional[str] = None,
                  learning_rate: Any = 1.0) -> optax.GradientTransformationExtraArgs:
        """The optax transformation defined by ``theta`` for a run of ``num_steps`` steps.

        Args:
          theta: meta-parameters from ``init`` (may be traced: meta-gradients, vmapped populations).
          num_steps: the run length T used by the fraction features (int, may be traced).
          param_meta: pytree of ``ParamMeta`` for the params (e.g. ``task.param_meta``); it says
            whether the model is µP or SP.
          roles: optional pytree of µP role overrides.
          multipliers: optional pytree of per-tensor update multipliers replacing s_W (applied in
            SP mode too).
          base_params: the model at another (its base) width, to infer roles when ``param_meta`` is
            absent.
          parametrization: ``"sp"`` (a model without a 1/width readout multiplier) or ``"mup"``;
            ``None`` takes it from ``param_meta``, and means ``"sp"`` when roles are inferred: a
            user's own model is standard unless said otherwise (``metaopt.mup`` derives the
            multipliers that make a µLO's steps on it those it took on µP models).
          learning_rate: a global step scale (float, or a schedule of the step count like optax's);
            1.0 is the meta-trained optimizer. ``optax.inject_hyperparams`` can drive it.

        Roles and fans are inferred from the gradients' paths and shapes when the update is traced
        (``metaopt.mup.infer_param_meta``); ``metaopt.mup.param_table`` prints them. Parameters may
        be flax ``nnx`` variables (``nnx.Optimizer(model, tx, wrt=nnx.Param)``): the state holds
        plain arrays, so it keeps its type from step to step. Training past ``num_steps`` warns once.

        Returns:
          ``optax.GradientTransformationExtraArgs``; ``update(updates, state, params, **extra)``
          needs ``params`` (the parameter is an input feature) and ignores extra keywords such as
          ``loss``.

        Raises:
          ValueError: wrong theta structure, ``num_steps`` not a positive integer, non-float params,
            or µP metadata not matching params (naming the tensor).
        """
        self.check_theta(theta)
        tf.check_num_steps(num_steps)
        names = self.feature_names
        decays = dict(momentum_decays=self.momentum_decays,
                      second_moment_decay=self.second_moment_decay,
                      factored_decays=self.factored_decays)
        mup_args = (param_meta, roles, multipliers, base_params, parametrization)
        past_end = _past_end_warning(theta, num_steps)

        def init_fn(params):
            check_params(params)
            self._per_tensor(params, *mup_args)
            return feat.init_accumulators(unwrap(params), self.momentum_decays, self.factored_decays)

        def update_fn(updates, state, params=None, **extra_args):
            del extra_args
            if params is None:
                raise ValueError("params: MLPLOpt.update needs params (the parameter is an input feature)")
            out_treedef = jax.tree.structure(updates)  # nnx variables stay where they were
            updates, params = unwrap(updates), unwrap(params)
            scales, orthogonal = self._per_tensor(updates, *mup_args)
            step_size = learning_rate(state.count) if callable(learning_rate) else learning_rate
            if past_end is not None:
                past_end(state.count)
            time_vec = tf.time_features(state.count, num_steps, self.time_features, self.step_features)
            state = feat.update_accumulators(updates, state, **decays)
            g_leaves, treedef = jax.tree.flatten(updates)
            if not g_leaves:
                return updates, state
            p_leaves = treedef.flatten_up_to(params)
            m_leaves = treedef.flatten_up_to(state.momentum)
            v_leaves = treedef.flatten_up_to(state.second_moment)
            f_leaves = treedef.flatten_up_to(state.factored)
            bias0 = self._bias0(theta, time_vec)
            steps = [None] * len(g_leaves)
            # Matrices get their own pass; every other tensor's features go through the MLP in
            # one batch (one small program whatever the number of tensors).
            xs, batched = [], []
            for i, (g, p, m, v, f) in enumerate(zip(g_leaves, p_leaves, m_leaves, v_leaves, f_leaves)):
                if g.ndim == 2 and g.size >= _MATRIX_MIN_SIZE:
                    steps[i] = self._matrix_step(theta, bias0, p, g, m, v, tuple(f), state.count, decays)
                    continue
                x = feat.tensor_features(names, p, g, m, v, tuple(f), state.count, eps=self.eps, **decays)
                if self.normalize_inputs:
                    x = feat.normalize_features(x)
                xs.append(x.reshape(x.shape[0], -1))
                batched.append(i)
            if xs:
                h = theta["w0"].T @ jnp.concatenate(xs, axis=1) + bias0[:, None]
                step = self._layers_after_first(theta, h)
                offset = 0
                for i in batched:
                    size = g_leaves[i].size
                    steps[i] = step[offset:offset + size].reshape(g_leaves[i].shape)
                    offset += size
            steps = [orthogonalized(s) if o and s.ndim >= 2 else s for s, o in zip(steps, orthogonal)]
            step_size = jnp.asarray(step_size, jnp.float32)
            decay = step_size * self.decay_rate(theta, time_vec)
            out = [(-(step_size * jnp.asarray(s, jnp.float32)) * u
                    - (decay * p if self.weight_decay is not None and p.ndim >= 2 else 0.0)).astype(p.dtype)
                   for u, p, s in zip(steps, p_leaves, scales)]
            return jax.tree.unflatten(out_treedef, out), state

        return optax.GradientTransformationExtraArgs(init_fn, update_fn)
