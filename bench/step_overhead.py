"""Benchmark 1: the cost of a learned-optimizer training step next to Adam's, on the same model.

For MLPs on MNIST-1D (3 weight matrices, µP, base width 128) at several widths and batch sizes, and
for the byte-level transformer LM, a training step (loss, gradient, optimizer update, parameter
update) is timed with ``metaopt.MLPLOpt`` (µLO: 28 per-parameter features, a 2x32 hidden MLP, time
features) and with ``optax.adam``, alternately in one process. Each timed call runs ``--steps``
steps in one jitted ``lax.scan`` with donated buffers (as in real training) on a fixed batch, so the
figures are per step without dispatch overhead.

Columns:
  t_adam, t_lo: median milliseconds per step.
  measured: t_lo / t_adam.
  predicted: the FLOP-predicted ratio (F_model + F_lo) / (F_model + F_adam) ~ 1 + F_lo / F_model, with
    F_model the forward+backward FLOPs (XLA cost analysis of loss and gradient), F_lo and F_adam
    the FLOPs of the optimizer update alone (XLA cost analysis of ``tx.update``).
  lo_flops/param: F_lo per parameter, by XLA's count.
  vs_pred: measured / predicted (target: at most 1.15).
  state: optimizer-state bytes of the learned optimizer over Adam's (target: at most 2.5).

With ``--lopt lean`` the learned optimizer is ``metaopt.LeanLOpt`` (a per-tensor network emitting a
5-input, 4-unit per-parameter MLP) instead.

Usage:
  python bench/step_overhead.py            # the full table (several minutes)
  python bench/step_overhead.py --quick    # a tiny version (seconds), to check the script runs
  python bench/step_overhead.py --lopt lean --only "b=128"
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_HERE, os.path.dirname(_HERE)]  # the helpers, and the source checkout

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

import _common  # noqa: E402
import metaopt  # noqa: E402
from metaopt.tasks import get_family  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    family: str
    fields: dict


def cases(quick: bool) -> list[Case]:
    if quick:
        mlp = [(64, 32), (128, 32)]
        lm = [dict(width_multiplier=1, batch_size=4, context_length=32)]
    else:
        mlp = [(w, b) for w in (256, 1024, 4096) for b in (128, 1024)]
        lm = [dict(width_multiplier=4, batch_size=16, context_length=128)]
    out = [Case(f"mlp w={w} b={b}", "mlp_mnist1d",
                dict(base_width=128, width_multiplier=w / 128, depth=3, batch_size=b)) for w, b in mlp]
    for f in lm:
        width = 64 * f["width_multiplier"]
        out.append(Case(f"lm w={width} b={f['batch_size']}x{f['context_length']}", "lm_stdlib",
                        dict(base_width=64, depth=2, **f)))
    return out


def make_train(task, tx, num_steps: int):
    """A jitted run of ``num_steps`` steps on a fixed batch, donating the parameters and state."""

    def run(params, opt_state, batch):
        def body(carry, _):
            params, opt_state = carry
            loss, grads = jax.value_and_grad(task.loss)(params, batch)
            updates, opt_state = tx.update(grads, opt_state, params, loss=loss)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), None, length=num_steps)
        return params, opt_state, losses[-1]

    return jax.jit(run, donate_argnums=(0, 1))


class Runner:
    """Holds one optimizer's training state and advances it by one timed call."""

    def __init__(self, task, tx, params, batch, num_steps):
        self.fn = make_train(task, tx, num_steps)
        self.params = jax.tree.map(jnp.copy, params)
        self.state = tx.init(self.params)
        self.batch = batch

    def __call__(self):
        self.params, self.state, loss = self.fn(self.params, self.state, self.batch)
        return loss


