"""Device setup for meta-training: joining a multi-process job, and the 1-D population mesh.

The population axis of an estimator (tasks x perturbations) is sharded over the devices of a 1-D
``jax.sharding.Mesh`` with axis name ``"pop"``; theta and the outer optimizer state are replicated.
The same config runs on one CPU, on several forced host devices, on GPUs, and across processes and
hosts: after ``jax.distributed.initialize`` ``jax.devices()`` lists every process's devices, the mesh
spans them all, and each process computes only the population members on its own devices.

A job is multi-process when the environment says so: ``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` (all three), or a cluster of more than one task that
JAX detects itself (SLURM, Open MPI). ``METAOPT_HEARTBEAT_TIMEOUT_S`` and ``METAOPT_INIT_TIMEOUT_S``
bound how long a process waits for a peer that died or never came.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# ``metaopt.population`` imports no estimator: importing ``metaopt.meta`` would import evosax, which
# starts jax's backend, and a multi-process job must join before that.
from metaopt.population import POP_AXIS


__all__ = [
    "AXIS", "wants_distributed", "maybe_initialize_distributed", "make_mesh", "replicated",
    "population_sharded", "place_on_mesh", "is_main_process",
]

# The estimators' population axis: the mesh must carry the name they shard over.
AXIS = POP_AXIS

# The environment of a multi-process launch that names its coordinator itself.
_DISTRIBUTED_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
# Task counts of the cluster schedulers JAX detects (SLURM, Open MPI): more than one task means
# a multi-process job.
_CLUSTER_SIZE_ENV = ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")
HEARTBEAT_TIMEOUT_ENV = "METAOPT_HEARTBEAT_TIMEOUT_S"
INIT_TIMEOUT_ENV = "METAOPT_INIT_TIMEOUT_S"
DEFAULT_HEARTBEAT_TIMEOUT_S = 60
DEFAULT_INIT_TIMEOUT_S = 300
# Exit status of a process that stops because its job cannot go on (a process died).
JOB_ABORTED_EXIT = 3

_initialized = False
_finished = threading.Event()


def _positive_int(environ, name: str, default: int | None = None, minimum: int = 1) -> int | None:
    text = environ.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name}: expected an int, got {text!r}") from None
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return value


def distributed_settings(environ=None) -> dict | None:
    """The arguments for ``jax.distributed.initialize`` that the environment asks for.

    Returns:
      None for a single-process run (none of the variables set); otherwise a dict of keyword
      arguments (empty coordinator fields when a detected cluster supplies them).

    Raises:
      ValueError: naming the variable, when the ``JAX_*`` variables are incomplete or malformed.
    """
    environ = os.environ if environ is None else environ
    timeouts = {
        "heartbeat_timeout_seconds": _positive_int(environ, HEARTBEAT_TIMEOUT_ENV, DEFAULT_HEARTBEAT_TIMEOUT_S),
        "initialization_timeout": _positive_int(environ, INIT_TIMEOUT_ENV, DEFAULT_INIT_TIMEOUT_S),
    }
    if any(environ.get(name) for name in _DISTRIBUTED_ENV):
        missing = [name for name in _DISTRIBUTED_ENV if not environ.get(name)]
        if missing:
            raise ValueError(f"{missing[0]}: must be set together with "
                             f"{', '.join(n for n in _DISTRIBUTED_ENV if n != missing[0])}")
        num_processes = _positive_int(environ, "JAX_NUM_PROCESSES")
        process_id = _positive_int(environ, "JAX_PROCESS_ID", minimum=0)
        if process_id >= num_processes:
            raise ValueError(f"JAX_PROCESS_ID: expected 0..{num_processes - 1} "
                             f"(JAX_NUM_PROCESSES is {num_processes}), got {process_id}")
        return dict(coordinator_address=environ["JAX_COORDINATOR_ADDRESS"], num_processes=num_processes,
                    process_id=process_id, **timeouts)
    for name in _CLUSTER_SIZE_ENV:
        size = environ.get(name, "")
        if size.isdigit() and int(size) > 1:
            return timeouts
    return None


def wants_distributed(environ=None) -> bool:
    """Whether the environment asks for a multi-process run."""
    return distributed_settings(environ) is not None


def maybe_initialize_distributed() -> bool:
    """Joins the multi-process job the environment describes, once; does nothing otherwise.

    Must run before any other JAX call touches the devices. After it, a watchdog thread ends this
    process (see ``watch_peers``) when another process of the job stops.

    Returns:
      True when this process is part of a multi-process run.

    Raises:
      ValueError: one line, when the environment is malformed or the job cannot be joined.
    """
    global _initialized
    if _initialized:
        return True
    settings = distributed_settings()
    if settings is None:
        return False
    # The job's own watchdog (``watch_peers``) and failed collectives report a lost process in one
    # line; without this the coordination service would end the survivors itself, with a log dump.
    jax.config.update("jax_enable_recoverability", True)
    try:
        jax.distributed.initialize(**settings)
    except (RuntimeError, ValueError) as e:
        text = str(e).strip().splitlines()
        raise ValueError(f"cannot join the multi-process job: {text[0] if text else type(e).__name__}") from None
    _initialized = True
    watch_peers()
    return True


def is_distributed() -> bool:
    """Whether this process is one of several of a job."""
    return jax.process_count() > 1


def abort_job(reason: str) -> None:
    """Ends this process at once (status 3) with one line on stderr: the job cannot go on.

    ``os._exit`` skips JAX's exit handler, whose shutdown barrier would wait for the lost process.
    """
    print(f"error: process {jax.process_index()} of {jax.process_count()}: {reason}; stopping "
          "(run the same command again to resume from the last checkpoint)", file=sys.stderr, flush=True)
    os._exit(JOB_ABORTED_EXIT)


def watch_peers(interval_s: float = 1.0) -> None:
    """Starts a daemon thread that ends this process (``abort_job``) when another process of the job dies.

    It asks the coordination service which processes are alive; the service declares a process
    dead after ``METAOPT_HEARTBEAT_TIMEOUT_S`` without a heartbeat, and a lost coordinator makes
    the question itself fail.
    """
    from jax._src import distributed as jax_distributed

    client = jax_distributed.global_state.client
    if client is None or not hasattr(client, "get_live_nodes"):
        return
    everyone = list(range(jax.process_count()))

    def loop():
        while not _finished.wait(interval_s):
            try:
                alive = client.get_live_nodes(everyone)
            except Exception as e:  # noqa: BLE001 (the coordinator itself is gone)
                if _finished.is_set():
                    return
                text = str(e).strip().splitlines()
                abort_job(f"lost the job's coordinator ({text[0] if text else type(e).__name__})")
                return
            missing = sorted(set(everyone) - set(alive))
            if missing and not _finished.is_set():
                abort_job(f"process {missing[0]} of the job stopped sending heartbeats")
                return

    threading.Thread(target=loop, name="metaopt-watch-peers", daemon=True).start()


def barrier(name: str) -> None:
    """Waits until every process of the job reaches the barrier ``name`` (nothing in a single process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"metaopt:{name}")


