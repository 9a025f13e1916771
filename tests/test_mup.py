"""µP roles and multipliers inferred for model parameter pytrees (metaopt.mup)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metaopt import mup
from metaopt.mup import ParamMeta

D_IN, CLASSES = 40, 10


def mlp_params(width, d_in=D_IN, classes=CLASSES):
    return {
        "layer0": {"w": np.zeros((d_in, width)), "b": np.zeros(width)},
        "layer1": {"w": np.zeros((width, width)), "b": np.zeros(width)},
        "readout": {"w": np.zeros((width, classes)), "b": np.zeros(classes)},
    }


EXPECTED_ROLES = {
    "layer0": {"w": "input", "b": "bias"},
    "layer1": {"w": "hidden", "b": "bias"},
    "readout": {"w": "output", "b": "bias"},
}


@pytest.mark.parametrize("width", [32, 256])
def test_roles_and_multipliers_with_base_params(width):
    base = mlp_params(16)
    meta = mup.infer_param_meta(mlp_params(width), base, parametrization="mup")
    assert mup.roles_of(meta) == EXPECTED_ROLES
    lo = mup.lo_multipliers(meta)
    adam = mup.adam_multipliers(meta)
    assert lo["layer1"]["w"] == pytest.approx(1.0 / width)
    assert adam["layer1"]["w"] == pytest.approx(16 / width)
    for name in ("layer0", "readout"):
        for leaf in ("w", "b"):
            assert lo[name][leaf] == 1.0
            assert adam[name][leaf] == 1.0
    assert lo["layer1"]["b"] == 1.0 and adam["layer1"]["b"] == 1.0
    hidden = meta["layer1"]["w"]
    assert (hidden.fan_in, hidden.fan_out, hidden.base_fan_in) == (width, width, 16)
    assert meta["readout"]["w"].base_fan_in == 16
    assert meta["layer0"]["b"].fan_in == 1 and meta["layer0"]["b"].fan_out == width


@pytest.mark.parametrize("width", [32, 256])
def test_roles_by_shape_heuristic(width):
    meta = mup.infer_param_meta(mlp_params(width))
    assert mup.roles_of(meta) == EXPECTED_ROLES
    assert mup.lo_multipliers(meta)["layer1"]["w"] == pytest.approx(1.0 / width)
    # No base width known: the model is its own base, µAdam's multipliers are all 1.
    assert set(jax.tree.leaves(mup.adam_multipliers(meta))) == {1.0}


def test_shape_structs_work_like_arrays():
    params = jax.eval_shape(lambda: jax.tree.map(jnp.asarray, mlp_params(64)))
    base = jax.eval_shape(lambda: jax.tree.map(jnp.asarray, mlp_params(16)))
    meta = mup.infer_param_meta(params, base)
    assert mup.roles_of(meta) == EXPECTED_ROLES
    assert mup.adam_multipliers(meta)["layer1"]["w"] == pytest.approx(0.25)


def test_at_base_width_hidden_matrices_keep_their_role():
    params = mlp_params(16)
    meta = mup.infer_param_meta(params, base_params=params)
    assert mup.roles_of(meta) == EXPECTED_ROLES
    assert mup.lo_multipliers(meta)["layer1"]["w"] == pytest.approx(1.0 / 16)
    assert mup.adam_multipliers(meta)["layer1"]["w"] == 1.0


def test_conv_kernels_by_heuristic_and_by_base():
    def cnn(width):
        return {"conv0": np.zeros((3, 3, 1, width)), "conv1": np.zeros((3, 3, width, width)),
                "head": np.zeros((width, CLASSES))}

    meta = mup.infer_param_meta(cnn(32))
    assert mup.roles_of(meta) == {"conv0": "input", "conv1": "hidden", "head": "output"}
    assert meta["conv1"].fan_in == 9 * 32
    assert mup.lo_multipliers(meta)["conv1"] == pytest.approx(1.0 / (9 * 32))
    based = mup.infer_param_meta(cnn(32), cnn(8))
    assert mup.roles_of(based) == mup.roles_of(meta)
    assert mup.adam_multipliers(based)["conv1"] == pytest.approx(0.25)


def test_role_overrides():
    params = mlp_params(64)
    roles = jax.tree.map(lambda _: None, params)
    roles["layer0"]["w"] = "hidden"
    roles["readout"]["b"] = "output"
    meta = mup.resolve_param_meta(params, roles=roles, base_params=mlp_params(16))
    got = mup.roles_of(meta)
    assert got["layer0"]["w"] == "hidden"
    assert got["readout"]["b"] == "output"
    assert got["layer1"]["w"] == "hidden" and got["readout"]["w"] == "output"
    assert mup.lo_multipliers(meta)["layer0"]["w"] == pytest.approx(1.0 / D_IN)


def test_resolve_keeps_given_param_meta():
    params = mlp_params(64)
    given = mup.infer_param_meta(params, mlp_params(16))
    assert mup.resolve_param_meta(params, param_meta=given) == given


def test_unknown_role_raises():
    params = mlp_params(64)
    roles = jax.tree.map(lambda _: None, params)
    roles["layer1"]["w"] = "middle"
    with pytest.raises(ValueError, match="role"):
        mup.resolve_param_meta(params, roles=roles)
    with pytest.raises(ValueError, match="role"):
        ParamMeta("middle", 4, 4)


def test_mismatching_pytrees_raise():
    params = mlp_params(64)
    fewer = {k: v for k, v in mlp_params(16).items() if k != "readout"}
    with pytest.raises(ValueError, match="base_params"):
        mup.infer_param_meta(params, fewer)
    with pytest.raises(ValueError, match="base_params"):
        mup.infer_param_meta({"w": np.zeros((4, 4))}, {"w": np.zeros(4)})
    meta = mup.infer_param_meta(fewer)
    with pytest.raises(ValueError, match="param_meta"):
        mup.resolve_param_meta(params, param_meta=meta)
    with pytest.raises(ValueError, match="roles"):
        mup.resolve_param_meta(params, roles={"layer0": None})
    with pytest.raises(ValueError, match="multipliers"):
        mup.check_multipliers(params, {"layer0": 1.0})
    bad = jax.tree.map(lambda _: np.ones(2), params)
    with pytest.raises(ValueError, match="multipliers"):
        mup.check_multipliers(params, bad)
