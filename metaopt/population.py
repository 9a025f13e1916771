"""How a population of inner runs is laid out and mapped: the mesh axis, sharding constraints, and
the execution choices of ``map_population``.

A population (PES perturbation pairs, ES members, evaluation runs) is a leading axis of every
leaf. With a 1-D ``jax.sharding.Mesh`` on axis ``POP_AXIS`` it is split over the devices, and
theta and the outer state are replicated. Within a device the members are vmapped together or run
one group after another in a ``lax.map``, as ``Execution`` says; the result is the same either way
up to the order of floating-point operations.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

__all__ = ["POP_AXIS", "MEMBER_MAPS", "Execution", "tree_where", "shard_population", "replicate",
           "map_population"]

PyTree = Any

POP_AXIS = "pop"
MEMBER_MAPS = ("auto", "loop", "vmap")


@dataclasses.dataclass(frozen=True)
class Execution:
    """How the members of a population run on each device.

    Attributes:
      member_map: "loop" (groups of ``member_batch`` members one after another in a ``lax.map``),
        "vmap" (every member of the device at once) or "auto": "loop" on CPU, where vmapping a whole
        population turns each member's small matmuls into one batched matmul whose intermediates
        overflow the caches, and "vmap" on accelerators (figures: docs/PERFORMANCE.md, "the
        feature pass and the matrix pass").
      member_batch: members vmapped together within one group of a "loop" (1: one at a time,
        fastest on CPU with the learned optimizer's batched feature pass).
    """

    member_map: str = "auto"
    member_batch: int = 1

    def __post_init__(self):
        from metaopt import validation as v

        v.check_choice(self.member_map, "member_map", MEMBER_MAPS)
        v.check_int(self.member_batch, "member_batch", 1)

    def resolved(self, backend: Optional[str] = None) -> "Execution":
        """This execution with "auto" replaced by the choice for ``backend`` (default: jax's)."""
        if self.member_map != "auto":
            return self
        backend = jax.default_backend() if backend is None else backend
        return dataclasses.replace(self, member_map="loop" if backend == "cpu" else "vmap")


def tree_where(condition: jax.Array, on_true: PyTree, on_false: PyTree) -> PyTree:
    """Leafwise ``jnp.where`` with a scalar condition (or one per leading index, broadcast)."""

    def pick(a, b):
        c = jnp.reshape(condition, jnp.shape(condition) + (1,) * (jnp.ndim(a) - jnp.ndim(condition)))
        return jnp.where(c, a, b)

    return jax.tree.map(pick, on_true, on_false)


def shard_population(tree: PyTree, mesh) -> PyTree:
    """Constrains the leading (population) axis of every leaf to be split over the mesh's "pop" axis."""
    if mesh is None:
        return tree
    sharding = NamedSharding(mesh, PartitionSpec(POP_AXIS))
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, sharding) if jnp.ndim(x) else x, tree)


def replicate(tree: PyTree, mesh) -> PyTree:
    """Constrains every leaf to be replicated over the mesh."""
    if mesh is None:
        return tree
    sharding = NamedSharding(mesh, PartitionSpec())
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, sharding), tree)


def map_population(fn: Callable[..., Any], *args: PyTree, mesh=None,
                   execution: Execution = Execution()) -> Any:
    """``fn`` applied to every member: the leading axis of every leaf of ``args``.

    The result equals ``jax.vmap(fn)(*args)``. With ``execution.member_map`` "loop" the members of
    each device run in groups of ``execution.member_batch`` (vmapped within a group) inside one
    ``lax.map``; with a mesh the population is split over the devices first and each device loops
    over its own members. A population that does not split evenly over the devices is vmapped.

    Args:
      fn: the per-member function.
      *args: pytrees with a leading member axis.
      mesh: optional 1-D mesh (axis "pop") the members are sharded over.
      execution: how the members run (see ``Execution``).
    """
    leaves = jax.tree.leaves(args)
    num = leaves[0].shape[0] if leaves else 0
    devices = 1 if mesh is None else mesh.size
    if execution.resolved().member_map == "vmap" or num == 0 or num % devices:
        return jax.vmap(fn)(*args)

    def loop(member_args):
        batch = execution.member_batch
        size = None if batch <= 1 else min(batch, num // devices)
        return jax.lax.map(lambda a: fn(*a), member_args, batch_size=size)

    if devices == 1:
        return loop(args)
    split = jax.tree.map(lambda x: x.reshape((devices, num // devices) + x.shape[1:]), args)
    out = jax.vmap(loop)(shard_population(split, mesh))
    return jax.tree.map(lambda x: x.reshape((num,) + x.shape[2:]), shard_population(out, mesh))
