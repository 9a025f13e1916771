"""Hand-designed baselines (metaopt.baselines) and learning-rate schedules (metaopt.schedules)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metaopt import baselines, mup, schedules
from metaopt.unroll import train

NUM_STEPS = 60
GOOD_LR = {"adamw": 1e-2, "muadam": 1e-2, "lion": 3e-3, "sgdm": 5e-2, "muon": 2e-2}


class TinyRegression:
    """A small stand-in inner task: a 2-hidden-layer tanh MLP fitting a fixed random teacher."""

    d_in, width, batch_size = 8, 16, 32

    def init(self, key):
        k0, k1, k2 = jax.random.split(key, 3)
        w = self.width
        return {
            "layer0": {"w": jax.random.normal(k0, (self.d_in, w)) / np.sqrt(self.d_in), "b": jnp.zeros(w)},
            "layer1": {"w": jax.random.normal(k1, (w, w)) / np.sqrt(w), "b": jnp.zeros(w)},
            "readout": {"w": jax.random.normal(k2, (w, 1)) / w, "b": jnp.zeros(1)},
        }

    def batch(self, key, step):
        del step
        x = jax.random.normal(key, (self.batch_size, self.d_in))
        teacher = jnp.linspace(-1.0, 1.0, self.d_in)
        return x, jnp.tanh(x @ teacher / 2)[:, None]

    def loss(self, params, batch):
        x, y = batch
        h = jnp.tanh(x @ params["layer0"]["w"] + params["layer0"]["b"])
        h = jnp.tanh(h @ params["layer1"]["w"] + params["layer1"]["b"])
        pred = h @ params["readout"]["w"] + params["readout"]["b"]
        return jnp.mean((pred - y) ** 2)


TASK = TinyRegression()


@functools.lru_cache(maxsize=None)
def _train_grid_fn(name):
    """One jitted program training with a vmapped grid of (traced) learning rates."""

    def run(lr, key):
        tx = optax.chain(optax.clip_by_global_norm(10.0), baselines.get_baseline(name)(lr, NUM_STEPS))
        return train(TASK, tx, key, NUM_STEPS)[1]

    return jax.jit(jax.vmap(run, in_axes=(0, None)))


@pytest.mark.parametrize("name", sorted(baselines.BASELINES))
def test_each_baseline_trains_inside_chain_with_traced_lr(name):
    lrs = jnp.array([GOOD_LR[name] * 1e-3, GOOD_LR[name]])
    curves = np.asarray(_train_grid_fn(name)(lrs, jax.random.key(0)))
    assert curves.shape == (2, NUM_STEPS)
    assert np.all(np.isfinite(curves))
    tiny, good = curves
    assert good[-10:].mean() < 0.5 * good[:10].mean()
    # The traced learning rate reaches the update: a 1000x smaller one barely moves the loss.
    assert good[-10:].mean() < 0.5 * tiny[-10:].mean()


@pytest.mark.parametrize("name", sorted(baselines.BASELINES))
def test_update_takes_loss_and_extra_keywords(name):
    params = TASK.init(jax.random.key(1))
    tx = optax.chain(optax.identity(), baselines.get_baseline(name)(1e-3, 10, schedule="constant"))
    assert isinstance(tx, optax.GradientTransformationExtraArgs)
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    update = jax.jit(lambda g, s, p, loss: tx.update(g, s, p, loss=loss, step_key=None))
    updates, new_state = update(grads, state, params, jnp.float32(1.5))
    assert jax.tree.structure(updates) == jax.tree.structure(params)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    shapes = lambda s: [(x.shape, x.dtype) for x in jax.tree.leaves(s)]  # noqa: E731
    assert shapes(new_state) == shapes(state)


def _one_update(tx, params):
    def first_update(params):
        grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
        return tx.update(grads, tx.init(params), params)[0]

    return jax.jit(first_update)(params)


def _wide_and_base():
    wide = {"layer0": {"w": jnp.zeros((8, 64)), "b": jnp.zeros(64)},
            "layer1": {"w": jnp.zeros((64, 64)), "b": jnp.zeros(64)},
            "readout": {"w": jnp.zeros((64, 3)), "b": jnp.zeros(3)}}
    base = jax.tree.map(lambda x: jax.ShapeDtypeStruct(tuple(16 if d == 64 else d for d in x.shape), x.dtype),
                        wide)
    return wide, base


def test_muadam_multipliers_are_base_fan_in_over_fan_in():
    wide, base = _wide_and_base()
    kw = dict(schedule="constant", warmup_steps=0)
    adam = _one_update(baselines.adamw(1e-2, 10, weight_decay=0.0, **kw), wide)
    expected = {"layer0": {"w": 1.0, "b": 1.0}, "layer1": {"w": 16 / 64, "b": 1.0},
                "readout": {"w": 1.0, "b": 1.0}}
    meta = mup.infer_param_meta(wide, base)
    for how in (dict(base_params=base), dict(param_meta=meta), dict(multipliers=expected)):
        got = _one_update(baselines.muadam(1e-2, 10, **how, **kw), wide)
        ratio = jax.tree.map(lambda g, a: float(jnp.mean(g / a)), got, adam)
        assert jax.tree.leaves(ratio) == pytest.approx(jax.tree.leaves(expected), rel=1e-5), how
    # Shape heuristic alone: no base width, so µAdam is plain Adam.
    got = _one_update(baselines.muadam(1e-2, 10, **kw), wide)
    for g, a in zip(jax.tree.leaves(got), jax.tree.leaves(adam)):
        np.testing.assert_allclose(g, a, rtol=1e-6)
    # A role override turns the readout into a hidden matrix: base_fan_in/fan_in = 16/64.
    roles = jax.tree.map(lambda _: None, wide)
    roles["readout"]["w"] = "hidden"
    got = _one_update(baselines.muadam(1e-2, 10, roles=roles, base_params=base, **kw), wide)
    assert float(jnp.mean(got["readout"]["w"] / adam["readout"]["w"])) == pytest.approx(0.25, rel=1e-5)


def test_muadam_rejects_mismatching_multipliers():
    wide, _ = _wide_and_base()
    tx = baselines.muadam(1e-2, 10, multipliers={"layer0": 1.0})
    with pytest.raises(ValueError, match="multipliers"):
        _one_update(tx, wide)


def test_factory_errors_name_the_field():
    with pytest.raises(ValueError, match="baseline.*adamw"):
        baselines.get_baseline("adam")
    with pytest.raises(ValueError, match="hyper.*momentum"):
        baselines.adamw(1e-3, 10, momentum=0.9)
    with pytest.raises(ValueError, match="learning_rate"):
        baselines.sgdm(-1.0, 10)
    with pytest.raises(ValueError, match="num_steps"):
        baselines.lion(1e-3, 0)
    with pytest.raises(ValueError, match="schedule"):
        baselines.adamw(1e-3, 10, schedule="step")


def test_default_lr_grids():
    for name in baselines.BASELINES:
        grid = baselines.default_lr_grid(name)
        assert grid.ndim == 1 and len(grid) >= 8
        ratios = grid[1:] / grid[:-1]
        np.testing.assert_allclose(ratios, ratios[0])
        assert grid[-1] / grid[0] >= 100
        assert grid[0] < GOOD_LR[name] < grid[-1]
    assert len(baselines.default_lr_grid("adamw", num=4)) == 4
    with pytest.raises(ValueError, match="baseline"):
        baselines.default_lr_grid("sgd")


PEAK, N, WARMUP = 2.0, 110, 10


@pytest.mark.parametrize("name, middle", [
    ("constant", PEAK),
    ("cosine", PEAK * (0.1 + 0.9 * 0.5)),
    ("linear", PEAK * (0.1 + 0.9 * 0.5)),
    ("wsd", PEAK),
])
def test_schedule_values(name, middle):
    sched = schedules.make_schedule(name, PEAK, N, WARMUP, final_fraction=0.1, decay_fraction=0.2)
    assert float(sched(0)) == pytest.approx(0.0)
    assert float(sched(WARMUP // 2)) == pytest.approx(PEAK / 2)
    assert float(sched(WARMUP)) == pytest.approx(PEAK)
    assert float(sched((WARMUP + N) // 2)) == pytest.approx(middle, rel=1e-5)
    end = PEAK if name == "constant" else 0.1 * PEAK
    assert float(sched(N)) == pytest.approx(end, rel=1e-5)


def test_wsd_decays_over_last_fraction():
    sched = schedules.make_schedule("wsd", 1.0, 100, 5, decay_fraction=0.2)
    assert float(sched(80)) == pytest.approx(1.0)
    assert float(sched(90)) == pytest.approx(0.5)
    assert float(sched(100)) == pytest.approx(0.0, abs=1e-7)


def test_schedule_without_warmup_and_traced_peak():
    sched = schedules.make_schedule("cosine", 3.0, 50)
    assert float(sched(0)) == pytest.approx(3.0)
    values = jax.jit(jax.vmap(lambda p: schedules.make_schedule("linear", p, 100, 10)(55)))(jnp.array([1.0, 4.0]))
    np.testing.assert_allclose(values, [0.5, 2.0], rtol=1e-6)


def test_schedule_errors_name_the_field():
    with pytest.raises(ValueError, match="schedule"):
        schedules.make_schedule("exponential", 1.0, 10)
    with pytest.raises(ValueError, match="num_steps"):
        schedules.make_schedule("cosine", 1.0, -5)
    with pytest.raises(ValueError, match="warmup_steps"):
        schedules.make_schedule("cosine", 1.0, 10, -1)
    with pytest.raises(ValueError, match="warmup_steps"):
        schedules.make_schedule("cosine", 1.0, 10, 20)
    with pytest.raises(ValueError, match="final_fraction"):
        schedules.make_schedule("cosine", 1.0, 10, final_fraction=2.0)
    with pytest.raises(ValueError, match="peak_value"):
        schedules.make_schedule("cosine", -1.0, 10)
