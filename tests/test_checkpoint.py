"""Checkpoints of pytrees and learned optimizers (metaopt.checkpoint, metaopt.save / metaopt.load)."""

import dataclasses
import json
import os
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metaopt
from metaopt import checkpoint
from metaopt.checkpoint import CheckpointError, load_tree, save_tree
from metaopt.learned_optimizer import LearnedOptimizer, register
from legacy_checkpoint import write_format_2


@register
@dataclasses.dataclass(frozen=True)
class ScaledSignLOpt(LearnedOptimizer):
    """A minimal learned optimizer for the tests: a learned global step size on sign(grad)."""

    kind: ClassVar[str] = "test_scaled_sign"
    hidden_size: int = 4
    decays: tuple = (0.9, 0.99)

    def init(self, key):
        return {"log_lr": jnp.full([], -3.0),
                "mix": {"w": jax.random.normal(key, (len(self.decays), self.hidden_size)),
                        "b": jnp.zeros(self.hidden_size)}}

    def transform(self, theta, num_steps, **kwargs):
        del num_steps, kwargs
        return optax.with_extra_args_support(optax.chain(optax.scale_by_sign(),
                                                         optax.scale(-jnp.exp(theta["log_lr"]))))


class Carry(NamedTuple):
    params: dict
    opt_state: tuple
    step: jax.Array
    key: jax.Array


def _carry():
    params = {"dense": {"kernel": jnp.arange(6.0).reshape(2, 3), "bias": jnp.ones(3, jnp.bfloat16)}}
    return Carry(params, optax.adam(1e-3).init(params), jnp.int32(7), jax.random.split(jax.random.key(3), 2))


def _assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_tree_round_trip_with_template(tmp_path):
    tree = _carry()
    path = save_tree(tmp_path / "state", tree, {"outer_step": np.int64(3), "widths": (1, 2)})
    restored, metadata = load_tree(path, template=jax.eval_shape(lambda: tree))
    _assert_trees_equal(restored, tree)
    assert isinstance(restored, Carry) and isinstance(restored.opt_state[0], optax.ScaleByAdamState)
    assert metadata == {"outer_step": 3, "widths": [1, 2]}
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]


def test_tree_round_trip_without_template(tmp_path):
    tree = {"a": [jnp.zeros(2), None, (1, 2.5, True)], "name": "mlp", "nt": _carry(), "empty": {}}
    restored, _ = load_tree(save_tree(tmp_path / "t", tree, {}))
    assert restored["name"] == "mlp"
    assert restored["a"][1] is None and restored["a"][2] == (1, 2.5, True)
    assert type(restored["a"][2][0]) is int and type(restored["a"][2][2]) is bool
    assert restored["nt"]._fields == Carry._fields
    np.testing.assert_array_equal(restored["nt"].params["dense"]["kernel"], tree["nt"].params["dense"]["kernel"])
    assert restored["nt"].opt_state[0].count == 0
    assert restored["empty"] == {}
    assert jax.dtypes.issubdtype(restored["nt"].key.dtype, jax.dtypes.prng_key)


def test_template_mismatch_names_the_key_path(tmp_path):
    tree = {"layer": {"w": jnp.zeros((4, 8)), "b": jnp.zeros(8)}}
    path = save_tree(tmp_path / "t", tree, {})
    wider = {"layer": {"w": jnp.zeros((4, 16)), "b": jnp.zeros(8)}}
    with pytest.raises(CheckpointError, match=r"\['layer'\]\['w'\].*\(4, 8\)|\['layer'\]\['w'\].*\[4, 8\]"):
        load_tree(path, template=wider)
    other = {"layer": {"w": jnp.zeros((4, 8)), "gain": jnp.zeros(8)}}
    with pytest.raises(CheckpointError, match=r"\['layer'\]\['gain'\]"):
        load_tree(path, template=other)
    halves = {"layer": {"w": jnp.zeros((4, 8), jnp.bfloat16), "b": jnp.zeros(8)}}
    with pytest.raises(CheckpointError, match="bfloat16"):
        load_tree(path, template=halves)
    as_tuple = {"layer": {"w": jnp.zeros((4, 8)), "b": jnp.zeros(8)}, "extra": ()}
    with pytest.raises(CheckpointError, match="container"):
        load_tree(path, template=as_tuple)


