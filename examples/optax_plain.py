"""Train a plain-JAX convolutional network with a shipped learned optimizer in an optax loop.

The params are an ordinary dict with flax's names and layouts (``kernel`` (h, w, in, out),
``bias``); nothing declares µP roles. The step scale is a hyperparameter that
``optax.inject_hyperparams`` exposes (1.0 is the meta-trained optimizer). Run from the repository
root:

    python examples/optax_plain.py --steps 300
"""

import argparse

import jax
import jax.numpy as jnp
import optax
from sklearn.datasets import load_digits

import metaopt


def init(key, width=16):
    k1, k2, k3 = jax.random.split(key, 3)
    lecun = jax.nn.initializers.lecun_normal()
    return {
        "conv1": {"kernel": lecun(k1, (3, 3, 1, width)), "bias": jnp.zeros(width)},
        "conv2": {"kernel": lecun(k2, (3, 3, width, width)), "bias": jnp.zeros(width)},
        "head": {"kernel": lecun(k3, (width * 4, 10)), "bias": jnp.zeros(10)},
    }


def apply(params, x):
    def conv(x, layer):
        y = jax.lax.conv_general_dilated(x, layer["kernel"], (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        y = jax.nn.relu(y + layer["bias"])
        return jax.lax.reduce_window(y, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") / 4.0

    x = conv(conv(x, params["conv1"]), params["conv2"])
    return x.reshape(x.shape[0], -1) @ params["head"]["kernel"] + params["head"]["bias"]


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--optimizer", default="mulo-v4", help="a shipped learned optimizer")
    args = parser.parse_args(argv)

    digits = load_digits()
    x = jnp.asarray(digits.images[..., None] / 16.0, jnp.float32)
    y = jnp.asarray(digits.target)
    params = init(jax.random.key(0))
    print(metaopt.mup.param_table(params))

    lopt, theta = metaopt.pretrained.load(args.optimizer)
    tx = optax.inject_hyperparams(lopt.transform, static_args=("num_steps",))(
        theta, num_steps=args.steps, learning_rate=1.0)
    opt_state = tx.init(params)

    def loss_fn(params, xb, yb):
        return optax.softmax_cross_entropy_with_integer_labels(apply(params, xb), yb).mean()

    @jax.jit
    def train_step(params, opt_state, xb, yb):
        loss, grads = jax.value_and_grad(loss_fn)(params, xb, yb)
        updates, opt_state = tx.update(grads, opt_state, params, loss=loss)
        return optax.apply_updates(params, updates), opt_state, loss

    key = jax.random.key(1)
    for step in range(args.steps):
        idx = jax.random.randint(jax.random.fold_in(key, step), (128,), 0, x.shape[0])
        params, opt_state, loss = train_step(params, opt_state, x[idx], y[idx])
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {float(loss):.4f}")
    return float(loss)


if __name__ == "__main__":
    main()
