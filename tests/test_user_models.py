"""Learned optimizers on models nobody here wrote metadata for: flax nnx models with default init.

Roles are checked against tables written by hand; every shipped learned optimizer trains each
model under plain optax and under ``nnx.Optimizer`` (the same trajectory), within a stated factor
of Adam tuned over a small grid; the µP options work under ``nnx.Optimizer``; the step compiles
once; bad metadata fails with one message naming the tensor.
"""

import warnings

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metaopt
from metaopt import mup, unroll
from metaopt.tasks.flax_models import FlaxTask

MLP = FlaxTask("mlp", 32, batch_size=32)
CNN = FlaxTask("cnn", 8, batch_size=32)
LM = FlaxTask("transformer", 32, depth=1, num_heads=2, context_length=16, batch_size=8)
NUM_STEPS = 60
# A learned optimizer, untuned, ends within this factor of Adam tuned over ADAM_GRID (final loss).
FACTOR = 3.0
ADAM_GRID = (1e-3, 1e-2, 3e-2)

MLP_ROLES = {
    "hidden/0/kernel": ("input", 64), "hidden/0/bias": ("bias", 1),
    "hidden/1/kernel": ("hidden", 32), "hidden/1/bias": ("bias", 1),
    "head/kernel": ("output", 32), "head/bias": ("bias", 1),
}
CNN_ROLES = {
    "conv1/kernel": ("input", 9), "conv1/bias": ("bias", 1),
    "conv2/kernel": ("hidden", 72), "conv2/bias": ("bias", 1),
    "head/kernel": ("output", 32), "head/bias": ("bias", 1),
}
LM_ROLES = {
    "tokens/embedding": ("input", 256), "positions/embedding": ("input", 16),
    **{f"blocks/0/attention/{n}/kernel": ("hidden", 32) for n in ("query", "key", "value", "out")},
    **{f"blocks/0/attention/{n}/bias": ("bias", 1) for n in ("query", "key", "value", "out")},
    "blocks/0/up/kernel": ("hidden", 32), "blocks/0/up/bias": ("bias", 1),
    "blocks/0/down/kernel": ("hidden", 128), "blocks/0/down/bias": ("bias", 1),
    **{f"blocks/0/norm{i}/{n}": ("bias", 1) for i in (1, 2) for n in ("scale", "bias")},
    "norm/scale": ("bias", 1), "norm/bias": ("bias", 1),
    "head/kernel": ("output", 32), "head/bias": ("bias", 1),
}


def _table(task):
    params = jax.eval_shape(task.init, jax.random.key(0))
    metas = jax.tree.leaves(mup.infer_param_meta(params), is_leaf=lambda x: isinstance(x, mup.ParamMeta))
    return {p: (m.role, m.fan_in) for p, m in zip(mup.tensor_paths(params), metas)}


@pytest.mark.parametrize("task,expected", [(MLP, MLP_ROLES), (CNN, CNN_ROLES), (LM, LM_ROLES)],
                         ids=["mlp", "cnn", "transformer"])
def test_role_tables(task, expected):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing about these standard layers is a guess
        assert _table(task) == expected
    table = mup.param_table(jax.eval_shape(task.init, jax.random.key(0)))
    assert "head/kernel" in table and "output" in table and "µLO mult" in table


def test_a_guess_is_listed_in_one_warning():
    params = {"proj": jnp.zeros((5, 7)), "mixer": jnp.zeros((3, 4, 6))}
    with pytest.warns(UserWarning, match="guessed") as record:
        mup.infer_param_meta(params)
    message = str(record[0].message)
    assert len(record) == 1 and "proj (5, 7)" in message and "mixer (3, 4, 6)" in message


def _final(losses):
    return float(jnp.mean(losses[..., -10:]))


def _tuned_adam(task):
    key = jax.random.key(1)
    train = jax.jit(jax.vmap(lambda lr: unroll.train(task, optax.adam(lr), key, NUM_STEPS)[1]))
    return min(_final(curve) for curve in train(jnp.asarray(ADAM_GRID)))


SHIPPED = [i.name for i in metaopt.pretrained.list() if i.kind == "mlp_lopt"]
MULO = "mulo-mlp"  # a shipped µLO: the µP options change what it does


