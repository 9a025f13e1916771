"""The shipped learned optimizers load offline, train a model, and carry their record."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metaopt
from metaopt import shipped
from metaopt.meta_train import ship
from metaopt.tasks import get_family

SHIPPED = ("mulo-mlp", "lo-mlp-sp", "schedule-adamw", "mulo-v6", "mulo-v7", "mulo-v8")
NUM_STEPS = 150


def _final_loss(task, tx, seed=0):
    @jax.jit
    def run(key):
        _, losses = metaopt.unroll.train(task, tx, key, NUM_STEPS)
        return jnp.mean(losses[-15:])

    return float(run(jax.random.key(seed)))


def test_every_expected_optimizer_is_shipped():
    names = [info.name for info in metaopt.pretrained.list()]
    assert set(SHIPPED) <= set(names), names


@pytest.mark.parametrize("name", SHIPPED)
def test_record_names_config_command_and_cost(name):
    info = metaopt.pretrained.info(name)
    record = metaopt.checkpoint.load_metadata(info.path)["pretrained"]
    assert record["description"] and info.description == record["description"]
    assert "python -m meta_train --config configs/" in record["command"]
    assert "name:" in record["config"] and "estimator:" in record["config"]
    assert "minutes" in record["cost"]
    assert record["code_version"].startswith("metaopt ")
    assert info.kind == metaopt.pretrained.load(name)[0].kind


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_optimizer_beats_plain_sgd_on_a_small_model(name):
    # A width-32 MLP on digits: neither the model nor the data set was seen in meta-training.
    family = get_family("mlp_digits")
    task = family.task(family.make_config(base_width=32, depth=3, batch_size=64,
                                          parametrization="mup"))
    learned = metaopt.pretrained(name, num_steps=NUM_STEPS, param_meta=task.param_meta)
    sgd = optax.sgd(0.1)
    learned_loss = _final_loss(task, learned)
    sgd_loss = _final_loss(task, sgd)
    assert np.isfinite(learned_loss)
    assert learned_loss < sgd_loss, (learned_loss, sgd_loss)


def test_works_on_a_plain_model_without_metadata():
    # µP roles inferred from shapes: a user's own dict of arrays.
    tx = metaopt.pretrained("mulo-mlp", num_steps=50)
    key = jax.random.key(0)
    k1, k2, k3 = jax.random.split(key, 3)
    params = {"w1": jax.random.normal(k1, (8, 32)) / np.sqrt(8), "w2": jax.random.normal(k2, (32, 32)) / np.sqrt(32),
              "w3": jnp.zeros((32, 1))}
    x = jax.random.normal(k3, (64, 8))
    y = jnp.sin(x[:, :1])

    def loss_fn(p):
        h = jax.nn.relu(x @ p["w1"])
        h = jax.nn.relu(h @ p["w2"])
        return jnp.mean((h @ p["w3"] / 32 - y) ** 2)

    state = tx.init(params)
    first = float(loss_fn(params))

    @jax.jit
    def step(params, state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = tx.update(grads, state, params, loss=loss)
        return optax.apply_updates(params, updates), state

    for _ in range(50):
        params, state = step(params, state)
    assert float(loss_fn(params)) < first


def test_unknown_name_is_a_clear_error():
    with pytest.raises(ValueError, match="name: no pretrained"):
        metaopt.pretrained("no-such-optimizer", num_steps=10)


def test_package_run_records_the_run(tmp_path):
    lopt = metaopt.MLPLOpt(hidden_size=4, num_hidden_layers=1)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    metaopt.save(run_dir / "theta", lopt, lopt.init(jax.random.key(0)), metadata={"num_steps": 10})
    (run_dir / "config.yaml").write_text("name: tiny\nestimator:\n  name: pes\n")
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "elapsed_s": 120.0}\n')
    path = ship.package_run(run_dir, "tiny", "a tiny test optimizer",
                                         "python -m meta_train --config configs/tiny.yaml",
                                         out_root=tmp_path / "shipped")
    record = metaopt.checkpoint.load_metadata(path)["pretrained"]
    assert record["cost"] == "2 minutes of meta-training on 2 CPU cores"
    assert record["config"].startswith("name: tiny")
    assert metaopt.checkpoint.load_metadata(path)["num_steps"] == 10
    loaded, _ = metaopt.load(path)
    assert loaded == lopt
