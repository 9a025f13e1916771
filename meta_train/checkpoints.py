"""Training checkpoints of a run folder, kept by orbax's ``CheckpointManager``.

A checkpoint is the whole ``MetaState`` (theta, outer optimizer state, estimator states such as PES
accumulators and inner states, the outer step) plus a record ``{"outer_step", "config"}`` naming
the config that made it (the part that decides the computation, seed included). The randomness of
outer step t is ``fold_in(step_key, t)`` with ``step_key`` derived from the config's seed, so the
state and the step are all a resumed run needs.

Layout: ``RUN_DIR/checkpoints/step_00000050/`` with the items ``state/`` (orbax arrays, written by
every process of a job, each shard once) and ``record/`` (JSON), and ``checksums.json``: the sha256
of every file of the items and the digest of its own content, written by process 0 in the temporary
folder just before orbax renames it into place. orbax keeps the newest ``keep`` steps, commits
atomically and restores into the shardings of a template at any process count. On resume the newest
step whose checksums, record and shapes verify is used; one that fails (a save killed half-way, a
changed byte) is skipped with a warning. Step folders of format 1 and 2 (``manifest.json`` and
``arrays/``, written before) are read too.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint._src.path import atomicity, step as step_lib

from metaopt import checkpoint as ckpt

__all__ = ["CHECKPOINTS", "checkpoint_root", "list_checkpoints", "as_json",
           "foreign_checkpoints", "RunCheckpoints", "load_state"]

CHECKPOINTS = "checkpoints"
_ITEMS = ("state", "record")
_NAMES = step_lib.standard_name_format(step_prefix="step", step_format_fixed_length=8)


def checkpoint_root(run_dir: str) -> Path:
    return Path(run_dir).absolute() / CHECKPOINTS


def list_checkpoints(run_dir: str) -> list[tuple[int, Path]]:
    """(step, path) of every committed checkpoint of ``run_dir``, newest first."""
    return sorted(((m.step, Path(m.path)) for m in _NAMES.find_all(checkpoint_root(run_dir))), reverse=True)


def as_json(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(value))


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _savable(tree: Any) -> Any:
    """Typed PRNG keys replaced by their raw key data."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _rewrapped(tree: Any, template: Any) -> Any:
    def restore(saved, like):
        return jax.random.wrap_key_data(saved, impl=jax.random.key_impl(like)) if _is_key(like) else saved

    return jax.tree.map(restore, tree, template)


class _ChecksummedCommit(atomicity.AtomicRenameTemporaryPath):
    """orbax's atomic rename, preceded by writing ``checksums.json`` of the items' files and a call
    of ``before_commit`` (process 0, once the whole checkpoint is in its temporary folder)."""

    before_commit: Optional[Callable[[], None]] = None

    async def finalize(self):
        if Path(self.get_final()).name not in _ITEMS:  # the step's folder, not an item's inside it
            ckpt.write_checksums(Path(self.get()), _ITEMS)
            if type(self).before_commit is not None:
                type(self).before_commit()
        await super().finalize()


def _record(path: Path) -> Any:
    """The record ``{"outer_step", "config"}`` of a step folder, once every file verifies."""
    return ckpt.open_checkpoint(path)[1]


def _config_difference(record: Any, expected: dict, step: int) -> Optional[str]:
    """Why the checkpoint of outer step ``step`` is not a state of the run ``expected`` describes
    (an earlier length of the same run is one: see ``config.run_difference``); None when it is."""
    from metaopt.meta_train.config import run_difference

    recorded = record.get("config") if isinstance(record, dict) else None
    if not isinstance(recorded, dict):
        return "it records no config"
    try:
        return run_difference(recorded, as_json(expected), step)
    except (KeyError, TypeError, ValueError):
        return "its config cannot be read"


def foreign_checkpoints(run_dir: str, expected_config: dict) -> list[tuple[int, str]]:
    """(step, first difference) of every verified checkpoint that records another config.

    Reads records only, writes nothing; a checkpoint that does not verify is not listed (resume
    skips it with a warning).
    """
    out = []
    for step, path in list_checkpoints(run_dir):
        try:
            diff = _config_difference(_record(path), expected_config, step)
        except Exception:  # noqa: BLE001 (unreadable: resume skips it)
            continue
        if diff is not None:
            out.append((step, diff))
    return out