def finish(timeout_s: float = 60.0) -> None:
    """Leaves a multi-process job together with the others; does nothing in a single process.

    After a barrier the watchdog stops (a peer leaving a moment earlier is not a lost one), every
    process but 0 disconnects, and process 0, which hosts the coordination service, waits until
    it is alone (at most ``timeout_s``) before it shuts the service down: a process still
    disconnecting from a service that is gone would otherwise end with an error.
    """
    if not _initialized:
        return
    from jax._src import distributed as jax_distributed

    barrier("finish")
    _finished.set()
    client = jax_distributed.global_state.client
    if jax.process_index() == 0 and client is not None and hasattr(client, "get_live_nodes"):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if set(client.get_live_nodes(list(range(jax.process_count())))) <= {0}:
                    break
            except Exception:  # noqa: BLE001 (nothing left to wait for)
                break
            time.sleep(0.05)
    jax.distributed.shutdown()


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh with axis ``"pop"`` over the first ``num_devices`` of ``jax.devices()`` (all if None).

    In a multi-process job ``jax.devices()`` lists the devices of every process, and the mesh must
    hold them all (a process without a device in the mesh would have no part in the computation).

    Raises:
      ValueError: when more devices are asked for than there are.
    """
    devices = jax.devices()
    if num_devices is None:
        num_devices = len(devices)
    if num_devices < 1 or num_devices > len(devices):
        raise ValueError(f"devices: expected 1..{len(devices)} (the devices available), got {num_devices}")
    if jax.process_count() > 1 and num_devices != len(devices):
        raise ValueError(f"devices: a job of {jax.process_count()} processes uses all {len(devices)} "
                         f"devices of its processes, got {num_devices} (leave devices unset)")
    return Mesh(np.asarray(devices[:num_devices]), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding that places a whole array on every device of ``mesh``."""
    return NamedSharding(mesh, PartitionSpec())


def population_sharded(mesh: Mesh) -> NamedSharding:
    """The sharding that splits an array's leading (population) axis over ``mesh``."""
    return NamedSharding(mesh, PartitionSpec(AXIS))


def place_on_mesh(tree, mesh: Mesh):
    """Replicates over ``mesh`` every leaf not already laid out on it.

    A meta-trainer's ``init`` may leave some leaves (theta, the outer optimizer state) on a single
    device while its jitted step returns them replicated over the mesh; giving the first step the
    layout the step itself returns keeps the compiled step's signature stable (one compilation).
    """
    target = replicated(mesh)

    def place(x):
        sharding = getattr(x, "sharding", None)
        if isinstance(sharding, NamedSharding) and sharding.mesh == mesh:
            return x
        return jax.device_put(x, target)

    return jax.tree.map(place, tree)


def is_main_process() -> bool:
    """Whether this process writes the run folder (process 0 of a multi-host run)."""
    return jax.process_index() == 0
