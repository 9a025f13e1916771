"""Tests of metaopt.tasks: families sample, build, train and evaluate; configs validate; data caches."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metaopt import mup, unroll
from metaopt.task_protocol import InnerTask
from metaopt.tasks import data, get_family, list_families, normalizers

FAMILIES = ("mlp_mnist1d", "mlp_digits", "cnn_digits", "lm_stdlib", "quadratic", "teacher_student")

# Small distributions so that every family compiles and trains in a few seconds.
SMALL = {
    "mlp_mnist1d": dict(widths=(32, 64), depths=(2, 3), activations=("relu", "gelu")),
    "mlp_digits": dict(widths=(32,), depths=(3,), activations=("tanh", "silu"), batch_sizes=(64,)),
    # A µP CNN sits on a plateau for its first tens of steps (zero readout, pooled features); the
    # SP form shows learning within 20 steps. The µP form is checked in test_mup_tasks.py.
    "cnn_digits": dict(widths=(16,), depths=(3,), batch_sizes=(32,), parametrizations=("sp",)),
    "lm_stdlib": dict(widths=(32,), depths=(1,), context_lengths=(16,), batch_sizes=(8,)),
    "quadratic": dict(widths=(16,), condition_numbers=(10.0, 100.0)),
    "teacher_student": dict(widths=(32,), depths=(3,)),
}
LEARNING_RATES = {"quadratic": 0.1, "lm_stdlib": 1e-2, "cnn_digits": 1e-2}
NUM_STEPS = 20


def test_list_families():
    assert set(FAMILIES) <= set(list_families())


@pytest.mark.parametrize("name", FAMILIES)
def test_family_samples_builds_trains_and_evaluates(name):
    family = get_family(name, **SMALL[name])
    config = family.sample(jax.random.key(3))
    assert config == family.sample(jax.random.key(3))  # sampling is a function of the key
    for field, choices in family.choices.items():
        assert getattr(config, field) in choices
    task = family.task(config)
    assert isinstance(task, InnerTask)
    assert hash(task) == hash(family.task(config)) and task == family.task(config)

    tx = optax.adam(LEARNING_RATES.get(name, 3e-2))

    @jax.jit
    def run(key):
        init_params = task.init(jax.random.fold_in(key, 1))
        params, losses = unroll.train(task, tx, key, NUM_STEPS)
        return losses, task.eval_loss(init_params), task.eval_loss(params)

    losses, eval_before, eval_after = run(jax.random.key(0))
    losses = np.asarray(losses)
    assert losses.shape == (NUM_STEPS,) and np.all(np.isfinite(losses))
    assert losses[-5:].mean() < losses[:5].mean()
    assert np.isfinite(eval_after) and eval_after < eval_before
    norm = float(task.normalize_loss(eval_after))
    assert 0.0 <= norm < float(task.normalize_loss(eval_before)) <= normalizers.WORST

    params = jax.eval_shape(task.init, jax.random.key(0))
    shapes = jax.tree.map(jnp.shape, params)
    metas = task.param_meta
    assert jax.tree.structure(metas, is_leaf=lambda m: isinstance(m, mup.ParamMeta)) == \
        jax.tree.structure(params)
    for meta, shape in zip(jax.tree.leaves(metas, is_leaf=lambda m: isinstance(m, mup.ParamMeta)),
                           jax.tree.leaves(shapes, is_leaf=lambda s: isinstance(s, tuple))):
        assert (meta.fan_in, meta.fan_out) == mup.fans(shape)
    assert task.num_params == sum(x.size for x in jax.tree.leaves(params))
    assert task.flops_per_step > 0


def test_seed_only_configs_share_shapes_and_vmap_over_keys():
    family = get_family("mlp_mnist1d", widths=(32,), seeds=(0, 1))
    a, b = family.make_config(seed=0), family.make_config(seed=1)
    task_a, task_b = family.task(a), family.task(b)
    assert family.shape_key(a) == family.shape_key(b) and task_a != task_b
    key = jax.random.key(0)
    assert jax.tree.map(jnp.shape, jax.eval_shape(task_a.init, key)) == \
        jax.tree.map(jnp.shape, jax.eval_shape(task_b.init, key))
    # The seed picks the split: different held-out sets, each deterministic.
    assert not np.array_equal(task_a.data.y_eval, task_b.data.y_eval)
    np.testing.assert_array_equal(task_a.data.y_eval, data.mnist1d_split(0).y_eval)
    # A population is vmapped over init and batch keys of one task.
    @jax.jit
    def population(keys):
        params = jax.vmap(task_a.init)(keys)
        batches = jax.vmap(task_a.batch, (0, None))(keys, 0)
        return jax.vmap(task_a.loss)(params, batches), batches

    losses, batches = population(jax.random.split(key, 4))
    assert losses.shape == (4,)
    # If a loss is not finite, say whether the batch is to blame.
    assert np.all(np.isfinite(batches["x"])), "non-finite inputs in the batch"
    assert np.all((batches["y"] >= 0) & (batches["y"] < 10)), "labels out of range in the batch"
    assert np.all(np.isfinite(losses)), f"losses {losses}"
    assert batches["x"].shape == (4, 128, 40)
    assert not np.array_equal(batches["y"][0], batches["y"][1])


def test_distribution_grouping_and_width_replacement():
    family = get_family("mlp_mnist1d", widths=(64, 128), depths=(3,), activations=("relu",))
    configs = family.sample_many(jax.random.key(0), 12)
    assert {c.width for c in configs} == {64, 128}
    assert all(c.depth == 3 and c.activation == "relu" for c in configs)
    shapes = {family.shape_key(c) for c in configs}
    assert len(shapes) == 2
    assert {s.width for s in shapes} == {c.width for c in family.shape_configs()} == {64, 128}

    config = family.make_config(width_multiplier=1)
    wide = dataclasses.replace(config, width_multiplier=16)
    assert wide.width == 16 * config.width == 2048
    meta = family.task(wide).param_meta
    hidden = meta["layer_01"]["w"]
    assert (hidden.role, hidden.fan_in, hidden.base_fan_in) == ("hidden", 2048, 128)
    assert hidden.adam_multiplier == pytest.approx(1 / 16)
    assert meta["layer_00"]["w"].role == "input" and meta["layer_02"]["w"].role == "output"
    # The family kwargs fix fields of every config; a config round-trips through a dict.
    family64 = get_family("mlp_digits", base_width=64, widths=(256,))
    config = family64.sample(jax.random.key(1))
    assert (config.base_width, config.width_multiplier, config.dataset) == (64, 4, "digits")
    assert family64.make_config(**dataclasses.asdict(config)) == config


BAD_CONFIGS = [
    ("mlp_mnist1d", dict(width_multiplier=-1), "width_multiplier"),
    ("mlp_mnist1d", dict(width_multiplier=1 / 3), "width_multiplier"),
    ("mlp_mnist1d", dict(base_width=0), "base_width"),
    ("mlp_mnist1d", dict(depth=0), "depth"),
    ("mlp_mnist1d", dict(depth=2.5), "depth"),
    ("mlp_mnist1d", dict(activation="swish"), "activation"),
    ("mlp_mnist1d", dict(dataset="cifar10"), "dataset"),
    ("mlp_mnist1d", dict(parametrization="ntk"), "parametrization"),
    ("mlp_mnist1d", dict(batch_size=0), "batch_size"),
    ("mlp_mnist1d", dict(seed=-1), "seed"),
    ("mlp_mnist1d", dict(num_layers=3), "num_layers"),
    ("cnn_digits", dict(kernel_size=4), "kernel_size"),
    ("cnn_digits", dict(dataset="mnist1d"), "dataset"),
    ("lm_stdlib", dict(num_heads=3), "base_width"),
    ("lm_stdlib", dict(context_length=1), "context_length"),
    ("lm_stdlib", dict(positions="rotary"), "positions"),
    ("quadratic", dict(condition_number=0.5), "condition_number"),
    ("quadratic", dict(noise_scale=float("nan")), "noise_scale"),
    ("teacher_student", dict(teacher_activation="sigmoid"), "teacher_activation"),
]


@pytest.mark.parametrize("name,fields,field", BAD_CONFIGS)
def test_bad_config_names_the_field(name, fields, field):
    with pytest.raises(ValueError, match=field):
        get_family(name).make_config(**fields)


def test_bad_family_arguments():
    with pytest.raises(ValueError, match="name"):
        get_family("mlp_imagenet")
    with pytest.raises(ValueError, match="widths"):
        get_family("mlp_mnist1d", widths=(-64,))
    with pytest.raises(ValueError, match="depths"):
        get_family("mlp_mnist1d", depths=())
    with pytest.raises(ValueError, match="activation"):
        get_family("mlp_mnist1d", activations=("relu", "swish"))
    with pytest.raises(ValueError, match="learning_rate"):
        get_family("mlp_mnist1d", learning_rate=0.1)
    with pytest.raises(ValueError, match="config"):
        get_family("mlp_mnist1d").task("mlp")
    # A dataclass replace bypasses make_config but still validates.
    config = get_family("mlp_digits").make_config()
    with pytest.raises(ValueError, match="depth"):
        dataclasses.replace(config, depth=0)


def test_normalizers_are_bounded_and_finite():
    losses = jnp.array([-1.0, 0.0, 1.0, np.log(10.0), 100.0, np.nan, np.inf, -np.inf])
    for normalized in (normalizers.classification(losses, 10), normalizers.regression(losses, 2.0),
                       normalizers.log_ratio(losses, 50.0)):
        normalized = np.asarray(normalized)
        assert np.all(np.isfinite(normalized))
        assert np.all((normalized >= 0) & (normalized <= normalizers.WORST))
        np.testing.assert_array_equal(normalized[-3:], normalizers.WORST)
    np.testing.assert_allclose(normalizers.classification(jnp.log(10.0), 10), 1.0, rtol=1e-6)
    grads = jax.vmap(jax.grad(lambda l: normalizers.classification(l, 10)))(losses)
    assert np.all(np.isfinite(grads)) and np.all(np.asarray(grads)[-3:] == 0)


def test_corrupt_mnist1d_cache_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("METAOPT_CACHE_DIR", str(tmp_path))
    x, y = data.load_mnist1d(num_samples=100)
    path = data.mnist1d_path(100)
    assert path.is_file() and x.shape == (100, 40) and y.shape == (100,)

    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2: len(raw) // 2 + 64] = b"\x00" * 64
    path.write_bytes(bytes(raw))
    x2, y2 = data.load_mnist1d(num_samples=100)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    assert data._read_cache(path, {"x": (100, 40), "y": (100,)}) is not None

    # A readable file whose arrays do not match its checksum is not used either.
    np.savez(path, sha256=np.array(data._checksum({"x": x, "y": y})), x=x + 1.0, y=y)
    x3, _ = data.load_mnist1d(num_samples=100)
    np.testing.assert_array_equal(x, x3)

    path.unlink()
    x4, _ = data.load_mnist1d(num_samples=100)
    np.testing.assert_array_equal(x, x4)


def test_lm_is_causal_and_splits_by_file():
    family = get_family("lm_stdlib")
    # Learned positions are trained in the family test; here the sinusoidal table in SP form.
    task = family.task(family.make_config(base_width=32, depth=1, context_length=16,
                                          positions="sinusoidal", parametrization="sp"))

    @jax.jit
    def logits_pair(key):
        params = task.init(key)
        tokens = jax.random.randint(key, (2, 16), 0, 256)
        changed = tokens.at[:, 10].set((tokens[:, 10] + 1) % 256)
        return task.apply(params, tokens), task.apply(params, changed)

    a, b = logits_pair(jax.random.key(0))
    np.testing.assert_allclose(a[:, :10], b[:, :10], atol=1e-5)
    assert not np.allclose(a[:, 10:], b[:, 10:])
    corpus = data.stdlib_corpus(0)
    assert corpus.train.dtype == jnp.uint8 and corpus.train.shape[0] > 10 * corpus.valid.shape[0] / 2
    assert corpus.train.shape[0] + corpus.valid.shape[0] <= data.CORPUS_MAX_BYTES + 1000
    files = data.stdlib_files()
    assert len(files) >= 10 and files == sorted(files)


def test_quadratic_is_an_unbiased_noisy_quadratic():
    family = get_family("quadratic")
    task = family.task(family.make_config(base_width=8, condition_number=1000.0, noise_scale=0.5,
                                          batch_size=4))
    eig = np.sort(np.asarray(task.eigenvalues))
    np.testing.assert_allclose([eig[0], eig[-1]], [1.0, 1000.0], rtol=1e-4)
    params = {"x": jnp.arange(8, dtype=jnp.float32) / 8}
    keys = jax.random.split(jax.random.key(0), 4000)
    losses, exact = jax.jit(lambda ks: (jax.vmap(lambda k: task.loss(params, task.batch(k, 0)))(ks),
                                        task.eval_loss(params)))(keys)
    exact = float(exact)
    assert abs(float(losses.mean()) - exact) < 0.05 * exact + 5 * float(losses.std()) / np.sqrt(4000)
    assert float(jax.jit(task.eval_loss)({"x": jnp.zeros(8)})) == 0.0
