"""Tests of metaopt.LeanLOpt: Adam as a special case, per-tensor rules, cost per parameter, plumbing."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metaopt
from metaopt import LeanLOpt
from tests.tiny_mlp import batch, init_mlp, loss_fn

NUM_STEPS = 20


def _train(tx, params, steps=NUM_STEPS):
    @jax.jit
    def step(p, s, i):
        data = batch(jax.random.fold_in(jax.random.key(3), i))
        loss, grads = jax.value_and_grad(loss_fn)(p, data)
        updates, s = tx.update(grads, s, p, loss=loss)
        return optax.apply_updates(p, updates), s, loss

    state = tx.init(params)
    losses = []
    for i in range(steps):
        params, state, loss = step(params, state, i)
        losses.append(float(loss))
    return params, state, losses, step


@pytest.mark.parametrize("hidden", [0, 4])
def test_adam_equivalence(hidden):
    lr = 3e-2
    lo = LeanLOpt(per_param_hidden=hidden, normalize_inputs=False, mup=False, time_features=False,
                  step_features=False, lambda1=lr)
    params = init_mlp(jax.random.key(0), [4, 8, 1])
    ours, _, _, _ = _train(lo.transform(lo.feature_theta("momentum_over_rms_0.9"), NUM_STEPS), params)
    adam, _, _, _ = _train(optax.adam(lr), params)
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), adam, params)
    assert min(jax.tree.leaves(moved)) > 0.01
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(adam)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_per_tensor_network_gives_tensors_their_own_rule():
    lo = LeanLOpt(hyper_init_scale=1.0)
    theta = lo.init(jax.random.key(1))
    a = lo._tensor_weights(theta, jnp.zeros(lo.context_size))
    b = lo._tensor_weights(theta, jnp.ones(lo.context_size))
    assert any(float(jnp.max(jnp.abs(a[k] - b[k]))) > 1e-3 for k in a)


def test_trains_without_recompiling_and_keeps_state_shapes():
    lo = LeanLOpt()
    params = init_mlp(jax.random.key(0), [4, 16, 1])
    tx = lo.transform(lo.feature_theta("momentum_over_rms_0.9"), NUM_STEPS, roles=jax.tree.map(
        lambda p: "hidden" if p.ndim == 2 else "bias", params))
    state0 = tx.init(params)
    _, state, losses, step = _train(tx, params, steps=40)
    assert step._cache_size() == 1
    assert jax.tree.map(lambda x: (x.shape, x.dtype), state) == jax.tree.map(lambda x: (x.shape, x.dtype),
                                                                              state0)
    assert np.isfinite(losses).all() and losses[-1] < losses[0]


def test_far_fewer_flops_per_parameter_than_mlp_lopt():
    params = {"w": jnp.zeros((256, 256)), "b": jnp.zeros((256,))}
    grads = jax.tree.map(lambda p: jnp.full(p.shape, 0.1), params)
    n = sum(p.size for p in jax.tree.leaves(params))

    def flops_per_param(lopt):
        tx = lopt.transform(lopt.init(jax.random.key(0)), 100, multipliers={"w": 1.0, "b": 1.0})
        update = jax.jit(lambda g, s, p: tx.update(g, s, p))
        cost = update.lower(grads, tx.init(params), params).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return cost["flops"] / n

    lean, full = flops_per_param(LeanLOpt()), flops_per_param(metaopt.MLPLOpt())
    assert lean < 300 < 2000 < full


def test_checkpoint_round_trip(tmp_path):
    lo = LeanLOpt(per_param_hidden=3, hyper_hidden=8)
    theta = lo.init(jax.random.key(2))
    metaopt.save(tmp_path / "lean", lo, theta)
    lo2, theta2 = metaopt.load(tmp_path / "lean")
    assert lo2 == lo
    for a, b in zip(jax.tree.leaves(theta), jax.tree.leaves(theta2)):
        np.testing.assert_array_equal(a, b)


def test_rejects_bad_architecture():
    with pytest.raises(ValueError, match="features"):
        LeanLOpt(features=("no_such_feature",))
    with pytest.raises(ValueError, match="hyper_hidden"):
        LeanLOpt(hyper_hidden=0)
