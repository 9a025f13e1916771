"""Tests of the per-parameter MLP learned optimizer (metaopt.MLPLOpt) and its features."""

import dataclasses

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metaopt
from metaopt import MLPLOpt
from metaopt import features as feat
from metaopt import time_features as tf
from metaopt.learned_optimizer import lookup
from metaopt.mup import infer_param_meta
from tiny_mlp import SIZES, batch, init_mlp, loss_fn


def unroll_losses(tx, num_steps, key):
    """Training losses of a whole run of the tiny MLP under ``tx``, in one lax.scan."""
    params = init_mlp(key, SIZES)
    state = tx.init(params)

    def body(carry, i):
        params, state = carry
        loss, grads = jax.value_and_grad(loss_fn)(params, batch(jax.random.fold_in(key, i)))
        updates, state = tx.update(grads, state, params, loss=loss)
        return (optax.apply_updates(params, updates), state), loss

    _, losses = jax.lax.scan(body, (params, state), jnp.arange(num_steps))
    return losses


SMALL = MLPLOpt(hidden_size=8)
NUM_STEPS = 20


@pytest.fixture(scope="module")
def meta_loss():
    """(mean training loss over a 20-step run in chain(clip, LO), the loss curve) and the gradient
    of the mean with respect to theta; jitted once for the module."""

    def f(theta):
        tx = optax.chain(optax.clip_by_global_norm(1.0), SMALL.transform(theta, NUM_STEPS))
        losses = unroll_losses(tx, NUM_STEPS, jax.random.key(1))
        return jnp.mean(losses), losses

    return jax.jit(jax.value_and_grad(f, has_aux=True))


# --- numerical reference: Adam --------------------------------------------------------------

def test_adam_equivalence():
    lr = 3e-2
    lo = MLPLOpt(num_hidden_layers=0, normalize_inputs=False, mup=False, time_features=False,
                 step_features=False, lambda1=lr)
    theta = lo.feature_theta("momentum_over_rms_0.9")
    txs = (lo.transform(theta, NUM_STEPS), optax.adam(lr))
    params = init_mlp(jax.random.key(0), [4, 8, 1])

    @jax.jit
    def step(ps, ss, i):
        data = batch(jax.random.fold_in(jax.random.key(3), i))
        out = []
        for tx, p, s in zip(txs, ps, ss):
            grads = jax.grad(loss_fn)(p, data)
            updates, s = tx.update(grads, s, p)
            out.append((optax.apply_updates(p, updates), s))
        return tuple(o[0] for o in out), tuple(o[1] for o in out)

    ps, ss = (params, params), (txs[0].init(params), txs[1].init(params))
    for i in range(NUM_STEPS):
        ps, ss = step(ps, ss, i)
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), ps[1], params)
    assert min(jax.tree.leaves(moved)) > 0.01
    for a, b in zip(jax.tree.leaves(ps[0]), jax.tree.leaves(ps[1])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# --- training ---------------------------------------------------------------------------------

def test_adam_like_theta_trains_in_chain(meta_loss):
    (_, losses), _ = meta_loss(SMALL.feature_theta("momentum_over_rms_0.9"))
    assert np.all(np.isfinite(losses))
    assert float(losses[-3:].mean()) < 0.5 * float(losses[:3].mean())


def test_meta_gradient_descent_lowers_loss(meta_loss):
    theta = SMALL.init(jax.random.key(0))
    (loss0, _), grads = meta_loss(theta)
    leaves = jax.tree.leaves(grads)
    assert all(np.all(np.isfinite(g)) for g in leaves)
    assert all(float(jnp.sum(jnp.abs(grads[name]))) > 0 for name in ("w0", "w0_time", "w2", "b2"))
    outer = optax.adam(3e-2)
    outer_state = outer.init(theta)
    for _ in range(4):
        updates, outer_state = outer.update(grads, outer_state, theta)
        theta = optax.apply_updates(theta, updates)
        (loss, _), grads = meta_loss(theta)
    assert np.isfinite(float(loss))
    assert float(loss) < 0.8 * float(loss0)


def test_vmap_over_thetas_and_traced_num_steps():
    params = init_mlp(jax.random.key(0), SIZES)
    grads = jax.grad(loss_fn)(params, batch(jax.random.key(1)))

    def first_update(theta, num_steps):
        tx = SMALL.transform(theta, num_steps)
        return tx.update(grads, tx.init(params), params)[0]["l0"]["w"]

    a, b, c = (SMALL.init(jax.random.key(i)) for i in range(3))
    thetas = jax.tree.map(lambda *xs: jnp.stack(xs), a, a, b, c)
    ups = jax.jit(jax.vmap(first_update))(thetas, jnp.array([10, 1000, 10, 10]))
    assert ups.shape == (4, 4, 16)
    assert np.all(np.isfinite(ups))
    assert float(jnp.max(jnp.abs(ups[0] - ups[1]))) > 0     # num_steps enters the time features
    assert float(jnp.max(jnp.abs(ups[0] - ups[2]))) > 0     # each member has its own theta


# --- state, compilation, dtypes ---------------------------------------------------------------

@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_no_recompile_and_stable_state(dtype):
    lo = SMALL
    tx = lo.transform(lo.init(jax.random.key(0)), 100)
    params = init_mlp(jax.random.key(0), SIZES, dtype)
    state = tx.init(params)
    traces = []

    @jax.jit
    def step(params, state, i):
        traces.append(1)
        grads = jax.grad(loss_fn)(params, batch(jax.random.fold_in(jax.random.key(0), i)))
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, updates

    shapes0 = jax.tree.map(lambda x: (x.shape, x.dtype), state)
    for i in range(3):
        params, state, updates = step(params, state, i)
        assert jax.tree.map(lambda x: (x.shape, x.dtype), state) == shapes0
    assert len(traces) == 1
    assert step._cache_size() == 1
    assert all(u.dtype == dtype for u in jax.tree.leaves(updates))
    assert all(p.dtype == dtype for p in jax.tree.leaves(params))
    assert all(x.dtype in (jnp.float32, jnp.int32) for x in jax.tree.leaves(state))
    assert all(np.all(np.isfinite(np.asarray(u, np.float32))) for u in jax.tree.leaves(updates))
    assert int(state.count) == 3


def test_state_memory_within_budget():
    params = init_mlp(jax.random.key(0), [16, 64, 64, 10])
    nbytes = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))
    ours = nbytes(SMALL.transform(SMALL.init(jax.random.key(0)), 10).init(params))
    adam = nbytes(optax.adam(1e-3).init(params))
    assert ours <= 2.5 * adam


