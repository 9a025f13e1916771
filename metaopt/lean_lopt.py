"""A lean learned optimizer: a per-tensor network that emits the weights of a tiny per-parameter MLP.

``MLPLOpt`` runs a 2 x 32 MLP on 28 features for every parameter, about 3,400-4,200 FLOPs per
parameter per step; on a model trained at batch 128 that is several times the model's own forward
and backward pass (6 x batch FLOPs per parameter). ``LeanLOpt`` follows VeLO's split instead: the
expensive part of the network runs once per *tensor*, and what runs per parameter is tiny.

- Per parameter: a few features (by default the parameter, the gradient and Adam's direction at
  three momentum decays, each normalised by its RMS over the tensor) go through an MLP with one
  hidden layer of ``per_param_hidden`` units (4 by default) to a direction d and a magnitude m; the
  step is lambda1 * d * exp(lambda2 * m), times the µLO multiplier s_W (1/fan_in for hidden
  matrices) in µP mode. About 100-150 FLOPs per parameter, features and accumulators included.
- Per tensor: a small MLP reads the tensor's context (the time features and the log-RMS of every
  input feature, which the per-parameter normalisation hides) and emits an offset to every weight
  of that per-parameter MLP (``base`` + ``hyper(context)``), so each tensor gets its own update rule
  at each point of training.

VeLO's per-tensor network is an LSTM over the training run; here it is a feed-forward MLP of the
current context (the momenta and time features carry the history), which keeps the optimizer state
the same as ``MLPLOpt``'s and a step a pure function of it.

References:
  Metz et al., "VeLO: Training Versatile Learned Optimizers by Scaling Up", 2022 (per-tensor
  hypernetwork emitting a per-parameter MLP). Therien et al., "µLO: Compute-Efficient
  Meta-Generalization of Learned Optimizers", ICLR 2026 (µP multipliers, step parametrisation).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metaopt import features as feat
from metaopt import time_features as tf
from metaopt.learned_optimizer import LearnedOptimizer, register
from metaopt.mup import check_multipliers, check_params, lo_multipliers, resolve_param_meta, unwrap

__all__ = ["DEFAULT_FEATURES", "LeanLOpt"]

PyTree = Any

DEFAULT_FEATURES = ("param", "grad", "momentum_over_rms_0.9", "momentum_over_rms_0.99",
                    "momentum_over_rms_0.999")

# Scale of the log-RMS context inputs: log RMS of a feature spans about -30..5; divided by this it is
# Θ(1) for the second moments and gradients of ordinary models.
_LOG_RMS_SCALE = 10.0


@register
@dataclasses.dataclass(frozen=True)
class LeanLOpt(LearnedOptimizer):
    """Per-tensor hypernetwork over a tiny per-parameter MLP (VeLO's design, lean per parameter).

    Attributes:
      per_param_hidden: hidden units of the per-parameter MLP (0: d and m are linear in the features).
      hyper_hidden: hidden units of the per-tensor network.
      mup: multiply each tensor's update by its µLO multiplier s_W (1/fan_in for hidden matrices).
      time_features: feed the fraction trained t/T and log T to the per-tensor network.
      step_features: feed the absolute step count to the per-tensor network.
      features: per-parameter input features (names of ``metaopt.features.feature_names``).
      normalize_inputs: divide every per-parameter feature by its RMS over the tensor.
      lambda1: step scale; ``None`` means 0.01 with ``mup=True`` and 0.001 without.
      lambda2: magnitude scale inside the exponential.
      momentum_decays, second_moment_decay, factored_decays: the accumulators' decays.
      eps: Adam-style epsilon.
      output_init_scale: scale of the random init of the per-parameter output weights.
      hyper_init_scale: scale of the random init of the per-tensor network's output layer (small, so
        a fresh theta starts close to one shared per-parameter MLP).
    """

    kind: ClassVar[str] = "lean_lopt"

    per_param_hidden: int = 4
    hyper_hidden: int = 16
    mup: bool = True
    time_features: bool = True
    step_features: bool = True
    features: tuple = DEFAULT_FEATURES
    normalize_inputs: bool = True
    lambda1: Optional[float] = None
    lambda2: float = 0.001
    momentum_decays: tuple = feat.MOMENTUM_DECAYS
    second_moment_decay: float = feat.SECOND_MOMENT_DECAY
    factored_decays: tuple = feat.FACTORED_DECAYS
    eps: float = 1e-8
    output_init_scale: float = 0.1
    hyper_init_scale: float = 0.01

    def __post_init__(self):
        for name in ("momentum_decays", "factored_decays", "features"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        if int(self.per_param_hidden) < 0:
            raise ValueError(f"per_param_hidden: must be >= 0, got {self.per_param_hidden}")
        if int(self.hyper_hidden) < 1:
            raise ValueError(f"hyper_hidden: must be >= 1, got {self.hyper_hidden}")
        if self.lambda1 is not None and not self.lambda1 > 0:
            raise ValueError(f"lambda1: must be > 0 or None, got {self.lambda1}")
        known = feat.feature_names(self.momentum_decays, self.factored_decays)
        unknown = [n for n in self.features if n not in known]
        if unknown or not self.features:
            raise ValueError(f"features: unknown or empty {list(self.features)}; known: {list(known)}")

    # --- architecture -------------------------------------------------------------------------

    @property
    def num_features(self) -> int:
        return len(self.features)

    @property
    def step_scale(self) -> float:
        """lambda1: as given, else 0.01 in µP mode and 0.001 in SP mode."""
        if self.lambda1 is not None:
            return float(self.lambda1)
        return 0.01 if self.mup else 0.001

    @property
    def context_size(self) -> int:
        """Inputs of the per-tensor network: time features, then one log-RMS per feature."""
        return tf.num_time_features(self.time_features, self.step_features) + self.num_features

    def _per_param_shapes(self) -> dict[str, tuple[int, ...]]:
        f, h = self.num_features, self.per_param_hidden
        if h == 0:
            return {"w0": (f, 2), "b0": (2,)}
        return {"w0": (f, h), "b0": (h,), "w1": (h, 2), "b1": (2,)}

    @property
    def num_per_param_weights(self) -> int:
        """Weights (and biases) of the per-parameter MLP: what the per-tensor network emits."""
        return sum(int(np.prod(s)) for s in self._per_param_shapes().values())

    @property
    def flops_per_param(self) -> float:
        """Multiply-adds of the per-parameter MLP, twice, plus about 12 FLOPs per feature
        (accumulators, feature and normalisation) and 8 for the step: an estimate for schedulers
        and progress bars; ``bench/step_overhead.py`` counts the compiled program."""
        f, h = self.num_features, self.per_param_hidden
        mlp = 2 * (f * h + 2 * h) + h if h else 2 * f * 2
        return float(mlp + 12 * f + 8)

    def init(self, key: jax.Array) -> dict:
        """Random theta.

        Returns:
          ``{"base": {...}, "hyper": {"w0", "b0", "w1", "b1"}}``: ``base`` holds the per-parameter
          MLP's weights shared by every tensor (He-normal hidden layer, output scaled by
          ``output_init_scale``); the per-tensor network maps the context (``context_size``) through
          ``hyper_hidden`` ReLU units to one offset per base weight (``num_per_param_weights``).
        """
        k_base, k_h0, k_h1 = jax.random.split(key, 3)
        shapes = self._per_param_shapes()
        base = {}
        keys = jax.random.split(k_base, len(shapes))
        for (name, shape), k in zip(shapes.items(), keys):
            if name.startswith("b"):
                base[name] = jnp.zeros(shape, jnp.float32)
                continue
            last = name == ("w1" if self.per_param_hidden else "w0")
            gain = 1.0 if last else 2.0
            scale = self.output_init_scale if last else 1.0
            base[name] = scale * np.sqrt(gain / shape[0]) * jax.random.normal(k, shape, jnp.float32)
        c, hh, p = self.context_size, self.hyper_hidden, self.num_per_param_weights
        hyper = {
            "w0": np.sqrt(2.0 / max(c, 1)) * jax.random.normal(k_h0, (c, hh), jnp.float32),
            "b0": jnp.zeros((hh,), jnp.float32),
            "w1": self.hyper_init_scale * np.sqrt(1.0 / hh) * jax.random.normal(k_h1, (hh, p), jnp.float32),
            "b1": jnp.zeros((p,), jnp.float32),
        }
        return {"base": base, "hyper": hyper}

    def feature_theta(self, feature: str, scale: float = 1.0) -> dict:
        """A theta whose direction is exactly ``scale`` times one input feature, magnitude 0, and whose
        per-tensor network emits zeros (so every tensor uses the same rule).

        With ``momentum_over_rms_0.9``, ``normalize_inputs=False, mup=False, time_features=False,
        step_features=False, lambda1=lr`` this is ``optax.adam(lr)``.
        """
        if feature not in self.features:
            raise ValueError(f"feature: {feature!r} is not an input; known: {list(self.features)}")
        theta = jax.tree.map(jnp.zeros_like, self.init(jax.random.key(0)))
        j = self.features.index(feature)
        base = theta["base"]
        if self.per_param_hidden == 0:
            base["w0"] = base["w0"].at[j, 0].set(scale)
        else:
            if self.per_param_hidden < 2:
                raise ValueError("per_param_hidden: feature_theta needs at least 2 hidden units")
            # relu(x) - relu(-x) = x through the hidden layer.
            base["w0"] = base["w0"].at[j, 0].set(1.0).at[j, 1].set(-1.0)
            base["w1"] = base["w1"].at[0, 0].set(scale).at[1, 0].set(-scale)
        return theta

    # --- the network --------------------------------------------------------------------------

    def _unflatten(self, flat: jax.Array) -> dict:
        out, offset = {}, 0
        for name, shape in self._per_param_shapes().items():
            size = int(np.prod(shape))
            out[name] = flat[offset:offset + size].reshape(shape)
            offset += size
        return out

    def _tensor_weights(self, theta: dict, context: jax.Array) -> dict:
        """The per-parameter MLP of one tensor: base weights plus the per-tensor network's offsets."""
        hyper = theta["hyper"]
        h = jax.nn.relu(context @ hyper["w0"] + hyper["b0"])
        offsets = self._unflatten(h @ hyper["w1"] + hyper["b1"])
        return {name: theta["base"][name] + offsets[name] for name in offsets}

    def _tensor_step(self, theta: dict, time_vec: jax.Array, x: jax.Array) -> jax.Array:
        """Step of one tensor (before s_W) from its features x, shape (num_features, *shape)."""
        flat = x.reshape(x.shape[0], -1)
        if self.normalize_inputs:
            inv_rms = feat.feature_inv_rms(flat)
            flat = flat * inv_rms[:, None]
            log_rms = -jnp.log(inv_rms) / _LOG_RMS_SCALE
        else:
            log_rms = 0.5 * jnp.log(jnp.mean(jnp.square(flat), axis=1) + 1e-30) / _LOG_RMS_SCALE
        context = jnp.concatenate([time_vec, log_rms])
        w = self._tensor_weights(theta, context)
        if self.per_param_hidden:
            h = jax.nn.relu(w["w0"].T @ flat + w["b0"][:, None])
            out = w["w1"].T @ h + w["b1"][:, None]
        else:
            out = w["w0"].T @ flat + w["b0"][:, None]
        step = self.step_scale * out[0] * jnp.exp(self.lambda2 * out[1])
        return step.reshape(x.shape[1:])

    # --- the optax transformation -------------------------------------------------------------

    def _multipliers(self, params, param_meta, roles, multipliers, base_params, parametrization):
        """s_W per tensor, in ``jax.tree.leaves(unwrap(params))`` order."""
        if multipliers is not None:
            return jax.tree.leaves(check_multipliers(params, multipliers))
        if not self.mup:
            return [1.0] * len(jax.tree.leaves(unwrap(params)))
        meta = resolve_param_meta(params, param_meta, roles, base_params, parametrization)
        return jax.tree.leaves(lo_multipliers(meta))

    def transform(self, theta: dict, num_steps: Any, *, param_meta: Any = None, roles: Any = None,
                  multipliers: Any = None, base_params: Any = None, parametrization: Optional[str] = None
                  ) -> optax.GradientTransformationExtraArgs:
        """The optax transformation defined by ``theta`` for a run of ``num_steps`` steps.

        Args:
          theta: meta-parameters from ``init`` (may be traced).
          num_steps: the run length T used by the fraction features (int, may be traced).
          param_meta, roles, multipliers, base_params, parametrization: the µP information, as for
            ``MLPLOpt.transform``.

        Returns:
          ``optax.GradientTransformationExtraArgs`` whose ``update`` needs ``params``; its state is
          ``metaopt.features.Accumulators``.
        """
        self.check_theta(theta)
        tf.check_num_steps(num_steps)
        decays = dict(momentum_decays=self.momentum_decays,
                      second_moment_decay=self.second_moment_decay,
                      factored_decays=self.factored_decays)

        mup_args = (param_meta, roles, multipliers, base_params, parametrization)

        def init_fn(params):
            check_params(params)
            self._multipliers(params, *mup_args)
            return feat.init_accumulators(unwrap(params), self.momentum_decays, self.factored_decays)

        def update_fn(updates, state, params=None, **extra_args):
            del extra_args
            if params is None:
                raise ValueError("params: LeanLOpt.update needs params (the parameter is an input feature)")
            out_treedef = jax.tree.structure(updates)  # nnx variables stay where they were
            updates, params = unwrap(updates), unwrap(params)
            scales = self._multipliers(updates, *mup_args)
            time_vec = tf.time_features(state.count, num_steps, self.time_features, self.step_features)
            state = feat.update_accumulators(updates, state, **decays)
            g_leaves, treedef = jax.tree.flatten(updates)
            p_leaves = treedef.flatten_up_to(params)
            m_leaves = treedef.flatten_up_to(state.momentum)
            v_leaves = treedef.flatten_up_to(state.second_moment)
            f_leaves = treedef.flatten_up_to(state.factored)
            out = []
            for g, p, m, v, f, s in zip(g_leaves, p_leaves, m_leaves, v_leaves, f_leaves, scales):
                x = feat.tensor_features(self.features, p, g, m, v, tuple(f), state.count, eps=self.eps,
                                         **decays)
                step = self._tensor_step(theta, time_vec, x)
                out.append((-jnp.asarray(s, jnp.float32) * step).astype(p.dtype))
            return jax.tree.unflatten(out_treedef, out), state

        return optax.GradientTransformationExtraArgs(init_fn, update_fn)
