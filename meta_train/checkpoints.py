"""Training checkpoints of a run folder: save every N outer steps, keep the last few, resume.

A checkpoint is the whole ``MetaState`` (theta, outer optimizer state, estimator states such as PES
accumulators and inner states, the outer step) written with ``metaopt.checkpoint.save_tree``, which is
atomic and checksummed. The randomness of outer step t is ``fold_in(step_key, t)`` with ``step_key``
derived from the config's seed, so the state and the step are all a resumed run needs.

Layout: ``RUN_DIR/checkpoints/step_00000050/`` and so on; on resume the newest checkpoint that loads and
verifies is used, and one that fails verification (a save killed half-way, a corrupted file) is skipped.
Every checkpoint records the config that made it (the part that decides the computation, seed
included); one made by another config is never resumed from (``foreign_checkpoints`` lets the
program refuse such a folder before it writes anything).

In a job of several processes every process takes part in a save: orbax writes each array's shards
from the process that holds them (one copy of a replicated array), process 0 then adds the manifest
and renames the folder into place. The folder is the same format as a single process writes, whole
arrays by key path, so a job with any number of processes restores it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any, Callable, Optional

import jax
import numpy as np

__all__ = [
    "CHECKPOINTS", "checkpoint_root", "step_path", "list_checkpoints", "remove_partial_saves",
    "to_savable", "from_savable", "place_like", "as_json", "foreign_checkpoints", "save",
    "restore_latest",
]

CHECKPOINTS = "checkpoints"
_NAME = re.compile(r"^step_(\d{8,})$")


def checkpoint_root(run_dir: str) -> str:
    return os.path.join(run_dir, CHECKPOINTS)


def step_path(run_dir: str, step: int) -> str:
    return os.path.join(checkpoint_root(run_dir), f"step_{step:08d}")


def list_checkpoints(run_dir: str) -> list[tuple[int, str]]:
    """(step, path) of every checkpoint folder of ``run_dir``, newest first."""
    root = checkpoint_root(run_dir)
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        match = _NAME.match(name)
        if match and os.path.isdir(os.path.join(root, name)):
            found.append((int(match.group(1)), os.path.join(root, name)))
    return sorted(found, reverse=True)


def remove_partial_saves(run_dir: str) -> None:
    """Deletes the temporary folders a save killed half-way leaves beside checkpoints and theta."""
    for root in (checkpoint_root(run_dir), run_dir):
        if not os.path.isdir(root):
            continue
        for name in os.listdir(root):
            if name.startswith(".") and (".tmp-" in name or ".old-" in name):
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def to_savable(tree: Any) -> Any:
    """Replaces typed PRNG keys by their raw key data (plain integer arrays a checkpoint can hold)."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def from_savable(tree: Any, template: Any) -> Any:
    """Inverse of ``to_savable``: rewraps key data where ``template`` holds typed keys."""
    def restore(saved, like):
        if _is_key(like):
            return jax.random.wrap_key_data(np.asarray(saved), impl=jax.random.key_impl(like))
        return saved

    return jax.tree.map(restore, tree, template)


def place_like(tree: Any, template: Any) -> Any:
    """Puts every leaf of ``tree`` on the devices and with the sharding of ``template``'s leaf.

    In a multi-process job every process holds the whole of each leaf and builds its own shards
    of the global array from it (``jax.make_array_from_callback``).
    """
    if jax.process_count() > 1:
        return jax.tree.map(_place_global, tree, template)

    def put(x, like):
        sharding = getattr(like, "sharding", None)
        x = jax.numpy.asarray(x, dtype=like.dtype) if not _is_key(like) else x
        return jax.device_put(x, sharding) if sharding is not None else x

    return jax.tree.map(put, tree, template)


def _place_global(x: Any, like: Any) -> jax.Array:
    """One leaf as a global array laid out like ``like``, from this process's whole copy ``x``."""
    if _is_key(like):
        data = np.asarray(jax.random.key_data(x))
        sharding = jax.random.key_data(like).sharding
        placed = jax.make_array_from_callback(data.shape, sharding, lambda index: data[index])
        return jax.random.wrap_key_data(placed, impl=jax.random.key_impl(like))
    host = np.asarray(x, dtype=like.dtype)
    return jax.make_array_from_callback(host.shape, like.sharding, lambda index: host[index])


def as_json(value: Any) -> Any:
    """``value`` as it reads back from a checkpoint's JSON metadata (tuples become lists)."""
    return json.loads(json.dumps(value))


def _config_difference(metadata: Any, expected: dict, step: int) -> Optional[str]:
    """Why the checkpoint of outer step ``step`` is not a state of the run ``expected`` describes
    (an earlier length of the same run is one: see ``config.run_difference``); None when it is."""
    from metaopt.meta_train.config import run_difference

    recorded = metadata.get("config") if isinstance(metadata, dict) else None
    if not isinstance(recorded, dict):
        return "it records no config"
    try:
        return run_difference(recorded, as_json(expected), step)
    except (KeyError, TypeError, ValueError):
        return "its config cannot be read"


def foreign_checkpoints(run_dir: str, expected_config: dict) -> list[tuple[int, str]]:
    """(step, first difference) of every checkpoint whose manifest verifies and records another config.

    Reads manifests only. A checkpoint whose manifest does not verify is not listed here (resume skips
    it with a warning).
    """
    from metaopt.checkpoint import CheckpointError, load_metadata

    out = []
    for step, path in list_checkpoints(run_dir):
        try:
            metadata = load_metadata(path)
        except (CheckpointError, ValueError):
            continue
        diff = _config_difference(metadata, expected_config, step)
        if diff is not None:
            out.append((step, diff))
    return out


