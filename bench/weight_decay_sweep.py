"""A learned optimizer with a decoupled weight decay added at several rates: training against
held-out loss on one MNIST-1D cell.

The optimizer (one without a decay) keeps its weights, and ``lopt.weight_decay`` is set to each
rate (its fresh decay schedule: the rate times ``init_decay``'s cosine in t/T, on every tensor of
two or more dimensions), which is the theta a run with ``init_theta`` and that ``weight_decay``
starts from. The
cell defaults to the µP MLP of width 64 and depth 3 for 2000 steps: one of the meta-training tasks
of ``configs/pretrained_mulo_v4.yaml`` at its longest horizon. Printed: the final training loss
(mean of the last 5% of steps) and the held-out loss of the final parameters, means over seeds.

    python bench/weight_decay_sweep.py --optimizer mulo-v4 --rates 0,1e-4,3e-4,1e-3,3e-3
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import numpy as np

import metaopt
from metaopt import unroll
from metaopt.meta_train.run import initial_theta
from metaopt.tasks import get_family


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--optimizer", default="mulo-v4", help="a shipped name or a checkpoint folder")
    parser.add_argument("--rates", default="0,1e-4,3e-4,1e-3,3e-3", help="comma-separated decay rates per step")
    parser.add_argument("--width", type=int, default=1, help="width multiplier of the base width 64")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    base, _ = metaopt.load(args.optimizer)
    if getattr(base, "weight_decay", None) is not None:
        parser.error(f"--optimizer: {args.optimizer} already has a weight decay; give one without")
    family = get_family("mlp_mnist1d")
    task = family.task(family.make_config(dataset="mnist1d", width_multiplier=args.width, base_width=64,
                                          depth=3, activation="relu", batch_size=64, parametrization="mup"))
    print(f"{args.optimizer} on the µP MNIST-1D MLP of width {64 * args.width}, {args.steps} steps, "
          f"{args.seeds} seeds")
    print("| decay rate per step | final training loss | final held-out loss |")
    print("| --- | --- | --- |")
    for rate in (float(r) for r in args.rates.split(",")):
        tic = time.perf_counter()
        lopt = dataclasses.replace(base, weight_decay=rate or None)
        theta = initial_theta(lopt, 0, args.optimizer)
        train, held_out = _row(lopt, theta, task, args.steps, args.seeds)
        print(f"| {rate:g} | {train:.4g} | {held_out:.4g} |  ({time.perf_counter() - tic:.0f} s)", flush=True)
    return 0


def _row(lopt, theta, task, num_steps: int, seeds: int) -> tuple[float, float]:
    """(final training loss, final held-out loss), means over ``seeds`` runs."""
    tx = lopt.transform(theta, num_steps, param_meta=task.param_meta)

    @jax.jit
    def one(key):
        params, losses = unroll.train(task, tx, key, num_steps)
        return losses[-max(1, num_steps // 20):].mean(), task.eval_loss(params)

    results = np.asarray([jax.device_get(one(jax.random.key(s))) for s in range(seeds)])
    return float(results[:, 0].mean()), float(results[:, 1].mean())


if __name__ == "__main__":
    raise SystemExit(main())
