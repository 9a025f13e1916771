"""Device setup for meta-training: multi-host initialisation and the 1-D population mesh.

The population axis of an estimator (tasks x perturbations) is sharded over the devices of a 1-D
``jax.sharding.Mesh`` with axis name ``"pop"``; theta and the outer optimizer state are replicated.
The same config runs on one CPU, on several forced host devices, on GPUs, and across hosts.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from metaopt.meta.truncation import POP_AXIS

__all__ = [
    "AXIS", "wants_distributed", "maybe_initialize_distributed", "make_mesh", "replicated",
    "population_sharded", "place_on_mesh", "is_main_process",
]

# The estimators' population axis: the mesh must carry the name they shard over.
AXIS = POP_AXIS

# Any of these set means the launcher asks for a multi-process run.
_DISTRIBUTED_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")

_initialized = False


def wants_distributed(environ=None) -> bool:
    """Whether the environment asks for ``jax.distributed.initialize()`` (a multi-host launch)."""
    environ = os.environ if environ is None else environ
    return any(environ.get(name) for name in _DISTRIBUTED_ENV)


def maybe_initialize_distributed() -> bool:
    """Calls ``jax.distributed.initialize()`` once when the environment asks for it.

    ``jax.distributed.initialize`` reads JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
    JAX_PROCESS_ID itself (and cluster schedulers such as SLURM); it must run before any other JAX
    call touches the devices.

    Returns:
      True when this process is part of a multi-process run.
    """
    global _initialized
    if _initialized or not wants_distributed():
        return _initialized
    jax.distributed.initialize()
    _initialized = True
    return True


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh with axis ``"pop"`` over the first ``num_devices`` of ``jax.devices()`` (all if None).

    Raises:
      ValueError: when more devices are asked for than there are.
    """
    devices = jax.devices()
    if num_devices is None:
        num_devices = len(devices)
    if num_devices < 1 or num_devices > len(devices):
        raise ValueError(f"devices: expected 1..{len(devices)} (the devices available), got {num_devices}")
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
