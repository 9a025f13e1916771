"""µP checks of the task models: width-independent activations at init and after training, zero
readouts, per-tensor roles, and µAdam's learning rate transferring from width 128 to width 1024."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metaopt import mup, unroll
from metaopt.tasks import get_family


def rms(x):
    return float(jnp.sqrt(jnp.mean(jnp.square(x))))


def mu_adam(task, learning_rate):
    """Adam with the task's µP learning-rate multipliers (base_fan_in / fan_in on hidden matrices)."""
    multipliers = mup.adam_multipliers(task.param_meta)
    per_tensor = optax.stateless(lambda updates, params=None: jax.tree.map(
        lambda u, m: u * m, updates, multipliers))
    return optax.chain(optax.scale_by_adam(), per_tensor, optax.scale(-learning_rate))


COORD_WIDTHS = (64, 1024)
COORD_LEARNING_RATE = 1e-2
COORD_STEPS = 5


@pytest.fixture(scope="module")
def coord_stats():
    """Activation scales of a depth-3 MLP on MNIST-1D at init and after a few Adam steps.

    µP runs use µAdam, SP runs plain Adam, both at one learning rate; one compiled program per
    (parametrization, width). Returns {(parametrization, width): dict of RMS values}.
    """
    family = get_family("mlp_mnist1d", base_width=64)
    stats = {}
    for parametrization in ("mup", "sp"):
        for width in COORD_WIDTHS:
            task = family.task(family.make_config(width_multiplier=width // 64, depth=3,
                                                  parametrization=parametrization, batch_size=64))
            if parametrization == "mup":
                tx = mu_adam(task, COORD_LEARNING_RATE)
            else:
                tx = optax.adam(COORD_LEARNING_RATE)

            @jax.jit
            def run(key):
                x = task.data.x_eval[:256]
                init_logits, init_pre = task.apply(task.init(jax.random.split(key)[0]), x, True)
                params, _ = unroll.train(task, tx, key, COORD_STEPS)
                logits, pre = task.apply(params, x, True)
                return init_logits, init_pre, logits, pre[-1]

            init_logits, init_pre, logits, hidden = run(jax.random.key(0))
            stats[parametrization, width] = {
                "init_logits_max": float(jnp.max(jnp.abs(init_logits))),
                "init_pre": np.array([rms(z) for z in init_pre]),
                "trained": np.array([rms(logits), rms(hidden)]),
            }
    return stats


def test_mup_preactivations_at_init_do_not_depend_on_width(coord_stats):
    per_width = np.array([coord_stats["mup", w]["init_pre"] for w in COORD_WIDTHS])
    assert per_width.shape == (len(COORD_WIDTHS), 2)  # (widths, hidden layers)
    assert np.all(per_width > 0.1)
    assert np.all(per_width.max(0) / per_width.min(0) < 2.0), per_width
    for width in COORD_WIDTHS:
        assert coord_stats["mup", width]["init_logits_max"] == 0.0  # zero readout at init
        assert coord_stats["sp", width]["init_logits_max"] > 0.0


def test_coordinate_check_mup_stable_sp_grows(coord_stats):
    """After a few Adam steps, µP (with µAdam) keeps activations Θ(1); SP's grow with the width."""
    lo, hi = COORD_WIDTHS
    mup_ratio = coord_stats["mup", hi]["trained"] / coord_stats["mup", lo]["trained"]
    sp_ratio = coord_stats["sp", hi]["trained"] / coord_stats["sp", lo]["trained"]
    # (logits, last hidden pre-activation)
    assert np.all((mup_ratio > 0.5) & (mup_ratio < 2.0)), mup_ratio
    assert np.all(sp_ratio > 3.0), sp_ratio
    assert np.all(coord_stats["mup", hi]["trained"] < 20.0)


def test_mup_readouts_start_at_zero_and_roles():
    tasks = {
        "cnn_digits": dict(base_width=8, depth=3),
        "lm_stdlib": dict(base_width=32, depth=1, context_length=8),
        "teacher_student": dict(base_width=16),
    }
    tasks = {name: get_family(name).task(get_family(name).make_config(**kw))
             for name, kw in tasks.items()}

    @jax.jit
    def outputs(key):
        cnn, lm, ts = tasks["cnn_digits"], tasks["lm_stdlib"], tasks["teacher_student"]
        # The LM's readout is checked on its parameters (a forward pass costs a long compile).
        return (cnn.apply(cnn.init(key), cnn.data.x_eval[:4]),
                lm.init(key)["readout"],
                ts.apply(ts.init(key), jax.random.normal(key, (4, 16))))

    cnn_out, lm_readout, ts_out = outputs(jax.random.key(0))
    for out in (cnn_out, ts_out, *jax.tree.leaves(lm_readout)):
        assert out.size > 0 and np.all(np.asarray(out) == 0.0)

    cnn = get_family("cnn_digits").task(get_family("cnn_digits").make_config(
        base_width=8, width_multiplier=4, depth=4, kernel_size=3))
    meta = cnn.param_meta
    assert (meta["conv_00"]["w"].role, meta["conv_00"]["w"].fan_in) == ("input", 9)
    for name in ("conv_01", "conv_02"):
        m = meta[name]["w"]
        assert (m.role, m.fan_in, m.fan_out, m.base_fan_in) == ("hidden", 9 * 32, 32, 9 * 8)
        assert m.lo_multiplier == pytest.approx(1 / 288) and m.adam_multiplier == pytest.approx(1 / 4)
    assert meta["readout"]["w"].role == "output" and meta["conv_01"]["b"].role == "bias"

    lm_family = get_family("lm_stdlib")
    lm = lm_family.task(lm_family.make_config(base_width=32, width_multiplier=2, depth=1))
    roles = mup.roles_of(lm.param_meta)
    assert roles["embed"] == roles["pos"] == "input" and roles["readout"]["w"] == "output"
    assert set(jax.tree.leaves(roles["block_00"]["attn"])) == {"hidden"}
    assert lm.param_meta["block_00"]["mlp"]["w2"].base_fan_in == 4 * 32
    assert roles["block_00"]["ln1"] == {"scale": "bias", "bias": "bias"}


def test_mu_adam_learning_rate_transfers_from_width_128_to_1024():
    """One µAdam learning rate tuned at width 128 stays (near) the best at width 1024.

    The task keeps µLO's readout (output_mult = 1, scaled by 1/width); its metadata gives the
    readout µAdam's multiplier base_fan_in/output_mult, so at the base width every layer moves as
    under SP Adam.
    """
    family = get_family("mlp_mnist1d", base_width=128)
    log2_lrs = np.arange(-10, -4)
    num_steps = 200
    best, best_loss = {}, {}
    for width in (128, 1024):
        task = family.task(family.make_config(width_multiplier=width // 128, depth=3, batch_size=32))

        @jax.jit
        @jax.vmap
        def final_loss(learning_rate):
            _, losses = unroll.train(task, mu_adam(task, learning_rate), jax.random.key(0), num_steps)
            return jnp.mean(losses[-num_steps // 4:])

        losses = np.asarray(final_loss(jnp.asarray(2.0 ** log2_lrs, jnp.float32)))
        assert np.all(np.isfinite(losses))
        best[width], best_loss[width] = int(log2_lrs[np.argmin(losses)]), float(losses.min())
    # The optimum is inside the grid at the base width, and moves by at most one grid step.
    assert log2_lrs[0] < best[128] < log2_lrs[-1], best
    assert abs(best[1024] - best[128]) <= 1, best
    # µP: wider is no worse at the transferred optimum.
    assert best_loss[1024] <= best_loss[128] + 0.02, best_loss