def test_factored_accumulators_match_definition():
    g = jax.random.normal(jax.random.key(0), (3, 5))
    rank1 = jnp.outer(jnp.arange(1.0, 4.0), jnp.arange(1.0, 6.0))

    @jax.jit
    def check(g, rank1):
        grads = {"w": g, "b": g[0]}
        state = feat.update_accumulators(grads, feat.init_accumulators(grads))
        x = feat.tensor_features(feat.feature_names(), g, g, state.momentum["w"], state.second_moment["w"],
                                 state.factored["w"], state.count)
        st = feat.update_accumulators({"w": rank1}, feat.init_accumulators({"w": rank1}))
        ada = feat.tensor_features(["adafactor_grad_0.9"], rank1, rank1, st.momentum["w"],
                                   st.second_moment["w"], st.factored["w"], st.count)
        sub = feat.tensor_features(["grad", "momentum_0.99", "momentum_0.999", "param"], rank1, 2 * rank1,
                                   st.momentum["w"], st.second_moment["w"], st.factored["w"], st.count)
        return state, x, st, ada, sub

    state, x, st, ada, sub = check(g, rank1)
    row, col = state.factored["w"]
    np.testing.assert_allclose(row[0], 0.1 * jnp.mean(g ** 2, axis=1), rtol=1e-4)
    np.testing.assert_allclose(col[2], 0.001 * jnp.mean(g ** 2, axis=0), rtol=1e-4)
    (full,) = state.factored["b"]
    np.testing.assert_allclose(full[1], 0.01 * g[0] ** 2, rtol=1e-4)
    assert x.shape == (len(feat.feature_names()), 3, 5)
    assert np.all(np.isfinite(x))
    names = feat.feature_names()
    np.testing.assert_allclose(x[names.index("momentum_over_rms_0.9")], jnp.sign(g), rtol=1e-4)
    # At the first step the factored estimate of a rank-1 g^2 is exact, so g / sqrt(v_fac) is
    # 1/sqrt(1 - 0.9) everywhere.
    np.testing.assert_allclose(ada[0], np.full((3, 5), 1 / np.sqrt(0.1)), rtol=1e-4)
    np.testing.assert_allclose(sub[0], 2 * rank1)
    np.testing.assert_allclose(sub[1:3], st.momentum["w"][1:])
    np.testing.assert_allclose(sub[3], rank1)


