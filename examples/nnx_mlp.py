"""Train a flax nnx MLP on scikit-learn's digits with a shipped learned optimizer, untuned.

The model is written the usual way (default ``nnx.Linear`` init, no µP multipliers); the learned
optimizer reads its µP roles from the parameter paths and shapes (printed first) and applies the
update multipliers a standard model needs. Run from the repository root:

    python examples/nnx_mlp.py --steps 300
"""

import argparse

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import optax
from sklearn.datasets import load_digits

import metaopt


class MLP(nnx.Module):
    def __init__(self, width: int, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(64, width, rngs=rngs)
        self.l2 = nnx.Linear(width, width, rngs=rngs)
        self.head = nnx.Linear(width, 10, rngs=rngs)

    def __call__(self, x):
        return self.head(jax.nn.gelu(self.l2(jax.nn.gelu(self.l1(x)))))


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--optimizer", default="mulo-v4", help="a shipped learned optimizer")
    args = parser.parse_args(argv)

    digits = load_digits()
    x = jnp.asarray(digits.data / 16.0, jnp.float32)
    y = jnp.asarray(digits.target)
    model = MLP(args.width, nnx.Rngs(0))
    print(metaopt.mup.param_table(nnx.state(model, nnx.Param)))

    tx = optax.chain(optax.clip_by_global_norm(1.0), metaopt.pretrained(args.optimizer, num_steps=args.steps))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, xb, yb):
        def loss_fn(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(xb), yb).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads, loss=loss)
        return loss

    key = jax.random.key(1)
    for step in range(args.steps):
        idx = jax.random.randint(jax.random.fold_in(key, step), (128,), 0, x.shape[0])
        loss = float(train_step(model, optimizer, x[idx], y[idx]))
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {loss:.4f}")
    return loss


if __name__ == "__main__":
    main()
