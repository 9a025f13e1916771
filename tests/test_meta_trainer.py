"""Meta-training end to end: every estimator lowers the meta-loss on a small task family, the step
is deterministic and compiled once, and a population sharded over 4 devices gives the result of 1."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metaopt
from metaopt.meta import MetaState, make_meta_trainer
from metaopt.tasks import get_family
from metaopt.unroll import train
from conftest import TEST_XLA_FLAGS

EVAL_STEPS = 24
FAMILY = get_family("quadratic")
TASK = FAMILY.task(FAMILY.make_config(base_width=8, batch_size=4, condition_number=10.0))
WIDE_TASK = FAMILY.task(FAMILY.make_config(base_width=8, width_multiplier=2, batch_size=4, condition_number=10.0))
# A learned schedule on a base optimizer whose learning rate is far too small: meta-training has to
# learn to raise its multiplier, which any working estimator does within a few outer steps.
LOPT = metaopt.LearnedSchedule(hidden_size=8, base="sgd", base_learning_rate=1e-3, b1=0.0)

TRUNCATED = dict(num_tasks=8, truncation_length=6, min_horizon=12, max_horizon=EVAL_STEPS,
                 horizon_sampling="log_uniform", num_perturbations=2, sigma=0.1)
SETTINGS = {
    "tbptt": dict(TRUNCATED, remat=True),
    "pes": TRUNCATED,
    "truncated_es": TRUNCATED,
    "es": dict(strategy="open_es", population_size=16, sigma=0.1, num_steps=EVAL_STEPS, fitness="mean",
               learning_rate=0.1),
}


@jax.jit
def evaluate(theta):
    """Mean normalised training loss over fixed instances and a whole run of EVAL_STEPS steps."""

    def one(key):
        _, losses = train(TASK, LOPT.transform(theta, EVAL_STEPS, param_meta=TASK.param_meta), key, EVAL_STEPS)
        return jnp.mean(TASK.normalize_loss(losses))

    return jnp.mean(jax.vmap(one)(jax.random.split(jax.random.key(123), 8)))


def test_every_estimator_keeps_one_contract():
    """The trainer drives gradient estimators and ES alike through ``Estimator.init``/``step``; an
    estimator of one's own needs nothing else."""
    import dataclasses

    from metaopt.meta import Estimator, MetaTrainer

    @dataclasses.dataclass(frozen=True)
    class HalveConfig:
        factor: float = 0.5

    class Halve(Estimator):
        name, num_steps, population_sizes, inner_steps_per_step = "halve", 1, {}, (0, "none")

        def init(self, key, theta, group_keys, tasks):
            return theta, jnp.zeros([]), tuple(jnp.zeros([], jnp.int32) for _ in tasks)

        def step(self, theta, outer_state, group_state, key, task, count):
            metrics = {"meta_loss": jnp.zeros([]), "inner_steps": jnp.zeros([], jnp.int32),
                       "diverged": jnp.zeros([]), "count": count}
            return jax.tree.map(lambda x: x * self.config.factor, theta), outer_state, group_state + 1, metrics

    theta = LOPT.init(jax.random.key(1))
    trainer = MetaTrainer("halve", Halve(LOPT, HalveConfig()), LOPT, [TASK], None)
    state = trainer.init(jax.random.key(0), theta)
    state, metrics = jax.jit(trainer.step, static_argnums=2)(state, jax.random.key(2), 0)
    assert int(metrics["count"]) == 0 and int(state.step) == 1 and int(state.estimator_states[0]) == 1
    for a, b in zip(jax.tree.leaves(state.theta), jax.tree.leaves(theta)):
        np.testing.assert_allclose(a, b / 2)
    for name in SETTINGS:
        assert isinstance(make_meta_trainer(name, LOPT, [TASK], **SETTINGS[name]).estimator, Estimator)


