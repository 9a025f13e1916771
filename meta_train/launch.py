"""The single-machine launcher: one meta-training job as N processes on this machine.

``metaopt-train --processes N --config ...`` (or ``python -m meta_train --processes N ...``) starts
N copies of the program, each with ``JAX_COORDINATOR_ADDRESS`` (127.0.0.1 and a free port),
``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` set, so they join one job through
``jax.distributed.initialize``, and waits for them. On CPU each process has one device unless
``XLA_FLAGS=--xla_force_host_platform_device_count=K`` gives it K; on a machine with several GPUs,
process i sees GPU i (``JAX_LOCAL_DEVICE_IDS``) unless that variable is already set.

On several machines, start one process per machine (or per GPU) with your scheduler instead; see
the README's section on processes and GPUs for a SLURM example.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

__all__ = ["GRACE_S", "free_port", "launch_local", "process_env", "without_processes_flag"]

# How long the processes that are still running get to stop on their own after one of them
# failed (they notice the lost peer within the heartbeat timeout) before they are killed.
GRACE_S = 120.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the system picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def without_processes_flag(argv: list[str]) -> list[str]:
    """``argv`` without ``--processes N`` / ``--processes=N`` (what each process is given)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--processes":
            skip = True
            continue
        if arg.startswith("--processes="):
            continue
        out.append(arg)
    return out


def process_env(process_id: int, num_processes: int, port: int, base: dict | None = None) -> dict:
    """The environment of process ``process_id`` of a local job whose coordinator listens on ``port``."""
    env = dict(os.environ if base is None else base)
    env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(num_processes),
               JAX_PROCESS_ID=str(process_id))
    if "JAX_LOCAL_DEVICE_IDS" not in env and _local_gpu_count(env) >= num_processes:
        env["JAX_LOCAL_DEVICE_IDS"] = str(process_id)
    return env


def _local_gpu_count(env: dict) -> int:
    """NVIDIA GPUs the processes will see, found without starting JAX (which must not own them here)."""
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip()])
    try:
        return len([n for n in os.listdir("/dev") if n.startswith("nvidia") and n[6:].isdigit()])
    except OSError:
        return 0


def launch_local(argv: list[str], num_processes: int) -> int:
    """Runs ``python -m metaopt.meta_train ARGV`` as ``num_processes`` processes of one job.

    Returns:
      0 when every process succeeded, else the first failing process's exit status (2 for bad
      input, 3 for a lost process), preferring a status a process gave itself over a process ended
      by a signal (which counts as 128 + the signal).
    """
    port = free_port()
    command = [sys.executable, "-m", "metaopt.meta_train", *argv]
    procs = [subprocess.Popen(command, env=process_env(i, num_processes, port)) for i in range(num_processes)]
    failed = None
    deadline = None
    try:
        while any(p.poll() is None for p in procs):
            for p in procs:
                if failed is None and p.poll() not in (None, 0):
                    failed = p
                    deadline = time.monotonic() + GRACE_S
            if deadline is not None and time.monotonic() > deadline:
                for p in procs:
                    if p.poll() is None:
                        p.kill()
            time.sleep(0.2)
    except KeyboardInterrupt:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            p.wait()
        return 130
    # A process that stopped with a status of its own (2: bad input, 3: a lost process) says why the
    # job ended; the others may then have been ended by a signal from the collective runtime.
    said = [p for p in procs if p.returncode > 0]
    if failed is None or (failed.returncode < 0 and said):
        failed = said[0] if said else next((p for p in procs if p.returncode != 0), None)
    code = failed.returncode if failed is not None else 0
    return code if code >= 0 else 128 - code
