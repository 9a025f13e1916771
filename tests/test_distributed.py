"""Meta-training as a job of 2 processes on this machine (gloo collectives between CPU processes).

The quickstart config, for a few outer steps: 2 processes with one CPU device each give the theta
of 1 process with 2 forced host devices (PES and whole-run ES); when one process of a job is
killed the other exits with status 3 and one line; the job is resumed from its checkpoints, also
by a job of another process count, and ends with the theta of an uninterrupted job.

Runs are real processes through the command line, sharing a persistent compilation cache; every
wait has a timeout and ports are picked free by the system.
"""

import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import yaml

import metaopt
from metaopt.meta_train import checkpoints, cli, launch, sharding
from conftest import TEST_XLA_FLAGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(ROOT, "configs", "quickstart.yaml")
# checkpoint_every does not change the computation; saving every step gives the kill test a
# checkpoint to resume from and a run long enough to land in.
PES_OVERRIDES = ["outer_steps=6", "log_every=2", "checkpoint_every=1"]
ES_OVERRIDES = ["outer_steps=3", "log_every=1", "checkpoint_every=3"]
ES_ESTIMATOR = {"name": "es", "strategy": "open_es", "population_size": 4, "sigma": 0.01,
                "learning_rate": 3.0e-3, "num_steps": 20, "fitness": "final", "fitness_shaping": "pairwise"}