class RunCheckpoints:
    """The checkpoints of one run folder.

    Args:
      run_dir: the run folder.
      keep: how many of the newest checkpoints to keep.
      writable: create the folder and allow ``save`` (every process of a job constructs it).
    """

    def __init__(self, run_dir: str, *, keep: int = 2, writable: bool = False):
        self.root = checkpoint_root(run_dir)
        self._commit = type("_Commit", (_ChecksummedCommit,), {})
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, step_prefix="step", step_format_fixed_length=8, create=writable,
            read_only=not writable, cleanup_tmp_directories=writable, save_root_metadata=False,
            enable_async_checkpointing=False, temporary_path_class=self._commit)
        self._manager = ocp.CheckpointManager(self.root, options=options, item_names=_ITEMS)

    def close(self) -> None:
        self._manager.close()

    def save(self, step: int, state: Any, record: dict,
             before_commit: Optional[Callable[[], None]] = None) -> None:
        """Writes the checkpoint of outer step ``step`` (a collective in a job of several processes);
        steps from ``step`` on (left by a run resumed from an earlier one) are replaced."""
        for old in self._manager.all_steps():
            if old >= step:
                self._manager.delete(old)
        self._commit.before_commit = before_commit
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(_savable(state)),
            record=ocp.args.JsonSave(as_json(dict(record, outer_step=int(step))))), force=True)
        self._manager.wait_until_finished()

    def restore_latest(self, template: Any, expected_config: Optional[dict] = None
                       ) -> tuple[int, Any] | None:
        """The newest checkpoint that verifies, as (step, state), or None.

        Args:
          template: a state with the structure, shapes, dtypes and shardings the checkpoint must have
            (a fresh ``trainer.init``); the restored state is laid out like it.
          expected_config: when given, a checkpoint must record this config (``semantic`` of the
            run's resolved config) to be used.
        """
        savable = _savable(template)
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), savable)
        for step, path in list_checkpoints(str(self.root.parent)):
            try:
                if (path / ckpt.MANIFEST).is_file():  # formats 1 and 2, read whole by this process
                    tree, record = ckpt.load_tree(path, abstract)
                    tree = jax.tree.map(lambda x, t: jax.make_array_from_callback(
                        t.shape, t.sharding, lambda index, x=x: np.asarray(x)[index]), tree, abstract)
                else:
                    ckpt.verify(path)
                    restored = self._manager.restore(step, args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract), record=ocp.args.JsonRestore()))
                    tree, record = restored.state, restored.record
                if int(record.get("outer_step", -1)) != step:
                    raise ValueError(f"records outer step {record.get('outer_step')}")
                diff = None if expected_config is None else _config_difference(record, expected_config, step)
                if diff is not None:
                    raise ValueError(f"made by a different config ({diff})")
                if jax.tree.structure(tree) != jax.tree.structure(savable):
                    raise ValueError("state structure differs from this config's")
                for want, got in zip(jax.tree.leaves(savable), jax.tree.leaves(tree)):
                    if tuple(np.shape(want)) != tuple(np.shape(got)):
                        raise ValueError(f"array of shape {np.shape(got)} where {np.shape(want)} is expected")
            except Exception as e:  # noqa: BLE001 (any failure means: not a usable checkpoint)
                text = str(e).strip().splitlines()
                print(f"warning: skipping checkpoint {path}: {type(e).__name__}: {text[0] if text else ''}",
                      file=sys.stderr)
                continue
            return step, _rewrapped(tree, template)
        return None


def load_state(path: Any) -> tuple[Any, dict]:
    """The state (raw key data for PRNG keys) and record of one checkpoint folder, without a template."""
    path = Path(path)
    if (path / ckpt.MANIFEST).is_file():
        return ckpt.load_tree(path)
    record = _record(path)
    with ocp.StandardCheckpointer() as reader:
        return reader.restore(path / "state"), record