def test_normalized_features_are_width_independent():
    @jax.jit
    def hidden_features(key, scale):
        # A hidden matrix and its small, width-dependent gradient: raw accumulators are ~1e-12.
        width = scale.shape[0]
        p = jax.random.normal(key, (width, width)) / jnp.sqrt(width)
        g = 1e-4 * jax.random.normal(jax.random.fold_in(key, 1), (width, width)) * scale
        state = feat.update_accumulators({"w": g}, feat.init_accumulators({"w": p}))
        x = feat.tensor_features(feat.feature_names(), p, g, state.momentum["w"], state.second_moment["w"],
                                 state.factored["w"], state.count)
        return jnp.sqrt(jnp.mean(jnp.square(feat.normalize_features(x)), axis=(1, 2)))

    for width in (16, 256):
        rms = hidden_features(jax.random.key(0), jnp.full((width,), 1 / np.sqrt(width)))
        np.testing.assert_allclose(rms, 1.0, rtol=1e-3)


# --- µP multipliers ---------------------------------------------------------------------------

def _first_update(lo, theta, params, **kwargs):
    tx = lo.transform(theta, 50, **kwargs)
    grads = jax.grad(loss_fn)(params, batch(jax.random.key(1)))
    return tx.update(grads, tx.init(params), params)[0]


