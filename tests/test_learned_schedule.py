"""Tests of the learned learning-rate schedule (metaopt.LearnedSchedule)."""

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metaopt
from metaopt import LearnedSchedule
from metaopt.learned_optimizer import lookup
from metaopt.mup import infer_param_meta
from tiny_mlp import batch, init_mlp, loss_fn

NUM_STEPS = 20


def random_output(sched, key, scale=0.5):
    """A theta whose output layer is random too (a fresh one has a zero output layer)."""
    theta = sched.init(key)
    last = f"w{sched.num_hidden_layers}"
    theta[last] = scale * jax.random.normal(jax.random.fold_in(key, 1), theta[last].shape)
    return theta


SCHED = LearnedSchedule(hidden_size=8, base_learning_rate=1e-2, weight_decay=1e-2)


def test_multiplier_is_one_at_init_and_always_positive():
    curve = jax.jit(SCHED.multiplier_curve, static_argnums=1)
    theta = SCHED.init(jax.random.key(0))
    np.testing.assert_array_equal(curve(theta, 50), np.ones(50, np.float32))
    thetas = jax.vmap(lambda k: random_output(SCHED, k, scale=100.0))(jax.random.split(jax.random.key(1), 4))
    curves = jax.jit(jax.vmap(lambda th: SCHED.multiplier_curve(th, 50)))(thetas)
    assert curves.shape == (4, 50)
    assert np.all(curves > 0)
    assert np.all(curves >= SCHED.min_multiplier * (1 - 1e-5))
    assert np.all(curves <= SCHED.max_multiplier * (1 + 1e-5))
    assert float(curves.max()) > 1.0 and float(curves.min()) < 1.0
    varied = curve(random_output(SCHED, jax.random.key(2)), 50)
    assert float(jnp.std(varied)) > 0


def test_update_equals_base_adamw_times_multiplier():
    theta = random_output(SCHED, jax.random.key(3))
    txs = (SCHED.transform(theta, NUM_STEPS),
           optax.adamw(SCHED.base_learning_rate, weight_decay=SCHED.weight_decay))
    params = init_mlp(jax.random.key(0), [4, 8, 1])

    @jax.jit
    def run(params):
        states = [tx.init(params) for tx in txs]

        def body(states, i):
            grads = jax.grad(loss_fn)(params, batch(jax.random.fold_in(jax.random.key(4), i)))
            outs = [tx.update(grads, s, params, loss=jnp.float32(1.0)) for tx, s in zip(txs, states)]
            return [o[1] for o in outs], [o[0] for o in outs]

        return jax.lax.scan(body, states, jnp.arange(8))[1]

    ours, adamw = run(params)
    mults = SCHED.multiplier_curve(theta, NUM_STEPS)[:8]
    assert float(jnp.std(mults)) > 0
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(adamw)):
        expected = b * mults.reshape((8,) + (1,) * (b.ndim - 1))
        np.testing.assert_allclose(a, expected, rtol=1e-5, atol=1e-9)


def test_grad_through_unroll():
    def meta_loss(theta):
        tx = optax.chain(optax.clip_by_global_norm(1.0), SCHED.transform(theta, NUM_STEPS))
        params = init_mlp(jax.random.key(0), [4, 8, 1])
        state = tx.init(params)

        def body(carry, i):
            params, state = carry
            loss, grads = jax.value_and_grad(loss_fn)(params, batch(jax.random.fold_in(jax.random.key(5), i)))
            updates, state = tx.update(grads, state, params, loss=loss)
            return (optax.apply_updates(params, updates), state), loss

        return jnp.mean(jax.lax.scan(body, (params, state), jnp.arange(NUM_STEPS))[1])

    grads = jax.jit(jax.grad(meta_loss))(SCHED.init(jax.random.key(0)))
    leaves = jax.tree.leaves(grads)
    assert all(np.all(np.isfinite(g)) for g in leaves)
    last = f"w{SCHED.num_hidden_layers}"
    assert float(jnp.sum(jnp.abs(grads[last]))) > 0
    # A larger learning rate helps this short run, so the gradient raises the multiplier.
    assert float(grads[f"b{SCHED.num_hidden_layers}"][0]) < 0


def test_loss_features_use_loss_keyword():
    sched = LearnedSchedule(hidden_size=8, loss_features=True)
    assert sched.num_inputs == SCHED.num_inputs + 2
    theta = random_output(sched, jax.random.key(6))
    tx = sched.transform(theta, NUM_STEPS)
    params = init_mlp(jax.random.key(0), [4, 8, 1])
    grads = jax.grad(loss_fn)(params, batch(jax.random.key(1)))

    @jax.jit
    def two_steps(first, second):
        state = tx.init(params)
        _, state = tx.update(grads, state, params, loss=first)
        updates, state = tx.update(grads, state, params, loss=second)
        return updates, state

    same, state = two_steps(jnp.float32(2.0), jnp.float32(2.0))
    lower, state_lower = two_steps(jnp.float32(2.0), jnp.float32(0.5))
    assert float(state.initial_loss) == 2.0
    assert float(state_lower.loss_ema) < 0
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(lower)))
    assert diff > 0
    with pytest.raises(ValueError, match="loss"):
        tx.update(grads, tx.init(params), params)


