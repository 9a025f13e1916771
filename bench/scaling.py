"""Benchmark 3: meta-training throughput over devices, processes and width.

Part 1 (devices): PES meta-training of ``metaopt.MLPLOpt`` on the reference MLP task (width 128,
2 hidden layers, MNIST-1D, batch 128, truncations of 50 steps, 8 task slots x 1 antithetic pair)
with the population sharded over a 1-D mesh (axis "pop") of 1, 2 and 4 devices. Each device count
runs in its own subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (the flag
must be set before JAX starts). On a 2-core machine more than 2 devices cannot add compute: the
figures show what sharding costs, and whether 2 devices use both cores.

Part 3 (processes): the same PES meta-training as a job of 1, 2 and 4 processes on this machine
(``jax.distributed`` on 127.0.0.1, gloo collectives between the processes, one CPU device each,
the population sharded over the global mesh). Besides inner steps per second it gives the share of
an outer step process 0 spends in cross-process collectives (all-reduce, all-gather, ...), from a
``jax.profiler`` trace of a few steps: the time of XLA's collective operations, waiting for the
slower peer included, over the wall time of those steps.

Part 2 (width): the same PES meta-training on one device at several widths. Per inner step, the
time should grow like the FLOPs (model forward+backward plus the learned optimizer's update, from
XLA's cost analysis), not faster: ``time x`` and ``flops x`` are relative to the smallest width,
and ``time/flop`` (their quotient) should stay near 1.

Usage:
  python bench/scaling.py            # both parts (several minutes)
  python bench/scaling.py --quick    # a tiny version, to check the script runs
  python bench/scaling.py --part devices|width|processes
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_HERE, os.path.dirname(_HERE)]  # the helpers, and the source checkout

import _common  # noqa: E402

REPO = os.path.dirname(_HERE)


def settings(quick: bool, width: int) -> dict:
    if quick:
        return dict(width=width, batch_size=32, num_tasks=4, truncation_length=10)
    return dict(width=width, batch_size=128, num_tasks=8, truncation_length=50)


def child(spec: dict) -> dict:
    """Runs in a subprocess: compiles and times PES outer steps; returns the figures."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from jax.sharding import Mesh

    import metaopt
    from metaopt.meta import make_meta_trainer
    from metaopt.tasks import get_family

    family = get_family("mlp_mnist1d")
    task = family.task(family.make_config(base_width=spec["width"], width_multiplier=1, depth=3,
                                          batch_size=spec["batch_size"]))
    lopt = metaopt.MLPLOpt(hidden_size=32, num_hidden_layers=2, mup=True, time_features=False,
                           step_features=True)
    trunc = spec["truncation_length"]
    mesh = None
    if spec["devices"] > 1:
        mesh = Mesh(np.array(jax.devices()[: spec["devices"]]), ("pop",))
    trainer = make_meta_trainer("pes", lopt, [task], outer_optimizer=optax.adam(1e-3), mesh=mesh,
                                num_tasks=spec["num_tasks"], num_perturbations=1, truncation_length=trunc,
                                min_horizon=2 * trunc, max_horizon=20 * trunc)
    key = jax.random.key(0)
    state = _common.block(trainer.init(key, lopt.init(key)))
    start = time.perf_counter()
    compiled = jax.jit(trainer.step, static_argnums=2, donate_argnums=0).lower(state, key, 0).compile()
    compile_s = time.perf_counter() - start
    holder = [state, 0]

    def call():
        holder[1] += 1
        holder[0], metrics = compiled(holder[0], jax.random.fold_in(key, holder[1]))
        return metrics

    (seconds,) = _common.time_alternating([call], repeats=spec["repeats"], min_seconds=spec["min_seconds"])
    steps = trainer.estimator.inner_steps_per_estimate

    params = task.init(key)
    batch = task.batch(key, 0)
    grads = jax.grad(task.loss)(params, batch)
    f_model = _common.xla_flops(jax.value_and_grad(task.loss), params, batch)
    f_lo = _common.lo_update_flops(lopt, lopt.init(key), 1000, grads, params, param_meta=task.param_meta)
    return dict(devices=len(jax.devices()), used=spec["devices"], steps_per_s=steps / seconds,
                ms_per_inner_step=1e3 * seconds / steps, compile_s=compile_s, f_model=f_model, f_lo=f_lo,
                params=int(sum(x.size for x in jax.tree.leaves(params))),
                members=trainer.estimator.population_size, load=_common.load_average())


COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")


def collective_seconds(trace_dir: str) -> float:
    """Seconds spent in XLA collective operations in the profiler trace under ``trace_dir``."""
    import glob
    import gzip

    paths = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
    if not paths:
        raise SystemExit(f"no profiler trace under {trace_dir}")
    with gzip.open(paths[0], "rt") as f:
        events = json.load(f)["traceEvents"]
    return 1e-6 * sum(e.get("dur", 0.0) for e in events
                      if e.get("ph") == "X" and str(e.get("name", "")).startswith(COLLECTIVES))


def job_child(spec: dict) -> dict | None:
    """Runs in each process of a job: times PES outer steps over the global mesh.

    Every process runs the same fixed number of steps (they meet in collectives); process 0
    returns the figures, the others None.
    """
    import tempfile

    from metaopt.meta_train import sharding

    sharding.maybe_initialize_distributed()
    import jax
    import numpy as np
    import optax

    import metaopt
    from metaopt.meta import make_meta_trainer
    from metaopt.tasks import get_family

    family = get_family("mlp_mnist1d")
    task = family.task(family.make_config(base_width=spec["width"], width_multiplier=1, depth=3,
                                          batch_size=spec["batch_size"]))
    lopt = metaopt.MLPLOpt(hidden_size=32, num_hidden_layers=2, mup=True, time_features=False,
                           step_features=True)
    trunc = spec["truncation_length"]
    mesh = sharding.make_mesh()
    trainer = make_meta_trainer("pes", lopt, [task], outer_optimizer=optax.adam(1e-3), mesh=mesh,
                                num_tasks=spec["num_tasks"], num_perturbations=1, truncation_length=trunc,
                                min_horizon=2 * trunc, max_horizon=20 * trunc)
    key = jax.random.key(0)
    state = sharding.place_on_mesh(trainer.init(key, lopt.init(key)), mesh)
    layout = jax.tree.map(lambda x: x.sharding, state)
    step = jax.jit(trainer.step, static_argnums=2, donate_argnums=0,
                   out_shardings=(layout, sharding.replicated(mesh)))
    start = time.perf_counter()
    compiled = step.lower(state, key, 0).compile()
    compile_s = time.perf_counter() - start
    count = [0]

    def call():
        count[0] += 1
        nonlocal state
        state, metrics = compiled(state, jax.random.fold_in(key, count[0]))
        return jax.block_until_ready(metrics)

    call()  # warm-up
    times = []
    for _ in range(spec["repeats"]):
        tic = time.perf_counter()
        call()
        times.append(time.perf_counter() - tic)
    seconds = float(np.median(times))
    trace_dir = tempfile.mkdtemp(prefix=f"scaling-trace-{jax.process_index()}-")
    jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
    tic = time.perf_counter()
    for _ in range(spec["profiled_steps"]):
        call()
    traced_s = time.perf_counter() - tic
    jax.profiler.stop_trace()
    comm_s = collective_seconds(trace_dir)
    sharding.finish()
    if jax.process_index() != 0:
        return None
    steps = trainer.estimator.inner_steps_per_estimate
    return dict(processes=jax.process_count(), devices=len(jax.devices()), steps_per_s=steps / seconds,
                ms_per_outer_step=1e3 * seconds, compile_s=compile_s, comm_share=comm_s / traced_s,
                comm_ms_per_step=1e3 * comm_s / spec["profiled_steps"], members=trainer.estimator.population_size,
                load=_common.load_average())