@pytest.mark.parametrize("width", [8, 32])
def test_mup_multipliers_against_sp(width):
    mup_lo = dataclasses.replace(SMALL, mup=True, lambda1=0.01)
    sp_lo = dataclasses.replace(SMALL, mup=False, lambda1=0.01)
    theta = SMALL.init(jax.random.key(0))
    params = init_mlp(jax.random.key(0), [4, width, width, 1])
    base = init_mlp(jax.random.key(0), [4, 8, 8, 1])
    mults = jax.tree.map(lambda _: 0.5, params)

    @jax.jit
    def updates(theta, params, base):
        return (_first_update(sp_lo, theta, params),
                _first_update(mup_lo, theta, params, parametrization="mup"),
                _first_update(mup_lo, theta, params,
                              param_meta=infer_param_meta(params, base, parametrization="mup")),
                _first_update(mup_lo, theta, params),
                _first_update(sp_lo, theta, params, multipliers=mults))

    sp_up, *mup_ups, sp_model_up, half_up = updates(theta, params, base)
    assert float(jnp.max(jnp.abs(sp_up["l1"]["w"]))) > 0
    for up in mup_ups:
        np.testing.assert_allclose(up["l1"]["w"], sp_up["l1"]["w"] / width, rtol=1e-5, atol=1e-12)
        for name in ("l0", "l2"):
            np.testing.assert_allclose(up[name]["w"], sp_up[name]["w"], rtol=1e-6)
        for name in ("l0", "l1", "l2"):
            np.testing.assert_allclose(up[name]["b"], sp_up[name]["b"], rtol=1e-6)
    # A standard model (the default for inferred roles) has no 1/width readout multiplier, so a
    # µLO scales its readout's update by 1/fan_in as well.
    np.testing.assert_allclose(sp_model_up["l2"]["w"], sp_up["l2"]["w"] / width, rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(sp_model_up["l1"]["w"], sp_up["l1"]["w"] / width, rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(sp_model_up["l0"]["w"], sp_up["l0"]["w"], rtol=1e-6)
    np.testing.assert_allclose(half_up["l1"]["w"], 0.5 * sp_up["l1"]["w"], rtol=1e-6)


def test_default_lambda1():
    assert MLPLOpt(mup=True).step_scale == 0.01
    assert MLPLOpt(mup=False).step_scale == 0.001
    assert MLPLOpt(mup=False, lambda1=0.05).step_scale == 0.05


# --- composition with optax and flax ----------------------------------------------------------

def test_composes_with_optax_wrappers():
    theta = SMALL.feature_theta("momentum_over_rms_0.9")
    lo = SMALL.transform(theta, 30)
    params = init_mlp(jax.random.key(0), SIZES)
    grads = jax.grad(loss_fn)(params, batch(jax.random.key(1)))
    chains = {
        "clip_wd": optax.chain(optax.clip_by_global_norm(1.0), optax.add_decayed_weights(1e-4), lo),
        "multisteps": optax.MultiSteps(lo, every_k_schedule=2),
    }
    for name, tx in chains.items():
        state = tx.init(params)
        step = jax.jit(lambda g, s, p: tx.update(g, s, p, loss=jnp.float32(1.0)))
        updates, state = step(grads, state, params)
        updates, state = step(grads, state, params)
        assert all(np.all(np.isfinite(u)) for u in jax.tree.leaves(updates)), name
        assert sum(float(jnp.sum(jnp.abs(u))) for u in jax.tree.leaves(updates)) > 0, name


class _NnxModel(nnx.Module):
    def __init__(self, width, rngs):
        self.l1 = nnx.Linear(4, width, rngs=rngs)
        self.l2 = nnx.Linear(width, 1, rngs=rngs)

    def __call__(self, x):
        return self.l2(jnp.tanh(self.l1(x)))


def test_flax_nnx_optimizer():
    model = _NnxModel(16, nnx.Rngs(0))
    tx = optax.chain(optax.clip_by_global_norm(1.0),
                     SMALL.transform(SMALL.feature_theta("momentum_over_rms_0.9"), 40))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean(jnp.square(m(x) - y)))(model)
        optimizer.update(model, grads, loss=loss)
        return loss

    losses = []
    for i in range(20):
        x, y = batch(jax.random.fold_in(jax.random.key(2), i))
        losses.append(float(train_step(model, optimizer, x, y)))
    assert np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < np.mean(losses[:3])


# --- bad input, config ------------------------------------------------------------------------

def test_bad_input_raises():
    theta = SMALL.init(jax.random.key(0))
    params = init_mlp(jax.random.key(0), SIZES)
    with pytest.raises(ValueError, match="theta"):
        SMALL.transform({"w0": theta["w0"]}, 10)
    with pytest.raises(ValueError, match="theta"):
        SMALL.transform(MLPLOpt(hidden_size=4).init(jax.random.key(0)), 10)
    for bad in (0, -5):
        with pytest.raises(ValueError, match="num_steps"):
            SMALL.transform(theta, bad)
    with pytest.raises(ValueError, match="multipliers"):
        SMALL.transform(theta, 10, multipliers={"l0": 1.0}).init(params)
    with pytest.raises(ValueError, match="multipliers"):
        SMALL.transform(theta, 10, multipliers=jax.tree.map(lambda p: jnp.ones(2), params)).init(params)
    with pytest.raises(ValueError, match="param_meta"):
        SMALL.transform(theta, 10, param_meta={"l0": None}).init(params)
    with pytest.raises(ValueError, match="params"):
        tx = SMALL.transform(theta, 10)
        tx.update(params, tx.init(params))
    with pytest.raises(ValueError, match="features"):
        MLPLOpt(features=("param", "nope"))
    with pytest.raises(ValueError, match="hidden_size"):
        MLPLOpt(hidden_size=0)


def test_config_round_trip_and_registry():
    lo = MLPLOpt(hidden_size=4, num_hidden_layers=1, mup=False, features=("grad", "momentum_over_rms_0.9"),
                 time_features=False)
    again = lookup("mlp_lopt").from_config(lo.config())
    assert again == lo
    assert again.feature_names == ("grad", "momentum_over_rms_0.9")
    theta = again.init(jax.random.key(0))
    assert theta["w0"].shape == (2, 4)
    assert theta["w0_time"].shape == (tf.NUM_STEP_FEATURES, 4)
    assert metaopt.MLPLOpt is MLPLOpt
    assert len(MLPLOpt().feature_names) == 28
    assert MLPLOpt().num_time_features == 21


def test_time_features():
    x = tf.time_features(jnp.int32(50), jnp.int32(100))
    assert x.shape == (tf.NUM_FRACTION_FEATURES + tf.NUM_STEP_FEATURES,)
    np.testing.assert_allclose(x[:9], np.tanh(10 * (0.5 - np.array(tf.FRACTION_CENTERS))), rtol=1e-6)
    np.testing.assert_allclose(x[9], np.log10(100) - 3, rtol=1e-6)
    np.testing.assert_allclose(x[10:], np.tanh(50 / np.array(tf.STEP_TIMESCALES) - 1), rtol=1e-6)
    assert tf.time_features(0, 10, fraction=False, absolute=False).shape == (0,)


@pytest.mark.parametrize("lopt", [
    MLPLOpt(hidden_size=8),
    MLPLOpt(hidden_size=8, num_hidden_layers=0, normalize_inputs=False, mup=False),
    MLPLOpt(hidden_size=8, features=("grad", "adafactor_rsqrt_col_0.9", "momentum_over_rms_0.9")),
    MLPLOpt(hidden_size=8, features=("adafactor_row_0.99", "param")),
], ids=["all", "linear-unnormalised", "with-col", "with-row"])
def test_matrix_path_matches_batched_path(lopt, monkeypatch):
    """Large matrices take their own blocked pass on CPU (rank-1 features folded into layer 0,
    normalisers folded into its weights, row blocks with padding); it must give the same updates
    and the same meta-gradients as the one batched pass."""
    from metaopt import mlp_lopt

    shapes = {"w_pad": (37, 12), "w_even": (32, 16), "w_one": (10, 11), "w_small": (6, 5), "b": (24,)}
    keys = jax.random.split(jax.random.key(0), 2 * len(shapes))
    params = {n: jax.random.normal(k, s) for (n, s), k in zip(shapes.items(), keys[:len(shapes)])}
    grads = {n: 1e-2 * jax.random.normal(k, s) for (n, s), k in zip(shapes.items(), keys[len(shapes):])}
    theta = lopt.init(jax.random.key(1))

    def updates_and_meta_grad(lopt):
        """(updates after 3 steps, d meta-loss / d theta), compiled as one program for ``lopt``."""
        def run(theta):
            tx = lopt.transform(theta, 50, multipliers=jax.tree.map(lambda _: 1.0, params))
            state = tx.init(params)
            for _ in range(3):
                updates, state = tx.update(grads, state, params)
            return updates

        def meta_loss(theta):
            return sum(jnp.sum(jnp.sin(100.0 * u)) for u in jax.tree.leaves(run(theta)))

        return jax.jit(lambda theta: (run(theta), jax.grad(meta_loss)(theta)))(theta)

    batched = updates_and_meta_grad(lopt)
    # 64 entries per block: w_pad runs in 8 blocks of 5 rows (3 of them padding), w_even in blocks
    # of 4 rows, w_one in one block; w_small and b stay in the batched pass.
    monkeypatch.setattr(mlp_lopt, "_MATRIX_MIN_SIZE", 100)
    assert mlp_lopt._num_blocks(37, 12, 64) == (5, 8) and mlp_lopt._num_blocks(32, 16, 64) == (4, 8)
    assert mlp_lopt._num_blocks(10, 11, 64) == (10, 1) and mlp_lopt._num_blocks(37, 12, None) == (37, 1)
    blocked = updates_and_meta_grad(dataclasses.replace(lopt, row_block=64))
    # Summation order differs, and sin(100 u) amplifies rounding: compare on each leaf's scale.
    for a, b in zip(jax.tree.leaves(batched), jax.tree.leaves(blocked)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3 * np.abs(a).max())
    assert any(np.abs(u).max() > 0 for u in jax.tree.leaves(batched[0]))


def test_newton_schulz_equalises_singular_values_and_keeps_the_rms():
    from metaopt.orthogonalize import newton_schulz, orthogonalized

    for shape in ((48, 16), (16, 48)):
        g = jax.random.normal(jax.random.key(0), shape) * jnp.logspace(-2, 0, shape[1])  # condition 100
        u, _, vt = np.linalg.svd(np.asarray(g), full_matrices=False)
        singular = np.linalg.svd(np.asarray(newton_schulz(g)), compute_uv=False)
        assert 0.5 < singular.min() and singular.max() < 1.5
        polar = u @ vt
        assert float(np.sum(polar * newton_schulz(g)) / np.linalg.norm(polar) / np.linalg.norm(newton_schulz(g))) > 0.95
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 4, 8)) * 0.3
    out = orthogonalized(kernel)
    assert out.shape == kernel.shape
    np.testing.assert_allclose(float(jnp.sqrt(jnp.mean(out ** 2))), float(jnp.sqrt(jnp.mean(kernel ** 2))), rtol=1e-4)
    assert not np.any(np.asarray(orthogonalized(jnp.zeros((5, 3)))))


