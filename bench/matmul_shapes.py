"""How fast this machine's XLA matmuls run at the learned optimizer's shapes and at the model's.

Benchmark 1's target compares the learned optimizer's step time with a FLOP prediction, which
assumes that the optimizer's FLOPs run as fast as the model's. This script measures whether they
can: the per-parameter MLP of ``metaopt.MLPLOpt`` is a chain of thin matmuls, (32 x F) @ (F x n)
with F = 16 or 28 input features and (32 x 32) @ (32 x n), while the model's forward and backward
passes are (batch x width) @ (width x width) matmuls. Each row times one jitted matmul (or the
three-layer MLP with its ReLUs) alone, alternately with the others in one process, and prints its
GFLOP/s.

Columns:
  shape: the matmul (m x k) @ (k x n), or the whole per-parameter MLP over n parameters.
  ms: median milliseconds per call.
  GFLOP/s: 2 m k n per call (the MLP: the sum over its layers) over the time.

Usage:
  python bench/matmul_shapes.py            # the table (a minute)
  python bench/matmul_shapes.py --quick    # small shapes, to check the script runs
"""

from __future__ import annotations

import argparse
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_HERE, os.path.dirname(_HERE)]  # the helpers, and the source checkout

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import _common  # noqa: E402


def matmul_row(name: str, m: int, k: int, n: int):
    key_a, key_b = jax.random.split(jax.random.key(0))
    a = jax.random.normal(key_a, (m, k), jnp.float32)
    b = jax.random.normal(key_b, (k, n), jnp.float32)
    fn = jax.jit(lambda a, b: a @ b)
    return name, (lambda: fn(a, b)), 2.0 * m * k * n


def lo_mlp_row(name: str, num_features: int, hidden: int, n: int):
    """The per-parameter MLP (features-major, as MLPLOpt runs it) over n parameters."""
    keys = jax.random.split(jax.random.key(1), 4)
    x = jax.random.normal(keys[0], (num_features, n), jnp.float32)
    w0 = jax.random.normal(keys[1], (hidden, num_features), jnp.float32)
    w1 = jax.random.normal(keys[2], (hidden, hidden), jnp.float32)
    w2 = jax.random.normal(keys[3], (2, hidden), jnp.float32)
    fn = jax.jit(lambda x: w2 @ jax.nn.relu(w1 @ jax.nn.relu(w0 @ x)))
    flops = 2.0 * n * (hidden * num_features + hidden * hidden + 2 * hidden)
    return name, (lambda: fn(x)), flops


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, a few seconds")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per row")
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 15)
    n = 4096 if args.quick else 16384
    width = 128 if args.quick else 1024
    _common.header("matmul speed at the learned optimizer's shapes vs the model's (XLA, this machine)")
    rows = [
        matmul_row(f"model: ({128} x {width}) @ ({width} x {width})", 128, width, width),
        matmul_row(f"model: ({width} x {width}) @ ({width} x {width})", width, width, width),
        matmul_row(f"lo layer 0: (32 x 28) @ (28 x {n})", 32, 28, n),
        matmul_row(f"lo layer 0, rank-1 folded: (32 x 16) @ (16 x {n})", 32, 16, n),
        matmul_row(f"lo layer 1: (32 x 32) @ (32 x {n})", 32, 32, n),
        lo_mlp_row(f"lo MLP 28-32-32-2 over {n} params", 28, 32, n),
        lo_mlp_row(f"lo MLP 28-32-32-2 over {4 * n} params", 28, 32, 4 * n),
    ]
    times = _common.time_alternating([fn for _, fn, _ in rows], repeats=repeats, warmup=2)
    _common.print_table(["shape", "ms", "GFLOP/s"],
                        [[name, 1e3 * t, flops / t / 1e9] for (name, _, flops), t in zip(rows, times)])
    _common.footer()


if __name__ == "__main__":
    main()