def test_custom_base_in_chain():
    theta = random_output(SCHED, jax.random.key(7))
    tx = optax.chain(optax.clip_by_global_norm(1e3), SCHED.transform(theta, NUM_STEPS, base=optax.sgd(0.1)))
    params = init_mlp(jax.random.key(0), [4, 8, 1])
    grads = jax.grad(loss_fn)(params, batch(jax.random.key(1)))
    updates, _ = jax.jit(lambda s: tx.update(grads, s, params, loss=jnp.float32(1.0)))(tx.init(params))
    mult = SCHED.multiplier(theta, 0, NUM_STEPS)
    for u, g in zip(jax.tree.leaves(updates), jax.tree.leaves(grads)):
        np.testing.assert_allclose(u, -0.1 * mult * g, rtol=1e-5, atol=1e-9)


def test_mup_scales_hidden_updates():
    sched = LearnedSchedule(hidden_size=8, base="sgd", b1=0.0, base_learning_rate=1.0, mup=True)
    theta = sched.init(jax.random.key(0))
    params = init_mlp(jax.random.key(0), [4, 32, 32, 1])
    base = init_mlp(jax.random.key(0), [4, 8, 8, 1])
    grads = jax.tree.map(jnp.ones_like, params)

    @jax.jit
    def first_updates(theta, params, base):
        out = []
        for kwargs in ({"param_meta": infer_param_meta(params, base)}, {"base_params": base}):
            tx = sched.transform(theta, NUM_STEPS, **kwargs)
            out.append(tx.update(grads, tx.init(params), params)[0])
        return out

    for updates in first_updates(theta, params, base):
        np.testing.assert_allclose(updates["l1"]["w"], -8 / 32 * np.ones((32, 32)), rtol=1e-6)
        np.testing.assert_allclose(updates["l0"]["w"], -np.ones((4, 32)), rtol=1e-6)
        np.testing.assert_allclose(updates["l2"]["w"], -np.ones((32, 1)), rtol=1e-6)


def test_flax_nnx_optimizer_passes_loss():
    class Model(nnx.Module):
        def __init__(self, rngs):
            self.l1 = nnx.Linear(4, 8, rngs=rngs)
            self.l2 = nnx.Linear(8, 1, rngs=rngs)

        def __call__(self, x):
            return self.l2(jnp.tanh(self.l1(x)))

    model = Model(nnx.Rngs(0))
    sched = LearnedSchedule(hidden_size=8, loss_features=True, base_learning_rate=1e-2)
    optimizer = nnx.Optimizer(model, sched.transform(sched.init(jax.random.key(0)), 30), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean(jnp.square(m(x) - y)))(model)
        optimizer.update(model, grads, loss=loss)
        return loss

    losses = [float(train_step(model, optimizer, *batch(jax.random.fold_in(jax.random.key(2), i))))
              for i in range(30)]
    assert np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < np.mean(losses[:3])
    assert float(optimizer.opt_state.initial_loss[...]) == pytest.approx(losses[0], rel=1e-5)


def test_bad_input_and_config():
    theta = SCHED.init(jax.random.key(0))
    params = init_mlp(jax.random.key(0), [4, 8, 1])
    with pytest.raises(ValueError, match="theta"):
        SCHED.transform({"w0": theta["w0"]}, 10)
    with pytest.raises(ValueError, match="num_steps"):
        SCHED.transform(theta, 0)
    with pytest.raises(ValueError, match="num_steps"):
        SCHED.multiplier_curve(theta, -1)
    with pytest.raises(ValueError, match="multipliers"):
        SCHED.transform(theta, 10, multipliers={"l0": 1.0}).init(params)
    with pytest.raises(ValueError, match="base"):
        LearnedSchedule(base="rmsprop")
    with pytest.raises(ValueError, match="max_multiplier"):
        LearnedSchedule(max_multiplier=0.5)
    sched = LearnedSchedule(hidden_size=4, num_hidden_layers=2, loss_features=True, base="adam")
    again = lookup("learned_schedule").from_config(sched.config())
    assert again == sched
    assert jax.tree.map(jnp.shape, again.init(jax.random.key(0))) == jax.tree.map(
        jnp.shape, sched.init(jax.random.key(1)))
    assert metaopt.LearnedSchedule is LearnedSchedule