@pytest.fixture
def saved(tmp_path):
    lopt = ScaledSignLOpt(hidden_size=4)
    theta = lopt.init(jax.random.key(0))
    path = metaopt.save(tmp_path / "lopt", lopt, theta, metadata={"num_steps": 100})
    return lopt, theta, path


def test_learned_optimizer_round_trip(saved):
    lopt, theta, path = saved
    loaded, loaded_theta = metaopt.load(path)
    assert loaded == lopt and loaded is not lopt
    _assert_trees_equal(loaded_theta, theta)
    again, _ = metaopt.load(path, lopt=ScaledSignLOpt(hidden_size=4))
    assert again == lopt
    assert checkpoint.load_metadata(path) == {"num_steps": 100}
    _, metadata = load_tree(path)
    assert metadata["kind"] == "test_scaled_sign"
    assert metadata["config"] == {"hidden_size": 4, "decays": [0.9, 0.99]}
    assert metadata["metaopt_version"] == metaopt.__version__


def test_load_from_run_folder(tmp_path):
    lopt = ScaledSignLOpt()
    theta = lopt.init(jax.random.key(1))
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    metaopt.save(run_dir / "theta", lopt, theta, metadata={"outer_step": 5})
    loaded, loaded_theta = metaopt.load(run_dir)
    assert loaded == lopt
    _assert_trees_equal(loaded_theta, theta)
    assert checkpoint.load_metadata(run_dir) == {"outer_step": 5}
    assert checkpoint.load_metadata(str(run_dir / "theta")) == {"outer_step": 5}


def test_different_architecture_is_refused(saved):
    _, _, path = saved
    with pytest.raises(CheckpointError, match=r"hidden_size \(checkpoint 4, given 8\)"):
        metaopt.load(path, lopt=ScaledSignLOpt(hidden_size=8))
    with pytest.raises(CheckpointError, match="decays"):
        metaopt.load(path, lopt=ScaledSignLOpt(decays=(0.5,)))
    wide = ScaledSignLOpt(hidden_size=8)
    with pytest.raises(CheckpointError, match=r"\['mix'\]\['b'\]"):
        load_tree(path, template=jax.eval_shape(wide.init, jax.random.key(0)))


def test_save_checks_theta(tmp_path):
    lopt = ScaledSignLOpt()
    with pytest.raises(ValueError, match="theta"):
        metaopt.save(tmp_path / "x", lopt, {"log_lr": jnp.zeros([])})
    assert not (tmp_path / "x").exists()


def _array_files(path):
    files = json.loads((path / checkpoint.CHECKSUMS).read_text())["files"]
    return sorted((path / rel for rel in files), key=lambda p: -p.stat().st_size)


def test_truncated_file_fails(saved):
    _, _, path = saved
    biggest = _array_files(path)[0]
    data = biggest.read_bytes()
    biggest.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        metaopt.load(path)