def test_execution_choices_compute_the_same_population_map():
    from metaopt.population import Execution, map_population

    assert Execution().resolved("cpu").member_map == "loop"
    assert Execution().resolved("gpu").member_map == "vmap"
    assert Execution(member_map="vmap").resolved("cpu").member_map == "vmap"
    xs = jax.random.normal(jax.random.key(0), (6, 3, 3))
    fn = lambda x: jnp.tanh(x @ x.T).sum(0)  # noqa: E731
    want = jax.vmap(fn)(xs)
    for execution in (Execution("loop"), Execution("loop", 4), Execution("vmap")):
        # Equal up to float32 rounding (a loop and a vmap may order a reduction differently).
        np.testing.assert_allclose(jax.jit(lambda a: map_population(fn, a, execution=execution))(xs), want,
                                   rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def trained():
    """Per estimator: (trainer, jitted step, first state, state after a few outer steps, metrics)."""
    return {}


def run_estimator(trained, name):
    if name not in trained:
        tasks = [TASK, WIDE_TASK] if name == "tbptt" else [TASK]
        trainer = make_meta_trainer(name, LOPT, tasks, outer_optimizer=optax.adam(0.1), **SETTINGS[name])
        step = jax.jit(trainer.step, static_argnums=2)
        state0 = trainer.init(jax.random.key(0), LOPT.init(jax.random.key(1)))
        state, history = state0, []
        for i in range(6):
            state, metrics = step(state, jax.random.fold_in(jax.random.key(2), i), 0)
            history.append({k: float(v) for k, v in metrics.items()})
        trained[name] = (trainer, step, state0, state, history)
    return trained[name]


@pytest.mark.parametrize("name", ["tbptt", "pes", "truncated_es", "es"])
def test_estimator_lowers_the_meta_loss(trained, name):
    trainer, step, state0, state, history = run_estimator(trained, name)
    before, after = float(evaluate(state0.theta)), float(evaluate(trainer.theta(state)))
    assert after < before - 0.02, (before, after)
    assert all(np.isfinite(h["meta_loss"]) for h in history)
    assert int(state.step) == 6
    if name != "es":
        assert history[0]["grad_norm"] > 0
    inner_steps = {"tbptt": 8 * 6, "pes": 8 * 4 * 6, "truncated_es": 8 * 4 * 6, "es": 16 * EVAL_STEPS}[name]
    assert history[0]["inner_steps"] == inner_steps
    # compiled once for all the outer steps
    assert step._cache_size() == 1


def test_step_is_deterministic(trained):
    trainer, step, _, state, _ = run_estimator(trained, "pes")
    key = jax.random.key(7)
    a, metrics_a = step(state, key, 0)
    b, metrics_b = step(state, key, 0)
    for x, y in zip(jax.tree.leaves((a, metrics_a)), jax.tree.leaves((b, metrics_b))):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    c, _ = step(state, jax.random.key(8), 0)
    assert not np.array_equal(np.asarray(a.theta["w0"]), np.asarray(c.theta["w0"]))


def test_task_groups_keep_their_own_inner_runs(trained):
    trainer, step, _, state, _ = run_estimator(trained, "tbptt")
    assert isinstance(state, MetaState) and len(state.estimator_states) == 2
    narrow, wide = state.estimator_states
    assert narrow.runs.inner.params["x"].shape == (8, 8)
    assert wide.runs.inner.params["x"].shape == (8, 16)
    new_state, metrics = step(state, jax.random.key(3), 1)
    assert np.isfinite(float(metrics["meta_loss"]))
    # group 1's runs advanced by one truncation, group 0's are untouched
    steps_before = np.asarray(wide.runs.inner.step)
    steps_after = np.asarray(new_state.estimator_states[1].runs.inner.step)
    assert np.all((steps_after == steps_before + 6) | (steps_after == 0))
    np.testing.assert_array_equal(np.asarray(new_state.estimator_states[0].runs.inner.step),
                                  np.asarray(narrow.runs.inner.step))


def test_inner_runs_are_staggered_and_restart_at_their_horizon(trained):
    trainer, step, state0, _, _ = run_estimator(trained, "pes")
    runs = state0.estimator_states[0].runs
    horizon, stop = np.asarray(runs.horizon), np.asarray(runs.stop)
    assert np.all(horizon % 6 == 0) and np.all((horizon >= 12) & (horizon <= EVAL_STEPS))
    assert np.all((stop % 6 == 0) & (stop >= 6) & (stop <= horizon))
    assert len(set(stop[::4].tolist())) > 1
    # the members of a task slot share the instance
    first = np.asarray(runs.inner.params["x"]).reshape(8, 4, -1)
    np.testing.assert_array_equal(first, np.broadcast_to(first[:, :1], first.shape))


def test_mlp_learned_optimizer_with_sampled_horizons_and_eval_meta_loss():
    lopt = metaopt.MLPLOpt(hidden_size=4, num_hidden_layers=0)
    trainer = make_meta_trainer("es", lopt, [TASK], population_size=4, sigma=0.01, min_horizon=3, max_horizon=9,
                                meta_loss="eval", fitness="final")
    theta = lopt.init(jax.random.key(0))
    state = trainer.init(jax.random.key(1), theta)
    state, metrics = jax.jit(trainer.step, static_argnums=2)(state, jax.random.key(2), 0)
    assert np.isfinite(float(metrics["meta_loss"]))
    assert 3 <= int(metrics["horizon"]) <= 9 and int(metrics["inner_steps"]) == 4 * int(metrics["horizon"])
    lopt.check_theta(trainer.theta(state))
    assert not np.allclose(np.ravel(trainer.theta(state)["w0"]), np.ravel(theta["w0"]))
    assert trainer.num_steps == 9


_SHARDED_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np, optax
    from jax.sharding import Mesh
    sys.path.insert(0, "tests")
    from test_meta_trainer import LOPT, SETTINGS, TASK
    from metaopt.meta import make_meta_trainer

    mesh = Mesh(np.array(jax.devices()), ("pop",))
    trainer = make_meta_trainer("pes", LOPT, [TASK], outer_optimizer=optax.adam(0.1), mesh=mesh, **SETTINGS["pes"])
    step = jax.jit(trainer.step, static_argnums=2)
    state = trainer.init(jax.random.key(0), LOPT.init(jax.random.key(1)))
    meta_losses = []
    for i in range(2):
        state, metrics = step(state, jax.random.fold_in(jax.random.key(2), i), 0)
        meta_losses.append(float(metrics["meta_loss"]))
    sharding = state.estimator_states[0].runs.inner.params["x"].sharding
    print(json.dumps({
        "devices": jax.device_count(),
        "runs_devices": len(sharding.device_set),
        "theta": [np.ravel(x).tolist() for x in jax.tree.leaves(trainer.theta(state))],
        "meta_losses": meta_losses,
    }))
""")


def test_four_devices_match_one(trained):
    # The same PES meta-training as above, with its population split over 4 devices.
    trainer, step, state0, _, history = run_estimator(trained, "pes")
    state = state0
    for i in range(2):
        state, _ = step(state, jax.random.fold_in(jax.random.key(2), i), 0)
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count=4 {TEST_XLA_FLAGS}", JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    result = subprocess.run([sys.executable, "-c", _SHARDED_SCRIPT], env=env, capture_output=True, text=True,
                            timeout=300, cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["devices"] == 4 and out["runs_devices"] == 4
    one = np.concatenate([np.ravel(x) for x in jax.tree.leaves(trainer.theta(state))])
    four = np.concatenate([np.asarray(x) for x in out["theta"]])
    theta0 = np.concatenate([np.ravel(x) for x in jax.tree.leaves(state0.theta)])
    assert np.max(np.abs(one - theta0)) > 1e-3
    np.testing.assert_allclose(four, one, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["meta_losses"], [h["meta_loss"] for h in history[:2]], rtol=1e-4)