def measure(case: Case, lopt, theta, args) -> list:
    family = get_family(case.family)
    task = family.task(family.make_config(**case.fields))
    key = jax.random.key(0)
    params = task.init(key)
    batch = task.batch(jax.random.key(1), 0)
    n = sum(x.size for x in jax.tree.leaves(params))

    tx_lo = lopt.transform(theta, args.num_steps, param_meta=task.param_meta)
    tx_adam = optax.adam(1e-3)
    grads = jax.grad(task.loss)(params, batch)
    f_model = _common.xla_flops(jax.value_and_grad(task.loss), params, batch)
    lo_state = tx_lo.init(params)
    adam_state = tx_adam.init(params)
    f_lo = _common.lo_update_flops(lopt, theta, args.num_steps, grads, params, param_meta=task.param_meta)
    f_adam = _common.xla_flops(lambda g, s, p: tx_adam.update(g, s, p), grads, adam_state, params)
    state_ratio = _common.tree_bytes(lo_state) / _common.tree_bytes(adam_state)
    del grads, lo_state, adam_state

    lo = Runner(task, tx_lo, params, batch, args.steps)
    adam = Runner(task, tx_adam, params, batch, args.steps)
    t_adam, t_lo = _common.time_alternating([adam, lo], repeats=args.repeats, min_seconds=args.min_seconds)
    t_adam, t_lo = t_adam / args.steps, t_lo / args.steps
    measured = t_lo / t_adam
    predicted = (f_model + f_lo) / (f_model + f_adam)
    return [case.name, n, 1e3 * t_adam, 1e3 * t_lo, measured, predicted, f_lo / n, measured / predicted,
            state_ratio]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes, a few seconds")
    parser.add_argument("--steps", type=int, default=None, help="steps per timed call (one lax.scan)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per optimizer")
    parser.add_argument("--min-seconds", type=float, default=None,
                        help="keep timing until each optimizer has this many seconds")
    parser.add_argument("--num-steps", type=int, default=1000, help="the LO's run length T")
    parser.add_argument("--only", default=None, help="run only cases whose name contains this")
    parser.add_argument("--lopt", choices=("mlp", "lean"), default="mlp",
                        help="mlp: MLPLOpt (small_fc_lopt-sized µLO); lean: LeanLOpt")
    args = parser.parse_args(argv)
    if args.steps is None:
        args.steps = 2 if args.quick else 3
    if args.repeats is None:
        args.repeats = 3 if args.quick else 5
    if args.min_seconds is None:
        args.min_seconds = 0.0 if args.quick else 1.0

    if args.lopt == "lean":
        _common.header("step overhead: learned optimizer (LeanLOpt) vs optax.adam, same model, same process")
        lopt = metaopt.LeanLOpt()
        print(f"# LeanLOpt: {lopt.num_features} features, per-parameter hidden {lopt.per_param_hidden}, "
              f"per-tensor network {lopt.context_size} -> {lopt.hyper_hidden} -> "
              f"{lopt.num_per_param_weights}; {args.steps} steps per timed call, median of >= "
              f"{args.repeats} calls")
    else:
        _common.header("step overhead: learned optimizer (MLPLOpt, µLO) vs optax.adam, same model, same process")
        lopt = metaopt.MLPLOpt(hidden_size=32, num_hidden_layers=2, mup=True, time_features=True,
                               step_features=True)
        print(f"# MLPLOpt: {len(lopt.feature_names)} features, hidden 32 x 2, time features "
              f"{lopt.num_time_features}; {args.steps} steps per timed call, median of >= {args.repeats} calls")
    theta = lopt.init(jax.random.key(42))
    columns = ["case", "params", "t_adam ms", "t_lo ms", "measured", "predicted", "lo_flops/param",
               "vs_pred", "state/adam"]
    rows = []
    for case in cases(args.quick):
        if args.only and args.only not in case.name:
            continue
        rows.append(measure(case, lopt, theta, args))
        print("#  done:", case.name, f"(load {_common.load_average()})", flush=True)
    _common.print_table(columns, rows)
    worst = max(r[7] for r in rows)
    state = max(r[8] for r in rows)
    print(f"# worst measured/predicted: {worst:.3f} (target <= 1.15: {'met' if worst <= 1.15 else 'NOT met'}); "
          f"worst state ratio: {state:.3f} (target <= 2.5: {'met' if state <= 2.5 else 'NOT met'})")
    _common.footer()


if __name__ == "__main__":
    main()