def test_corrupt_file_fails(saved):
    _, _, path = saved
    biggest = _array_files(path)[0]
    data = bytearray(biggest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    biggest.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        load_tree(path)


def test_missing_files_fail(saved, tmp_path):
    _, _, path = saved
    _array_files(path)[-1].unlink()
    with pytest.raises(CheckpointError, match="missing"):
        metaopt.load(path)
    (path / checkpoint.CHECKSUMS).unlink()
    with pytest.raises(CheckpointError, match="no checksums.json"):
        metaopt.load(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        metaopt.load(tmp_path / "nowhere")
    with pytest.raises(CheckpointError):
        checkpoint.load_metadata(tmp_path / "nowhere")


def test_truncated_checksums_file_fails(saved):
    _, _, path = saved
    checksums = path / checkpoint.CHECKSUMS
    checksums.write_text(checksums.read_text()[:40])
    with pytest.raises(CheckpointError, match="checksums.json: corrupt or truncated"):
        metaopt.load(path)
    assert issubclass(CheckpointError, ValueError)


def test_overwrite_protection(saved):
    lopt, theta, path = saved
    newer = {**theta, "log_lr": jnp.full([], -1.0)}
    with pytest.raises(CheckpointError, match="already exists"):
        metaopt.save(path, lopt, newer)
    _assert_trees_equal(metaopt.load(path)[1], theta)
    metaopt.save(path, lopt, newer, metadata={"outer_step": 2}, overwrite=True)
    _assert_trees_equal(metaopt.load(path)[1], newer)
    assert checkpoint.load_metadata(path) == {"outer_step": 2}
    # A failed save leaves the previous checkpoint intact and no temporary folders behind.
    with pytest.raises(CheckpointError, match="cannot be saved"):
        save_tree(path, {"bad": object()}, {}, overwrite=True)
    with pytest.raises(ValueError, match="metadata"):
        save_tree(path, {"x": jnp.zeros(2)}, {"f": object()}, overwrite=True)
    _assert_trees_equal(metaopt.load(path)[1], newer)
    assert sorted(os.listdir(path.parent)) == ["lopt"]


def test_mlp_lopt_round_trip(tmp_path):
    mlp_lopt = getattr(metaopt, "MLPLOpt", None)
    if mlp_lopt is None:
        pytest.skip("metaopt.MLPLOpt is not available")
    lopt = mlp_lopt(hidden_size=8)
    theta = jax.jit(lopt.init)(jax.random.key(2))
    path = metaopt.save(tmp_path / "mulo", lopt, theta)
    loaded, loaded_theta = metaopt.load(path)
    assert loaded == lopt
    _assert_trees_equal(loaded_theta, theta)
    with pytest.raises(CheckpointError, match="hidden_size"):
        metaopt.load(path, lopt=mlp_lopt(hidden_size=16))


def test_format_2_checkpoints_still_load(tmp_path):
    # Folders written before checkpoints were orbax composites: manifest.json and arrays/.
    tree = {"a": [jnp.zeros(2), None, (1, 2.5, True)], "name": "mlp", "nt": _carry(), "empty": {}}
    write_format_2(tmp_path / "tree", tree, {"step": 3})
    restored, metadata = load_tree(tmp_path / "tree")
    assert metadata == {"step": 3} and restored["name"] == "mlp" and restored["a"][2] == (1, 2.5, True)
    assert restored["nt"]._fields == Carry._fields and restored["empty"] == {}
    again, _ = load_tree(tmp_path / "tree", template=tree)
    _assert_trees_equal(again, tree)
    assert isinstance(again["nt"], Carry) and isinstance(again["nt"].opt_state[0], optax.ScaleByAdamState)
    with pytest.raises(CheckpointError, match=r"\['nt'\]\.step is int32\[\]"):
        load_tree(tmp_path / "tree", template={**tree, "nt": tree["nt"]._replace(step=0.0)})
    lopt = ScaledSignLOpt()
    theta = lopt.init(jax.random.key(4))
    write_format_2(tmp_path / "run" / "theta", theta, {"content": "learned_optimizer", "kind": lopt.kind,
                                                       "config": {"hidden_size": 4, "decays": [0.9, 0.99]},
                                                       "metaopt_version": "0.1.0", "metadata": {"outer_step": 9}})
    loaded, loaded_theta = metaopt.load(tmp_path / "run")
    assert loaded == lopt and checkpoint.load_metadata(tmp_path / "run") == {"outer_step": 9}
    _assert_trees_equal(loaded_theta, theta)
    arrays = sorted((p for p in (tmp_path / "run" / "theta" / "arrays").rglob("*") if p.is_file()),
                    key=lambda p: -p.stat().st_size)
    arrays[0].write_bytes(arrays[0].read_bytes()[:-1])
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        metaopt.load(tmp_path / "run")


def test_relative_paths_save_and_load(tmp_path, monkeypatch):
    # Run folders are usually given relative to the working directory (runs/NAME).
    monkeypatch.chdir(tmp_path)
    tree = {"a": np.arange(3, dtype=np.float32)}
    save_tree("runs/x/ckpt", tree, {"step": 1})
    loaded, metadata = load_tree("runs/x/ckpt")
    np.testing.assert_array_equal(loaded["a"], tree["a"])
    assert metadata == {"step": 1}
