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
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
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
    """Puts every leaf of ``tree`` on the devices and with the sharding of ``template``'s leaf."""
    def put(x, like):
        sharding = getattr(like, "sharding", None)
        x = jax.numpy.asarray(x, dtype=like.dtype) if not _is_key(like) else x
        return jax.device_put(x, sharding) if sharding is not None else x

    return jax.tree.map(put, tree, template)


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

    ``before_commit`` is passed to ``metaopt.checkpoint.save_tree``.
    """
    from metaopt.checkpoint import save_tree

    path = step_path(run_dir, step)
    os.makedirs(checkpoint_root(run_dir), exist_ok=True)
    save_tree(path, to_savable(state), dict(metadata, outer_step=int(step)), overwrite=True,
              before_commit=before_commit)
    for _, old in list_checkpoints(run_dir)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    return path


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