def test_orthogonalize_changes_only_hidden_matrices():
    plain = dataclasses.replace(SMALL, mup=True, lambda1=0.01)
    ortho = dataclasses.replace(plain, orthogonalize=True)
    theta = SMALL.init(jax.random.key(0))
    params = init_mlp(jax.random.key(0), [4, 32, 24, 1])
    up, up_ortho = _first_update(plain, theta, params), _first_update(ortho, theta, params)
    for name in ("l0", "l2"):  # input and output layers
        np.testing.assert_array_equal(up_ortho[name]["w"], up[name]["w"])
    for name in ("l0", "l1", "l2"):
        np.testing.assert_array_equal(up_ortho[name]["b"], up[name]["b"])
    hidden, hidden_ortho = np.asarray(up["l1"]["w"]), np.asarray(up_ortho["l1"]["w"])
    np.testing.assert_allclose(np.sqrt(np.mean(hidden_ortho ** 2)), np.sqrt(np.mean(hidden ** 2)), rtol=1e-4)
    condition = [float(np.linalg.cond(x)) for x in (hidden, hidden_ortho)]
    assert condition[1] < 3 < condition[0], condition


# --- learned decoupled weight decay ----------------------------------------------------------

def test_weight_decay_shrinks_matrices_only_by_its_rate():
    plain = dataclasses.replace(SMALL, init_rule="momentum_over_rms_0.9", init_decay=0.01)
    decayed = dataclasses.replace(plain, weight_decay=0.003)
    theta = decayed.init(jax.random.key(0))
    shared = {k: v for k, v in theta.items() if not k.startswith("decay_")}
    assert set(theta) - set(shared) == {"decay_b", "decay_time"}
    params = init_mlp(jax.random.key(0), [4, 16, 8, 1])
    up, up_decayed = _first_update(plain, shared, params), _first_update(decayed, theta, params)
    rate = float(decayed.decay_rate(theta, tf.time_features(0, 50, True, True)))
    assert rate == pytest.approx(0.003, rel=0.05)
    for name in ("l0", "l1", "l2"):
        np.testing.assert_allclose(up_decayed[name]["w"], up[name]["w"] - rate * params[name]["w"],
                                   rtol=1e-5, atol=1e-8)
        np.testing.assert_array_equal(up_decayed[name]["b"], up[name]["b"])