def run_job(spec: dict, processes: int) -> dict:
    """Runs ``job_child`` as a job of ``processes`` processes on 127.0.0.1; process 0's figures."""
    from metaopt.meta_train import launch

    base = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    base.update(JAX_PLATFORMS="cpu", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    port = launch.free_port()
    command = [sys.executable, os.path.abspath(__file__), "--job-child", json.dumps(spec)]
    procs = []
    for i in range(processes):
        env = launch.process_env(i, processes, port, base) if processes > 1 else base
        procs.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    outputs = [p.communicate(timeout=1800) for p in procs]
    lines = [ln for ln in outputs[0][0].splitlines() if ln.startswith("RESULT ")]
    if any(p.returncode for p in procs) or not lines:
        for out, err in outputs:
            print(out[-2000:], err[-4000:])
        raise SystemExit(f"job of {processes} processes failed: {spec}")
    return json.loads(lines[-1][len("RESULT "):])


def run_child(spec: dict, devices: int) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)],
                         capture_output=True, text=True, cwd=REPO, env=env)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode or not lines:
        print(out.stdout[-2000:], out.stderr[-4000:])
        raise SystemExit(f"child failed: {spec}")
    return json.loads(lines[-1][len("RESULT "):])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--part", choices=("devices", "width", "processes", "both", "all"), default="both",
                        help="both: devices and width; all: the three parts")
    parser.add_argument("--widths", default=None, help="comma-separated widths of part 2")
    parser.add_argument("--processes", default="1,2,4", help="comma-separated process counts of part 3")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--job-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print("RESULT " + json.dumps(child(json.loads(args.child))), flush=True)
        return
    if args.job_child is not None:
        result = job_child(json.loads(args.job_child))
        if result is not None:
            print("RESULT " + json.dumps(result), flush=True)
        return
    repeats, min_seconds = (3, 0.0) if args.quick else (5, 5.0)

    _common.header("meta-training scaling: devices, width and processes (PES, MLPLOpt on MLPs, MNIST-1D)")
    if args.part in ("devices", "both", "all"):
        rows = []
        for n in (1, 2, 4):
            spec = dict(settings(args.quick, 32 if args.quick else 128), devices=n, repeats=repeats,
                        min_seconds=min_seconds)
            r = run_child(spec, n)
            rows.append([n, r["members"], r["steps_per_s"], r["ms_per_inner_step"], r["compile_s"], r["load"]])
            print(f"#  devices={n} done", flush=True)
        base = rows[0][2]
        for row in rows:
            row.insert(3, row[2] / base)
        print("\n## devices (forced host devices, population sharded over axis 'pop')")
        _common.print_table(["devices", "members", "inner steps/s", "speed-up", "ms/inner step", "compile s",
                             "load at end"], rows)
    if args.part in ("width", "both", "all"):
        widths = [int(w) for w in args.widths.split(",")] if args.widths else (
            [16, 32, 64] if args.quick else [32, 64, 128, 256])
        results = []
        for w in widths:
            spec = dict(settings(args.quick, w), devices=1, repeats=repeats, min_seconds=min_seconds)
            results.append(run_child(spec, 1))
            print(f"#  width={w} done", flush=True)
        t0 = results[0]["ms_per_inner_step"]
        f0 = results[0]["f_model"] + results[0]["f_lo"]
        rows = []
        for w, r in zip(widths, results):
            f = r["f_model"] + r["f_lo"]
            rows.append([w, r["params"], r["ms_per_inner_step"], r["steps_per_s"], f, r["ms_per_inner_step"] / t0,
                         f / f0, (r["ms_per_inner_step"] / t0) / (f / f0), r["compile_s"]])
        print("\n## width (1 device; FLOPs per inner step = model fwd+bwd + LO update, XLA count)")
        _common.print_table(["width", "params", "ms/inner step", "inner steps/s", "flops/inner step", "time x",
                             "flops x", "time/flop", "compile s"], rows)
    if args.part in ("processes", "all"):
        rows = []
        for n in [int(p) for p in args.processes.split(",")]:
            spec = dict(settings(args.quick, 32 if args.quick else 128), repeats=repeats,
                        profiled_steps=2 if args.quick else 5)
            r = run_job(spec, n)
            rows.append([n, r["devices"], r["members"], r["steps_per_s"], r["ms_per_outer_step"],
                         r["comm_ms_per_step"], 100.0 * r["comm_share"], r["compile_s"], r["load"]])
            print(f"#  processes={n} done", flush=True)
        base = rows[0][3]
        for row in rows:
            row.insert(4, row[3] / base)
        print("\n## processes (jax.distributed on 127.0.0.1, gloo, 1 CPU device per process; process 0's view)")
        _common.print_table(["processes", "devices", "members", "inner steps/s", "speed-up", "ms/outer step",
                             "collectives ms/step", "collectives %", "compile s", "load at end"], rows)
    _common.footer()


if __name__ == "__main__":
    main()
