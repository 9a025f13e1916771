"""Benchmark 2: inner-task steps per second during meta-training, against plain vmapped Adam.

Each row meta-trains ``metaopt.MLPLOpt`` on an MLP task with one estimator (``metaopt.meta``) and,
alternately in the same process, trains the same population of inner runs (same task, same number
of members, same steps per call, batches drawn inside the scan) with plain ``optax.adam``: the same
inner work with no learned optimizer and no estimator. Rows:

- "ref pes" / "ref tbptt" / "ref es": the reference configuration (8 task slots of a width-128
  MLP with 2 hidden layers on MNIST-1D, batch 128, truncations of 50 steps, a 2x32 per-parameter MLP
  with step features like small_fc_lopt). PES uses one antithetic pair per slot (16 inner runs),
  TBPTT one run per slot (8), ES a population of 16 whole runs of ``--es-steps`` steps.
- "mulo_mlp.yaml", "temporal_lo_es.yaml": the shipped default configs, as the meta-training
  program builds them (estimator, learned optimizer and first task group from the YAML).

Columns:
  members: inner runs per outer step; steps/call: inner steps per outer step (all members).
  lo steps/s: inner steps per second during meta-training (median outer step, after compilation).
  adam steps/s: inner steps per second of the plain vmapped Adam population.
  bound steps/s: the FLOP bound adam_steps/s x (F_model + F_adam) / (F_model + F_lo + F_est), with
    F_model the forward+backward FLOPs of one inner step, F_lo and F_adam the update's FLOPs and
    F_est the estimator's own FLOPs per inner step (outer-step work outside the inner scan: restarts,
    perturbations, meta-loss), all from XLA's cost analysis.
  bound/lo: how far meta-training is from its FLOP bound (target: at most 1.25).
  compile s: seconds to trace and compile the outer step; first s: that plus the first call's run.

With ``--tbptt-memory`` the TBPTT reference row is run in fresh subprocesses with and without
rematerialisation and each one's peak resident memory is printed.

Usage:
  python bench/meta_throughput.py            # the full table (several minutes)
  python bench/meta_throughput.py --quick    # a tiny version, to check the script runs
  python bench/meta_throughput.py --tbptt-memory
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_HERE, os.path.dirname(_HERE)]  # the helpers, and the source checkout

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
import yaml  # noqa: E402

import _common  # noqa: E402
import metaopt  # noqa: E402
from metaopt import learned_optimizer as lo_registry  # noqa: E402
from metaopt.meta import make_meta_trainer  # noqa: E402
from metaopt.population import Execution  # noqa: E402
from metaopt.tasks import get_family  # noqa: E402
from metaopt.unroll import init_inner_state, inner_step, unroll  # noqa: E402

REPO = os.path.dirname(_HERE)


class Setup:
    """One benchmark row: a task, a learned optimizer and a meta-trainer."""

    def __init__(self, name, task, lopt, estimator, **estimator_kwargs):
        self.name = name
        self.task = task
        self.lopt = lopt
        self.estimator = estimator
        self.trainer = make_meta_trainer(estimator, lopt, [task], outer_optimizer=optax.adam(1e-3),
                                         **estimator_kwargs)
        # The same step with the population vmapped and one row block per matrix: XLA's FLOP count
        # covers every member and every block.
        self.vmapped_trainer = make_meta_trainer(estimator, _common.one_row_block(lopt), [task],
                                                 outer_optimizer=optax.adam(1e-3),
                                                 execution=Execution(member_map="vmap"), **estimator_kwargs)
        est = self.trainer.estimator
        if estimator == "es":
            self.members = est.config.population_size * est.config.num_tasks_per_member
            self.steps = est.config.run_length
        else:
            self.members = est.population_size
            self.steps = est.config.truncation_length


def mlp_task(width: int, batch_size: int):
    family = get_family("mlp_mnist1d")
    return family.task(family.make_config(base_width=width, width_multiplier=1, depth=3, batch_size=batch_size))


def reference_setups(args) -> list[Setup]:
    width, batch, trunc = (32, 32, 10) if args.quick else (128, 128, 50)
    slots = 2 if args.quick else 8
    task = mlp_task(width, batch)
    lopt = metaopt.MLPLOpt(hidden_size=32, num_hidden_layers=2, mup=True, time_features=False,
                           step_features=True)
    common = dict(num_tasks=slots, truncation_length=trunc, min_horizon=2 * trunc, max_horizon=20 * trunc)
    setups = []
    if "pes" in args.estimators:
        setups.append(Setup("ref pes", task, lopt, "pes", num_perturbations=1, **common))
    if "tbptt" in args.estimators:
        setups.append(Setup("ref tbptt" + (" remat" if args.remat else ""), task, lopt, "tbptt",
                            remat=args.remat, **common))
    if "es" in args.estimators:
        setups.append(Setup("ref es", task, lopt, "es", population_size=2 * slots,
                            num_steps=10 if args.quick else args.es_steps))
    return setups


def yaml_setup(path: str, quick: bool) -> Setup:
    """The first task group, learned optimizer and estimator of a meta-training config file."""
    with open(path) as f:
        cfg = yaml.safe_load(f)
    task_cfg = cfg["task"]
    family = get_family(task_cfg["family"], **task_cfg.get("family_kwargs", {}))
    fields = dict(task_cfg["configs"][0])
    lopt_spec = dict(cfg["lopt"])
    lopt = lo_registry.lookup(lopt_spec.pop("kind"))(**lopt_spec)
    est = dict(cfg["estimator"])
    name = est.pop("name")
    if quick:
        fields.update(base_width=16, batch_size=16)
        if name == "es":
            est.update(population_size=4, min_horizon=5, max_horizon=10)
        else:
            est.update(num_tasks=2, num_perturbations=1, truncation_length=5, min_horizon=10, max_horizon=20)
    return Setup(os.path.basename(path), family.task(family.make_config(**fields)), lopt, name, **est)


class MetaRunner:
    """Holds the meta-state and takes one outer step per call (donating the old state)."""

    def __init__(self, setup: Setup, key):
        self.setup = setup
        theta = setup.lopt.init(jax.random.fold_in(key, 0))
        self.state = _common.block(setup.trainer.init(jax.random.fold_in(key, 1), theta))
        self.key = jax.random.fold_in(key, 2)
        self.calls = 0
        self.compiled = None

    def compile(self) -> float:
        """Traces and compiles the outer step (as ``jax.jit(trainer.step, static_argnums=2)``)."""
        start = time.perf_counter()
        fn = jax.jit(self.setup.trainer.step, static_argnums=2, donate_argnums=0)
        self.compiled = fn.lower(self.state, self.key, 0).compile()
        return time.perf_counter() - start

    def __call__(self):
        self.calls += 1
        self.state, metrics = self.compiled(self.state, jax.random.fold_in(self.key, self.calls))
        return metrics


class AdamRunner:
    """The same population trained with plain Adam: vmapped ``unroll`` of the same length."""

    def __init__(self, setup: Setup, key):
        task, steps = setup.task, setup.steps
        self.tx = optax.adam(1e-3)
        keys = jax.random.split(key, setup.members)
        self.state = _common.block(jax.jit(jax.vmap(lambda k: init_inner_state(task, self.tx, k)))(keys))
        self.fn = jax.jit(jax.vmap(lambda s: unroll(task, self.tx, s, steps)), donate_argnums=0)

    def __call__(self):
        self.state, losses = self.fn(self.state)
        return losses


def flop_bound(setup: Setup, meta: MetaRunner, adam_steps_per_s: float) -> tuple[float, dict]:
    """The FLOP-bound throughput of meta-training and its parts (FLOPs per inner step)."""
    task, lopt = setup.task, setup.lopt
    key = jax.random.key(0)
    theta = lopt.init(key)
    params = task.init(key)
    batch = task.batch(key, 0)
    tx_lo = lopt.transform(theta, 1000, param_meta=task.param_meta)
    tx_adam = optax.adam(1e-3)
    grads = jax.grad(task.loss)(params, batch)
    f_model = _common.xla_flops(jax.value_and_grad(task.loss), params, batch)
    f_lo = _common.lo_update_flops(lopt, theta, 1000, grads, params, param_meta=task.param_meta)
    f_adam = _common.xla_flops(lambda g, s, p: tx_adam.update(g, s, p), grads, tx_adam.init(params), params)
    # XLA counts a scan's body once: the outer step's count (population vmapped) minus one
    # vmapped inner step is the estimator's own work per outer step.
    f_outer = _common.xla_flops(lambda st, k: setup.vmapped_trainer.step(st, k, 0), meta.state, meta.key)
    members = setup.members
    inner = init_inner_state(task, tx_lo, key)
    thetas = jax.tree.map(lambda x: jnp.broadcast_to(x, (members,) + x.shape), theta)

    def body(th, state):
        tx = _common.one_row_block(lopt).transform(th, 1000, param_meta=task.param_meta)
        return inner_step(task, tx, state)

    inners = jax.tree.map(lambda x: jnp.broadcast_to(x, (members,) + x.shape), inner)
    f_body = _common.xla_flops(jax.vmap(body), thetas, inners)
    if setup.estimator == "tbptt":
        # Reverse mode re-runs the body's forward (with remat) and its transpose (about twice the
        # forward): the estimator's work is the backward pass through the inner steps.
        f_est = max(f_outer - f_body, 0.0) / members
        f_est = f_est / setup.steps + 2.0 * (f_model + f_lo)
    else:
        f_est = max(f_outer - f_body, 0.0) / (members * setup.steps)
    bound = adam_steps_per_s * (f_model + f_adam) / (f_model + f_lo + f_est)
    return bound, dict(f_model=f_model, f_lo=f_lo, f_adam=f_adam, f_est=f_est)


def measure(setup: Setup, args) -> list:
    key = jax.random.key(0)
    meta = MetaRunner(setup, key)
    compile_s = meta.compile()
    start = time.perf_counter()
    _common.block(meta())
    first_s = compile_s + time.perf_counter() - start
    adam = AdamRunner(setup, key)
    t_meta, t_adam = _common.time_alternating([meta, adam], repeats=args.repeats, min_seconds=args.min_seconds)
    steps_per_call = setup.members * setup.steps
    lo_tp, adam_tp = steps_per_call / t_meta, steps_per_call / t_adam
    bound, parts = flop_bound(setup, meta, adam_tp)
    print(f"#  {setup.name}: FLOPs per inner step: model {parts['f_model']:.3g}, LO update {parts['f_lo']:.3g}, "
          f"Adam update {parts['f_adam']:.3g}, estimator {parts['f_est']:.3g} (load {_common.load_average()})",
          flush=True)
    return [setup.name, setup.members, steps_per_call, lo_tp, adam_tp, bound, bound / lo_tp, compile_s, first_s]


def tbptt_memory(args) -> None:
    """Runs the TBPTT reference row in subprocesses (remat off and on) and prints their peak memory."""
    rows = []
    for remat in (False, True):
        cmd = [sys.executable, os.path.abspath(__file__), "--estimators", "tbptt", "--repeats", "3",
               "--min-seconds", "0"] + (["--remat"] if remat else []) + (["--quick"] if args.quick else [])
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("| ref")]
        peak = [ln for ln in out.stdout.splitlines() if "peak RSS" in ln]
        if out.returncode or not lines:
            print(out.stdout[-2000:], out.stderr[-4000:])
            raise SystemExit(f"tbptt subprocess failed (remat={remat})")
        cells = [c.strip() for c in lines[0].strip("|").split("|")]
        rows.append([f"tbptt remat={remat}", cells[3], peak[0].split("peak RSS: ")[1]])
    _common.print_table(["row", "lo steps/s", "peak RSS (whole process)"], rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes, to check the script runs")
    parser.add_argument("--estimators", default="pes,es", help="reference rows: any of pes,tbptt,es")
    parser.add_argument("--configs", default="configs/mulo_mlp.yaml,configs/temporal_lo_es.yaml",
                        help="config files to time as well (comma-separated; empty for none)")
    parser.add_argument("--es-steps", type=int, default=100, help="inner run length of the ES row")
    parser.add_argument("--remat", action="store_true", help="TBPTT with rematerialisation")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--min-seconds", type=float, default=None)
    parser.add_argument("--tbptt-memory", action="store_true",
                        help="peak memory of TBPTT with and without remat (subprocesses)")
    args = parser.parse_args(argv)
    args.estimators = [e for e in args.estimators.split(",") if e]
    if args.repeats is None:
        args.repeats = 3 if args.quick else 5
    if args.min_seconds is None:
        args.min_seconds = 0.0 if args.quick else 5.0

    _common.header("meta-training throughput vs plain vmapped Adam on the same population")
    if args.tbptt_memory:
        tbptt_memory(args)
        _common.footer()
        return
    setups = reference_setups(args)
    for path in [p for p in args.configs.split(",") if p]:
        setups.append(yaml_setup(os.path.join(REPO, path), args.quick))
    rows = [measure(s, args) for s in setups]
    _common.print_table(["row", "members", "steps/call", "lo steps/s", "adam steps/s", "bound steps/s",
                         "bound/lo", "compile s", "first s"], rows)
    _common.footer()


if __name__ == "__main__":
    main()