def _shipped_finals(task):
    """{name: final loss} of every shipped learned optimizer on ``task``: one program per distinct
    optimizer config, its shipped thetas vmapped (the same losses as one program per name)."""
    groups = {}
    for name in SHIPPED:
        lopt, theta = metaopt.pretrained.load(name)
        groups.setdefault(lopt, []).append((name, theta))
    finals = {}
    for lopt, named in groups.items():
        thetas = jax.tree.map(lambda *leaves: jnp.stack(leaves), *[theta for _, theta in named])
        run = jax.vmap(lambda theta: unroll.train(task, lopt.transform(theta, NUM_STEPS), jax.random.key(1),
                                                  NUM_STEPS)[1])
        for (name, _), losses in zip(named, jax.jit(run)(thetas)):
            finals[name] = _final(losses)
    return finals


@pytest.mark.parametrize("task", [MLP, CNN, LM], ids=["mlp", "cnn", "transformer"])
def test_shipped_learned_optimizers_train_user_models(task):
    adam = _tuned_adam(task)
    initial = float(task.loss(task.init(jax.random.key(1)), task.batch(jax.random.key(2))))
    for name, final in _shipped_finals(task).items():
        assert final < 0.8 * initial, f"{name} did not train {task.name}: {final} from {initial}"
        assert final <= FACTOR * adam, f"{name} on {task.name}: {final} > {FACTOR} x tuned Adam {adam}"


def _nnx_run(task, tx, num_steps, count_traces=None):
    # Keys as metaopt.unroll.train(task, tx, key(1), ...) uses them: params from one half, batches
    # from the other.
    init_key, data_key = jax.random.split(jax.random.key(1))
    model = task.model(init_key)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, batch):
        if count_traces is not None:
            count_traces.append(1)
        loss, grads = nnx.value_and_grad(lambda m: task.loss(nnx.state(m), batch))(model)
        optimizer.update(model, grads, loss=loss)
        return loss

    losses = []
    for t in range(num_steps):
        losses.append(float(step(model, optimizer, task.batch(jax.random.fold_in(data_key, t), t))))
    return np.asarray(losses), model


def test_nnx_optimizer_matches_plain_optax_and_compiles_once():
    lopt, theta = metaopt.pretrained.load(SHIPPED[0])
    tx = lopt.transform(theta, 20)
    traces = []
    nnx_losses, _ = _nnx_run(MLP, tx, 20, traces)
    assert len(traces) == 1, "the nnx step compiled more than once"
    plain = unroll.train(MLP, tx, jax.random.key(1), 20)[1]
    np.testing.assert_allclose(nnx_losses, np.asarray(plain), rtol=2e-4, atol=1e-5)


def test_mup_options_under_nnx_optimizer():
    lopt, theta = metaopt.pretrained.load(MULO)
    params = MLP.init(jax.random.key(0))
    base = jax.eval_shape(FlaxTask("mlp", 8).init, jax.random.key(0))
    meta = mup.infer_param_meta(params, base)
    halves = jax.tree.map(lambda _: 0.5, nnx.to_pure_dict(params))
    roles = jax.tree.map(lambda _: None, nnx.to_pure_dict(params))
    roles["hidden"][0]["kernel"] = "hidden"  # input-like (1) made hidden (1/fan_in)
    runs = {kw: _nnx_run(MLP, lopt.transform(theta, 10, **{kw: value}), 3)[0]
            for kw, value in [("base_params", base), ("param_meta", meta), ("multipliers", halves),
                              ("roles", roles)]}
    plain = _nnx_run(MLP, lopt.transform(theta, 10), 3)[0]
    np.testing.assert_allclose(runs["base_params"], plain, rtol=1e-5)  # same roles and fans
    np.testing.assert_allclose(runs["param_meta"], plain, rtol=1e-5)
    assert not np.allclose(runs["multipliers"][1:], plain[1:])
    assert not np.allclose(runs["roles"][1:], plain[1:])