def save(run_dir: str, step: int, state: Any, metadata: dict, keep: int = 2,
         before_commit: Optional[Callable[[], None]] = None) -> str:
    """Writes the checkpoint of outer step ``step`` and deletes all but the newest ``keep``.

    ``before_commit`` is passed to ``metaopt.checkpoint.save_tree`` (in a multi-process job, called
    on process 0). In a multi-process job every process must call ``save`` (a collective); only
    process 0 touches the folder outside orbax's own writes.
    """
    from metaopt.checkpoint import save_tree

    path = step_path(run_dir, step)
    metadata = dict(metadata, outer_step=int(step))
    if jax.process_count() > 1:
        _save_collective(path, to_savable(state), metadata, before_commit)
    else:
        os.makedirs(checkpoint_root(run_dir), exist_ok=True)
        save_tree(path, to_savable(state), metadata, overwrite=True, before_commit=before_commit)
    if jax.process_index() == 0:
        for _, old in list_checkpoints(run_dir)[keep:]:
            shutil.rmtree(old, ignore_errors=True)
    return path


def _save_collective(path: str, tree: Any, metadata: dict,
                     before_commit: Optional[Callable[[], None]] = None) -> None:
    """``metaopt.checkpoint.save_tree``'s format, written by every process of the job together.

    All processes agree on one temporary folder (named by process 0), orbax's multi-process save
    writes the arrays into it (each shard once, by a process that holds it), and process 0 writes
    the manifest (structure, shapes, dtypes, checksums of every file, its own digest) and renames
    the folder into place; the last barrier returns once the checkpoint is complete.
    """
    import orbax.checkpoint as ocp
    from jax.experimental import multihost_utils

    from metaopt import checkpoint as ckpt

    token = multihost_utils.broadcast_one_to_all(np.frombuffer(uuid.uuid4().bytes, np.uint32))
    final = Path(path).absolute()
    tmp = final.parent / f".{final.name}.tmp-{''.join(f'{int(x):08x}' for x in np.asarray(token))}"
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    records, arrays = [], {}
    for i, (key_path, leaf) in enumerate(leaves):
        name = f"leaf_{i:06d}"
        records.append({"path": jax.tree_util.keystr(key_path), "kind": "array", "shape": list(leaf.shape),
                        "dtype": str(leaf.dtype), "name": name})
        arrays[name] = leaf
    if jax.process_index() == 0:
        tmp.mkdir(parents=True)
    multihost_utils.sync_global_devices(f"metaopt:checkpoint:{final.name}:{tmp.name}:start")
    ocp.PyTreeCheckpointer().save(tmp / ckpt.ARRAYS, arrays)
    if jax.process_index() == 0:
        manifest = {
            "format": ckpt.FORMAT,
            "format_version": ckpt.FORMAT_VERSION,
            "metadata": ckpt._to_json(metadata, "metadata"),
            "structure": ckpt._encode(tree, [0]),
            "leaves": records,
            "files": ckpt._checksums(tmp),
        }
        manifest[ckpt.MANIFEST_DIGEST] = ckpt.manifest_digest(manifest)
        partial = tmp / (ckpt.MANIFEST + ".partial")
        with open(partial, "w") as f:
            json.dump(manifest, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, tmp / ckpt.MANIFEST)
        if before_commit is not None:
            before_commit()
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    multihost_utils.sync_global_devices(f"metaopt:checkpoint:{final.name}:{tmp.name}:done")


def restore_latest(run_dir: str, template: Any, expected_config: Optional[dict] = None
                   ) -> tuple[int, Any] | None:
    """The newest checkpoint of ``run_dir`` that verifies, as (step, state), or None.

    Args:
      run_dir: the run folder.
      template: a state with the structure, shapes, dtypes and shardings the checkpoint must have
        (a fresh ``trainer.init``); the restored state is placed like it.
      expected_config: when given, a checkpoint must record this config (``semantic`` of the run's
        resolved config) to be used.
    """
    from metaopt.checkpoint import load_tree

    savable_template = to_savable(template)
    for step, path in list_checkpoints(run_dir):
        try:
            tree, metadata = load_tree(path, savable_template)
            if int(metadata.get("outer_step", -1)) != step:
                raise ValueError(f"records outer step {metadata.get('outer_step')}")
            if expected_config is not None:
                diff = _config_difference(metadata, expected_config, step)
                if diff is not None:
                    raise ValueError(f"made by a different config ({diff})")
            exp_def, got_def = jax.tree.structure(savable_template), jax.tree.structure(tree)
            if exp_def != got_def:
                raise ValueError("state structure differs from this config's")
            for want, got in zip(jax.tree.leaves(savable_template), jax.tree.leaves(tree)):
                if tuple(np.shape(want)) != tuple(np.shape(got)):
                    raise ValueError(f"array of shape {np.shape(got)} where {np.shape(want)} is expected")
        except Exception as e:  # noqa: BLE001 (any failure means: not a usable checkpoint)
            print(f"warning: skipping checkpoint {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                  file=sys.stderr)
            continue
        return step, place_like(from_savable(tree, template), template)
    return None