TIMEOUT_S = 420


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("jax_cache")
    out = {k: v for k, v in os.environ.items()
           if not k.startswith(("JAX_COORDINATOR", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_", "OMPI_"))}
    out.update(JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", JAX_PLATFORMS="cpu",
               METAOPT_HEARTBEAT_TIMEOUT_S="10", METAOPT_INIT_TIMEOUT_S="120")
    out["PYTHONPATH"] = ROOT + os.pathsep + out.get("PYTHONPATH", "")
    out["XLA_FLAGS"] = TEST_XLA_FLAGS
    return out


@pytest.fixture(scope="module")
def es_config(tmp_path_factory):
    """The quickstart config with whole-run ES (4 members, runs of 20 steps) as its estimator."""
    with open(QUICKSTART, encoding="utf-8") as f:
        cfg = yaml.safe_load(f)
    cfg["name"] = "quickstart_es"
    cfg["estimator"] = dict(ES_ESTIMATOR)
    path = tmp_path_factory.mktemp("cfg") / "quickstart_es.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def program(config, run_dir, overrides, *extra):
    return [sys.executable, "-m", "metaopt.meta_train", "--config", config, "--no-progress",
            f"run_dir={run_dir}", *overrides, *extra]


def run_one_process(env, config, run_dir, overrides, *extra, devices=2):
    """One process with ``devices`` forced host devices."""
    proc = subprocess.run(program(config, run_dir, overrides, *extra), cwd=ROOT, capture_output=True, text=True,
                          timeout=TIMEOUT_S,
                          env=dict(env, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {TEST_XLA_FLAGS}"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def start_job(env, config, run_dir, overrides, *extra, processes=2, logs=None):
    """The processes of one job on 127.0.0.1, started directly (so a test can kill one of them)."""
    port = launch.free_port()
    procs = []
    for i in range(processes):
        err = open(logs / f"p{i}.err", "w") if logs is not None else subprocess.PIPE
        procs.append(subprocess.Popen(program(config, run_dir, overrides, *extra), cwd=ROOT,
                                      env=launch.process_env(i, processes, port, env),
                                      stdout=subprocess.DEVNULL, stderr=err, text=True))
    return procs


def finish(procs, timeout=TIMEOUT_S):
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            p.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [p.returncode for p in procs]


def max_difference(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in
               zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# ---------------------------------------------------------------- joining a job (no processes started)


def test_environment_decides_whether_to_join_a_job():
    assert sharding.distributed_settings({}) is None
    assert sharding.distributed_settings({"SLURM_NTASKS": "1", "OMPI_COMM_WORLD_SIZE": "1"}) is None
    full = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3",
            "METAOPT_HEARTBEAT_TIMEOUT_S": "7"}
    assert sharding.distributed_settings(full) == {
        "coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3,
        "heartbeat_timeout_seconds": 7, "initialization_timeout": sharding.DEFAULT_INIT_TIMEOUT_S}
    # A cluster JAX detects itself: jax.distributed.initialize gets only the timeouts.
    assert sharding.distributed_settings({"SLURM_JOB_ID": "9", "SLURM_NTASKS": "8"}) == {
        "heartbeat_timeout_seconds": sharding.DEFAULT_HEARTBEAT_TIMEOUT_S,
        "initialization_timeout": sharding.DEFAULT_INIT_TIMEOUT_S}
    assert sharding.distributed_settings({"OMPI_COMM_WORLD_SIZE": "2"}) is not None


@pytest.mark.parametrize("environ, message", [
    ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}, "JAX_COORDINATOR_ADDRESS: must be set together with"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"},
     "JAX_PROCESS_ID: expected 0..1 (JAX_NUM_PROCESSES is 2), got 2"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"},
     "JAX_NUM_PROCESSES: expected an int, got 'two'"),
    ({"SLURM_NTASKS": "2", "METAOPT_HEARTBEAT_TIMEOUT_S": "0"}, "METAOPT_HEARTBEAT_TIMEOUT_S: expected an int >= 1"),
])
def test_malformed_job_environment_is_one_line_and_status_2(environ, message, monkeypatch, capsys, tmp_path):
    with pytest.raises(ValueError, match=re.escape(message)):
        sharding.distributed_settings(environ)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    status = cli.main(["--config", QUICKSTART, f"run_dir={tmp_path / 'never'}", "--no-progress"])
    lines = capsys.readouterr().err.splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith(f"error: {message}")
    assert not (tmp_path / "never").exists()


def test_launcher_gives_each_process_its_place_in_the_job():
    assert launch.without_processes_flag(["--processes", "2", "--config", "q", "--processes=3", "a=1"]) == [
        "--config", "q", "a=1"]
    env = launch.process_env(1, 2, 4567, {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": ""})
    assert env["JAX_COORDINATOR_ADDRESS"] == "127.0.0.1:4567"
    assert (env["JAX_NUM_PROCESSES"], env["JAX_PROCESS_ID"]) == ("2", "1")
    assert launch.free_port() > 0


# ---------------------------------------------------------------- jobs of 2 processes


@pytest.fixture(scope="module")
def pes_two_processes(env, tmp_path_factory):
    """The quickstart (PES) as 2 processes started by ``--processes 2``: (run_dir, theta, stderr)."""
    run_dir = tmp_path_factory.mktemp("runs") / "pes_2proc"
    proc = subprocess.run([sys.executable, "-m", "metaopt.meta_train", "--processes", "2", "--config", QUICKSTART,
                           "--no-progress", f"run_dir={run_dir}", *PES_OVERRIDES],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, theta = metaopt.load(run_dir)
    return run_dir, theta, proc.stderr


def test_pes_two_processes_match_one_process_with_two_devices(pes_two_processes, env, tmp_path):
    run_dir, theta, stderr = pes_two_processes
    assert "on 2 device(s) in 2 processes" in stderr
    # One writer: every record once, and the checkpoints are the usual ones.
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    steps = [yaml.safe_load(line)["step"] for line in lines if "meta_loss" in line]
    assert steps == [2, 4, 6]
    assert [s for s, _ in checkpoints.list_checkpoints(str(run_dir))] == [6, 5]
    single = tmp_path / "pes_1proc"
    run_one_process(env, QUICKSTART, single, PES_OVERRIDES)
    _, reference = metaopt.load(single)
    initial = metaopt.MLPLOpt(hidden_size=32, num_hidden_layers=2, mup=True).init(
        jax.random.fold_in(jax.random.key(0), 0))
    assert max_difference(theta, initial) > 1e-4  # theta moved
    assert max_difference(theta, reference) <= 1e-5


def test_es_two_processes_match_one_process_with_two_devices(env, es_config, tmp_path):
    procs = start_job(env, es_config, tmp_path / "es_2proc", ES_OVERRIDES)
    codes = finish(procs)
    assert codes == [0, 0], [p.stderr.read()[-3000:] for p in procs]
    run_one_process(env, es_config, tmp_path / "es_1proc", ES_OVERRIDES)
    _, theta = metaopt.load(tmp_path / "es_2proc")
    _, reference = metaopt.load(tmp_path / "es_1proc")
    assert metaopt.checkpoint.load_metadata(tmp_path / "es_2proc")["outer_step"] == 3
    assert max_difference(theta, reference) <= 1e-5


def test_killed_process_stops_the_job_which_resumes_to_the_same_theta(pes_two_processes, env, tmp_path):
    _, reference, _ = pes_two_processes
    run_dir, logs = tmp_path / "killed", tmp_path / "logs"
    logs.mkdir()
    procs = start_job(env, QUICKSTART, run_dir, PES_OVERRIDES, logs=logs)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline and all(p.poll() is None for p in procs):
            found = checkpoints.list_checkpoints(str(run_dir))
            if found and found[0][0] >= 2:
                break
            time.sleep(0.02)
        assert all(p.poll() is None for p in procs), "the job ended before it could be killed"
        procs[1].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        procs[0].wait(timeout=60)
        took = time.monotonic() - killed
    finally:
        finish(procs, timeout=5)
    text = (logs / "p0.err").read_text()
    assert procs[1].returncode == -signal.SIGKILL
    assert procs[0].returncode == 3, text[-3000:]
    assert took < 30, text[-3000:]
    # One line of its own says why (the runtime may log beside it, but no traceback).
    errors = [ln for ln in text.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: process 0 of 2: "), text[-3000:]
    assert "resume" in errors[0] and "Traceback" not in text, text[-3000:]
    stopped_at = checkpoints.list_checkpoints(str(run_dir))[0][0]
    assert 2 <= stopped_at < 6, stopped_at
    # A job of another process count (1 process, 2 devices) takes it one step further...
    one = run_one_process(env, QUICKSTART, run_dir, PES_OVERRIDES, "--max-outer-steps-this-run", "1")
    assert "resuming" in one.stderr, one.stderr[-3000:]
    assert checkpoints.list_checkpoints(str(run_dir))[0][0] == stopped_at + 1, one.stderr[-3000:]
    # ...and a job of 2 processes resumes from that to the end.
    codes = finish(start_job(env, QUICKSTART, run_dir, PES_OVERRIDES, logs=logs))
    assert codes == [0, 0], (logs / "p0.err").read_text()[-3000:]
    _, theta = metaopt.load(run_dir)
    assert max_difference(theta, reference) <= 1e-5
    steps = [yaml.safe_load(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
             if "meta_loss" in line]
    assert steps == sorted(set(steps)) and steps[-1] == 6


def test_mesh_axis_is_the_estimators_population_axis():
    from metaopt.population import POP_AXIS

    assert sharding.AXIS == POP_AXIS


def test_launcher_reports_bad_input_of_its_processes():
    status = launch.launch_local(["--config", QUICKSTART, "--no-progress", "outer_steps=abc"], 2)
    assert status == 2