def test_same_theta_trains_mup_and_sp_forms_alike():
    from metaopt import tasks

    family = tasks.get_family("mlp_mnist1d")
    lopt, theta = metaopt.pretrained.load(MULO)
    finals = {}
    for form in ("mup", "sp"):
        task = family.task(family.make_config(base_width=64, depth=3, batch_size=64, parametrization=form))
        tx = lopt.transform(theta, 200, param_meta=task.param_meta)
        finals[form] = _final(jax.jit(lambda: unroll.train(task, tx, jax.random.key(0), 200)[1])())
    assert finals["mup"] < 1.8 and finals["sp"] < 1.8, finals
    assert 0.67 < finals["sp"] / finals["mup"] < 1.5, finals


def test_global_learning_rate_and_inject_hyperparams():
    lopt, theta = metaopt.pretrained.load(SHIPPED[0])
    params = MLP.init(jax.random.key(0))
    grads = jax.grad(MLP.loss)(params, MLP.batch(jax.random.key(1)))
    full, _ = lopt.transform(theta, 10).update(grads, lopt.transform(theta, 10).init(params), params)
    half_tx = lopt.transform(theta, 10, learning_rate=0.5)
    half, _ = half_tx.update(grads, half_tx.init(params), params)
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(half)):
        np.testing.assert_allclose(b, 0.5 * a, rtol=1e-6)
    injected = optax.inject_hyperparams(lopt.transform, static_args=("num_steps",))(
        theta, num_steps=10, learning_rate=0.5)
    state = injected.init(params)
    out, state = injected.update(grads, state, params)
    for a, b in zip(jax.tree.leaves(half), jax.tree.leaves(out)):
        np.testing.assert_allclose(b, a, rtol=1e-6)
    assert float(state.hyperparams["learning_rate"]) == 0.5


def test_training_past_num_steps_warns_once():
    lopt, theta = metaopt.pretrained.load(SHIPPED[0])
    params = {"w": jnp.ones((3, 4)), "b": jnp.zeros(4)}
    tx = lopt.transform(theta, 2)
    state = tx.init(params)
    update = jax.jit(tx.update)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for _ in range(5):
            _, state = update(params, state, params)
            jax.effects_barrier()
    assert sum("past num_steps=2" in str(w.message) for w in record) == 1


@pytest.mark.parametrize("kwargs,match", [
    ({"roles": {"w": "hidden"}}, r"roles: structure does not match params \(no entry for \['b'\]"),
    ({"roles": {"w": "middle", "b": None}}, r"roles\['w'\]: got 'middle'"),
    ({"multipliers": {"w": 1.0, "b": 1.0, "c": 1.0}}, r"multipliers: .*unexpected \['c'\]"),
    ({"multipliers": {"w": -1.0, "b": 1.0}}, r"multipliers\['w'\]: must be a finite number >= 0"),
    ({"multipliers": {"w": np.ones(2), "b": 1.0}}, r"multipliers\['w'\]: every leaf must be a scalar"),
])
def test_mismatching_metadata_names_the_tensor(kwargs, match):
    lopt, theta = metaopt.pretrained.load(MULO)
    params = {"w": jnp.ones((3, 4)), "b": jnp.zeros(4)}
    with pytest.raises(ValueError, match=match):
        lopt.transform(theta, 10, **kwargs).init(params)


@pytest.mark.parametrize("params,match", [
    ({}, "no tensors to optimise"),
    ({"step": jnp.zeros((), jnp.int32)}, r"params\['step'\]: dtype int32 is not a floating-point type"),
    ({"w": jnp.zeros((2, 2), jnp.complex64)}, r"params\['w'\]: complex dtype complex64"),
])
def test_params_that_cannot_be_trained(params, match):
    lopt, theta = metaopt.pretrained.load(SHIPPED[0])
    with pytest.raises(ValueError, match=match):
        lopt.transform(theta, 10).init(params)


@pytest.mark.parametrize("example", ["nnx_mlp", "optax_plain"])
def test_examples_run(example, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "examples" / f"{example}.py"
    spec = importlib.util.spec_from_file_location(f"example_{example}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    final = module.main(["--steps", "40"])
    out = capsys.readouterr().out
    assert "head/kernel" in out and "output" in out  # the role table was printed
    first_losses = [float(line.split()[-1]) for line in out.splitlines() if line.startswith("step    0")]
    assert first_losses and final < first_losses[0]
