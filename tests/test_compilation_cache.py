"""Tests of metaopt.compilation_cache: where the cache goes, its switches, and the compile meter."""

import os

import jax
import jax.numpy as jnp

from metaopt import compilation_cache as cc


def test_cache_folder_and_switches(monkeypatch, tmp_path):
    monkeypatch.delenv(cc.ENV_SWITCH, raising=False)
    monkeypatch.setenv("METAOPT_CACHE_DIR", str(tmp_path))
    assert cc.requested_dir() == os.path.join(str(tmp_path), "jax")
    assert cc.requested_dir(enabled=False) is None
    monkeypatch.delenv("METAOPT_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cc.requested_dir() == os.path.join(str(tmp_path), ".cache", "metaopt", "jax")
    for off in ("0", "off", "False"):
        monkeypatch.setenv(cc.ENV_SWITCH, off)
        assert cc.requested_dir() is None
    monkeypatch.setenv(cc.ENV_SWITCH, str(tmp_path / "elsewhere"))
    assert cc.requested_dir() == str(tmp_path / "elsewhere")


def test_both_programs_have_the_switch():
    from metaopt.evaluate import cli as eval_cli
    from metaopt.meta_train import cli as train_cli

    assert train_cli.make_parser().parse_args(["--config", "x", "--no-compilation-cache"]).no_compilation_cache
    assert eval_cli.build_parser().parse_args(["--no-compilation-cache"]).no_compilation_cache


def test_compile_meter_counts_compilation_only():
    meter = cc.CompileMeter()
    f = jax.jit(lambda x: jnp.sin(x) * 3.0 + x.sum())
    f(jnp.ones((7, 5))).block_until_ready()
    compiled = meter.seconds
    assert compiled > 0 and meter.backend_seconds > 0
    f(jnp.ones((7, 5))).block_until_ready()  # a cached call compiles nothing
    assert meter.seconds == compiled
    meter.reset()
    assert meter.seconds == 0