def test_weight_decay_rate_follows_the_cosine_and_is_learnable():
    lo = dataclasses.replace(SMALL, init_rule="momentum_over_rms_0.9", init_decay=0.01, weight_decay=0.002,
                             step_features=False)
    theta = lo.init(jax.random.key(0))
    rates = [float(lo.decay_rate(theta, tf.time_features(t, 1000, True, False))) for t in (0, 500, 999)]
    assert rates[0] == pytest.approx(0.002, rel=0.05)
    assert rates[1] == pytest.approx(0.002 * 0.505, rel=0.1)
    assert rates[2] < 0.1 * rates[0]
    # One outer step of size 1e-2 on decay_b moves the rate by about weight_decay_lambda percent.
    moved = dict(theta, decay_b=theta["decay_b"] + 0.01)
    ratio = float(lo.decay_rate(moved, tf.time_features(0, 1000, True, False))) / rates[0]
    assert ratio == pytest.approx(np.exp(0.01 * lo.weight_decay_lambda), rel=1e-4)


@pytest.mark.parametrize("field, value", [("weight_decay", 0.0), ("weight_decay", 1.5),
                                          ("weight_decay", "0.1"), ("weight_decay_lambda", 0.0)])
def test_bad_weight_decay_is_refused(field, value):
    with pytest.raises((TypeError, ValueError), match=f"^{field}: "):
        dataclasses.replace(SMALL, **{field: value})


def test_warm_start_keeps_the_weights_and_adds_the_decay():
    source = dataclasses.replace(SMALL, init_rule="momentum_over_rms_0.9")
    weights = source.init(jax.random.key(4))
    target = dataclasses.replace(source, weight_decay=1e-3, init_learning_rate=0.5)
    fresh = target.init(jax.random.key(0))
    theta = target.warm_start(fresh, source, weights)
    target.check_theta(theta)
    for name, value in weights.items():
        np.testing.assert_array_equal(theta[name], value)
    np.testing.assert_array_equal(theta["decay_time"], fresh["decay_time"])
    with pytest.raises(ValueError, match="^hidden_size: the weights were trained with 8"):
        dataclasses.replace(target, hidden_size=4).warm_start(fresh, source, weights)
    with pytest.raises(ValueError, match=r"^theta\['decay_b'\]: the weights have it"):
        source.warm_start(source.init(jax.random.key(0)), target, theta)
