"""Checkpoints: pytrees and learned optimizers written by orbax, verified on load, never unpickled.

A checkpoint is a directory: ``tree/`` (the pytree in orbax's PyTree format, whose metadata keeps
dicts, lists, tuples, named tuples, None, empty nodes, strings, Python scalars and typed PRNG keys),
``record/metadata`` (the caller's metadata, JSON) and ``checksums.json`` (the sha256 of every other
file and of its own content). orbax's ``Checkpointer`` writes it into a hidden sibling of its path;
``checksums.json`` is added and the folder renamed into place, replacing an older checkpoint only
then, so a crash mid-save leaves the previous checkpoint or none. Loading checks the checksums
file's own digest, then every file's: a changed bit anywhere is refused before anything is read.
Without a template the tree is rebuilt from orbax's metadata (named tuples as
``collections.namedtuple`` of the same fields, other custom nodes as dicts); a template must match in
key paths, shapes, dtypes and empty nodes, and gives the tree its pytree types. Formats 1 and 2
(``manifest.json`` with metadata, structure and checksums, format 2 with its own digest, and
``arrays/``) still load.

A learned optimizer checkpoint (``save`` / ``load``) records its ``kind`` and ``config()``, so ``load``
rebuilds it through the registry. ``load`` and ``load_metadata`` also take a folder holding one
checkpoint among its subfolders (a meta-training run folder's ``theta/``) or a shipped name.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from metaopt import learned_optimizer as _lo

__all__ = [
    "CHECKSUMS", "DIGEST", "MANIFEST", "LEARNED_OPTIMIZER", "CheckpointError", "digest",
    "file_checksums", "write_checksums", "parse_checksums", "parse_manifest", "verify", "is_checkpoint",
    "open_checkpoint",
    "save_tree", "load_tree", "shipped_path", "resolve_path", "save", "load", "load_metadata", "load_kind",
]

PyTree = Any

CHECKSUMS = "checksums.json"
DIGEST = "manifest_sha256"
MANIFEST = "manifest.json"
LEARNED_OPTIMIZER = "learned_optimizer"
_LEAF_TYPES = (jax.Array, np.ndarray, np.generic, bool, int, float, str)


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, corrupt, or does not match what it is loaded into."""


def _to_json(value: Any, name: str) -> Any:
    """``value`` as plain JSON data (numpy scalars and arrays, paths, sets and tuples converted)."""
    def default(x):
        if isinstance(x, (np.generic, np.ndarray, jax.Array)):
            return np.asarray(x).tolist()
        if isinstance(x, (set, frozenset, Path)):
            return sorted(x) if not isinstance(x, Path) else str(x)
        raise TypeError(f"{type(x).__name__} is not JSON-serialisable")

    try:
        return json.loads(json.dumps(value, default=default))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}: not JSON-serialisable ({err})") from None


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def digest(record: dict) -> str:
    """SHA-256 of a record's canonical JSON (sorted keys, no spaces) without its ``DIGEST`` field."""
    body = {k: v for k, v in record.items() if k != DIGEST}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def file_checksums(root: Path) -> dict[str, str]:
    """The sha256 of every file under ``root`` but its ``checksums.json``, by relative POSIX path."""
    root = Path(root)
    return {p.relative_to(root).as_posix(): _sha256(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p != root / CHECKSUMS}


def write_checksums(folder: Path, items: Optional[tuple] = None) -> None:
    """Writes ``folder/checksums.json`` over its files (those of the subfolders ``items`` when given)."""
    files = (file_checksums(folder) if items is None else
             {f"{i}/{rel}": d for i in items for rel, d in file_checksums(Path(folder) / i).items()})
    record = {"files": files}
    (Path(folder) / CHECKSUMS).write_text(json.dumps({**record, DIGEST: digest(record)}))


def _read(path: Path, name: str) -> bytes:
    if not path.exists():
        raise CheckpointError(f"path: no checkpoint at {path} (it does not exist)")
    try:
        return (path / name).read_bytes()
    except OSError:
        raise CheckpointError(f"path: {path} has no readable {name} (not a checkpoint, or an incomplete "
                              "save)") from None


def _parse(data: bytes, where: Any) -> Any:
    try:
        return json.loads(data)
    except ValueError as err:  # UnicodeDecodeError and JSONDecodeError included
        raise CheckpointError(f"{where}: corrupt or truncated ({err})") from None


def parse_checksums(data: bytes, where: Any = CHECKSUMS) -> dict:
    """The checksums record in ``data``; ``CheckpointError`` unless it matches its own digest."""
    record = _parse(data, where)
    if not isinstance(record, dict) or not isinstance(record.get("files"), dict) or record.get(DIGEST) != digest(record):
        raise CheckpointError(f"{where}: corrupt (its {DIGEST} does not match its content)")
    return record


def parse_manifest(data: bytes, where: Any = MANIFEST) -> dict:
    """A format 1 or 2 ``manifest.json``; ``CheckpointError`` unless well-formed and (format 2)
    matching its own digest."""
    manifest = _parse(data, where)
    keys = ("format", "format_version", "metadata", "structure", "leaves", "files")
    if (not isinstance(manifest, dict) or any(k not in manifest for k in keys)
            or manifest["format"] != "metaopt-checkpoint" or type(manifest["format_version"]) is not int
            or manifest["format_version"] not in (1, 2)
            or not isinstance(manifest["files"], dict) or not isinstance(manifest["leaves"], list)):
        raise CheckpointError(f"{where}: not a metaopt checkpoint manifest of format 1 or 2 (or a corrupt one)")
    if manifest["format_version"] == 2 and manifest.get(DIGEST) != digest(manifest):
        raise CheckpointError(f"{where}: corrupt manifest (its {DIGEST} does not match its content)")
    return manifest


def verify(path: Path) -> Optional[dict]:
    """Checks every file of the checkpoint at ``path`` against its recorded sha256; returns the
    manifest of a format 1 or 2 checkpoint, ``None`` for the current format."""
    path = Path(path)
    legacy = (path / MANIFEST).is_file()
    manifest = parse_manifest(_read(path, MANIFEST), path / MANIFEST) if legacy else None
    files = manifest["files"] if legacy else parse_checksums(_read(path, CHECKSUMS), path / CHECKSUMS)["files"]
    for rel, want in files.items():
        if not (path / rel).is_file():
            raise CheckpointError(f"{path}: file {rel} is missing")
        if _sha256(path / rel) != want:
            raise CheckpointError(f"{path}: file {rel} is corrupt or truncated (checksum mismatch)")
    return manifest


def is_checkpoint(path: Any) -> bool:
    """Whether ``path`` is a checkpoint folder of any format (verified only when loaded)."""
    return (Path(path) / CHECKSUMS).is_file() or (Path(path) / MANIFEST).is_file()


def _checkpointer(legacy: bool = False):
    """orbax's ``Checkpointer`` for a file operation of the calling process alone (in a job of
    several processes, process 0 writes a run's ``theta/``; orbax must not wait for the others)."""
    import orbax.checkpoint as ocp
    from orbax.checkpoint._src.metadata.pytree_metadata_options import PyTreeMetadataOptions

    me = jax.process_index()
    alone = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
    tree = ocp.PyTreeCheckpointHandler(multiprocessing_options=alone,
                                       pytree_metadata_options=PyTreeMetadataOptions(support_rich_types=True))
    if not legacy:
        tree = ocp.CompositeCheckpointHandler(composite_options=ocp.CompositeOptions(multiprocessing_options=alone),
                                              tree=tree, record=ocp.JsonCheckpointHandler(multiprocessing_options=alone))
    return ocp.Checkpointer(tree, multiprocessing_options=alone)


def save_tree(path: Any, tree: PyTree, metadata: Optional[dict] = None, *, overwrite: bool = False,
              before_commit: Optional[Callable[[], None]] = None) -> Path:
    """Saves ``tree`` (arrays, typed PRNG keys, Python scalars, strings) and a JSON-serialisable
    ``metadata`` dict as a checkpoint at ``path``. ``overwrite`` replaces an existing checkpoint once the
    new one is complete; ``before_commit`` is called just before the complete one is renamed into place.

    Raises:
      CheckpointError: ``path`` exists and ``overwrite`` is False, or the tree has no leaves or one
        that cannot be saved.
      ValueError: ``metadata`` is not a JSON-serialisable dict.
    """
    import orbax.checkpoint as ocp

    path = Path(path)
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise CheckpointError(f"path: {path} already exists; pass overwrite=True to replace it")
    metadata = _to_json({} if metadata is None else metadata, "metadata")
    if not isinstance(metadata, dict):
        raise ValueError(f"metadata: expected a dict, got {type(metadata).__name__}")
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    if not flat:
        raise CheckpointError("tree: no leaves to save")
    for key_path, leaf in flat:
        if not isinstance(leaf, _LEAF_TYPES):
            raise CheckpointError(f"tree{jax.tree_util.keystr(key_path)}: leaf of type {type(leaf).__name__} "
                                  "cannot be saved (expected arrays, Python scalars or strings)")
    tree = jax.tree.map(lambda x: np.asarray(x) if isinstance(x, np.generic) else x, tree)  # numpy scalars as arrays
    staged = path.absolute().parent / f".{path.name}.tmp-{uuid.uuid4().hex}"
    staged.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _checkpointer() as c:
            c.save(staged, args=ocp.args.Composite(tree=ocp.args.PyTreeSave(tree), record=ocp.args.JsonSave(metadata)))
        write_checksums(staged)
        if before_commit is not None:
            before_commit()
        old = staged.with_name(f".{path.name}.old-{uuid.uuid4().hex}")
        if path.exists() or path.is_symlink():
            os.replace(path, old)
        os.replace(staged, path)
        if old.is_symlink() or old.is_file():
            old.unlink()
        shutil.rmtree(old, ignore_errors=True)
    finally:
        for leftover in staged.parent.glob(f"{staged.name}*"):
            shutil.rmtree(leftover, ignore_errors=True)
    return path


def _decode(node: dict, leaves: list) -> Any:
    """The tree a format 1 or 2 manifest's ``structure`` describes, around ``leaves``."""
    kind = node["t"]
    if kind in ("none", "leaf"):
        return None if kind == "none" else leaves[node["i"]]
    children = [_decode(c, leaves) for c in node["c"]]
    if kind == "namedtuple":
        return collections.namedtuple(node["name"], node["fields"], rename=True)(*children)
    return tuple(children) if kind == "tuple" else children if kind == "list" else dict(zip(node["keys"], children))


def _legacy_tree(path: Path, manifest: dict) -> PyTree:
    """The tree of a format 1 or 2 checkpoint (orbax arrays named ``leaf_NNNNNN``)."""
    import orbax.checkpoint as ocp

    records = manifest["leaves"]
    args = {r["name"]: ocp.RestoreArgs(restore_type=np.ndarray) for r in records if "name" in r}
    arrays = _orbax(path, lambda c: c.restore((path / "arrays").absolute(), args=ocp.args.PyTreeRestore(
        restore_args=args)), legacy=True) if args else {}

    def leaf(r):
        if r["kind"] == "str":
            return r["value"]
        if r["name"] not in arrays:
            raise CheckpointError(f"{path}: array of {r['path'] or 'the root'} is missing")
        a = np.asarray(arrays[r["name"]])
        if r["kind"] == "key":
            return jax.random.wrap_key_data(jnp.asarray(a), impl=r["impl"])
        return _as_jax(a) if r["kind"] == "array" else {"bool": bool, "int": int, "float": float}[r["kind"]](a.item())

    return _decode(manifest["structure"], [leaf(r) for r in records])


def _orbax(path: Path, read: Callable, legacy: bool = False) -> Any:
    try:
        with _checkpointer(legacy) as c:
            return read(c)
    except Exception as err:  # orbax and tensorstore raise many types for unreadable data
        text = str(err).strip().splitlines()
        raise CheckpointError(f"{path}: cannot read the arrays ({type(err).__name__}: {text[0] if text else ''})") from None


def _as_jax(a: Any) -> Any:
    """A numpy array as a jax array, but a 64-bit one where jax runs in 32-bit mode (not narrowed)."""
    return jnp.asarray(a) if jax.dtypes.canonicalize_dtype(a.dtype) == a.dtype else a


def _tree(path: Path, manifest: Optional[dict]) -> PyTree:
    """The tree of a verified checkpoint: arrays as jax arrays on this process's first device,
    Python scalars and strings as saved."""
    import orbax.checkpoint as ocp

    if manifest is not None:
        return _legacy_tree(path, manifest)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def restore_arg(m):  # jax arrays (saved with a sharding, typed keys among them) onto the device
        if type(m) is not ocp.metadata.ArrayMetadata:
            return ocp.RestoreArgs()
        return ocp.RestoreArgs(restore_type=np.ndarray) if m.sharding is None else ocp.ArrayRestoreArgs(sharding=device)

    def read(c):
        args = jax.tree.map(restore_arg, c.metadata(path.absolute()).item_metadata["tree"].tree)
        return c.restore(path.absolute(), args=ocp.args.Composite(tree=ocp.args.PyTreeRestore(restore_args=args))).tree

    return jax.tree.map(lambda x: _as_jax(x) if isinstance(x, np.ndarray) else x, _orbax(path, read))


def _entries(tree: PyTree) -> dict:
    """Key names -> (key path, what is there) of every leaf, ``None`` and empty node of ``tree``."""
    def what(x):
        if x is None or isinstance(x, str):
            return "None" if x is None else "a string"
        x = np.asarray(x) if isinstance(x, (bool, int, float)) else x
        return f"{x.dtype}{list(x.shape)}" if hasattr(x, "dtype") else "an empty container"

    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: jax.tree.structure(x).num_nodes == 1)[0]
    return {_names(p): (jax.tree_util.keystr(p) or "the root", what(x)) for p, x in flat}


def _names(key_path: tuple) -> tuple:
    return tuple(str(next(getattr(k, a) for a in ("key", "idx", "name") if hasattr(k, a))) for k in key_path)


def _match(path: Path, tree: PyTree, template: PyTree) -> PyTree:
    """``tree`` in ``template``'s pytree types; ``CheckpointError`` naming the first key path whose
    presence, shape or dtype differs."""
    have, want = _entries(tree), _entries(template)
    for names, (where, what) in want.items():
        if names not in have:
            raise CheckpointError(f"{path}: the template has {where} ({what}), which the checkpoint lacks")
        if have[names][1] != what:
            raise CheckpointError(f"{path}: {where} is {have[names][1]} in the checkpoint but {what} in the template")
    for names, (where, what) in have.items():
        if names not in want:
            raise CheckpointError(f"{path}: the checkpoint has {where} ({what}), which the template lacks")
    leaves = {_names(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}
    flat, treedef = jax.tree_util.tree_flatten_with_path(template)
    return jax.tree.unflatten(treedef, [leaves[_names(p)] for p, _ in flat])


def open_checkpoint(path: Any) -> tuple[Optional[dict], Any]:
    """(the manifest of a format 1 or 2 checkpoint or None, the metadata) once ``path`` verifies;
    the metadata is read as a file (orbax's reads are collectives of every process of a job)."""
    path = Path(path)
    manifest = verify(path)
    if manifest is not None:
        return manifest, manifest["metadata"]
    return None, _parse((path / "record" / "metadata").read_bytes(), path / "record")


def load_tree(path: Any, template: PyTree = None) -> tuple[PyTree, dict]:
    """``(tree, metadata)`` of the checkpoint at ``path``, verified first; with ``template`` (arrays or
    ``jax.ShapeDtypeStruct``) the tree has the template's pytree types.

    Raises:
      CheckpointError: the checkpoint is missing, incomplete or corrupt, or differs from
        ``template`` (naming the first differing key path).
    """
    path = Path(path)
    manifest, metadata = open_checkpoint(path)
    tree = _tree(path, manifest)
    return (tree if template is None else _match(path, tree, template)), metadata


def shipped_path(name: Any) -> Optional[Path]:
    """The folder of the shipped learned optimizer ``name`` (``metaopt.pretrained``), or ``None``
    when ``name`` is an existing path or not a shipped name."""
    import importlib.resources

    if not isinstance(name, str) or os.sep in name or Path(name).exists():
        return None
    folder = Path(str(importlib.resources.files("metaopt.pretrained_weights"))) / name
    return folder if is_checkpoint(folder) else None


def resolve_path(path: Any) -> Path:
    """The checkpoint directory for ``path``: itself, the one checkpoint among its visible
    subfolders (a run folder's ``theta/``), or the shipped learned optimizer of that name.

    Raises:
      CheckpointError: ``path`` is no checkpoint and holds not exactly one in its subfolders.
    """
    shipped = shipped_path(path)
    if shipped is not None:
        return shipped
    path = Path(path)
    if is_checkpoint(path):
        return path
    if not path.exists():
        raise CheckpointError(f"path: no checkpoint at {path} (it does not exist)")
    # Hidden folders are saves in progress (see ``save_tree``).
    inner = sorted(p for p in path.iterdir() if not p.name.startswith(".") and is_checkpoint(p)) if path.is_dir() else []
    if len(inner) == 1:
        return inner[0]
    found = f"{len(inner)} in its subfolders ({', '.join(p.name for p in inner)})" if inner else "nor in its subfolders"
    raise CheckpointError(f"path: {path} holds no {CHECKSUMS} or {MANIFEST}, {found} (not a checkpoint, "
                          "or an incomplete save)")


def save(path: Any, lopt: _lo.LearnedOptimizer, theta: PyTree, *, metadata: Optional[dict] = None,
         overwrite: bool = False, before_commit: Optional[Callable[[], None]] = None) -> Path:
    """Saves a learned optimizer's theta (checked with ``lopt.check_theta``) with its ``kind`` and
    ``config()`` and the caller's ``metadata`` (returned by ``load_metadata``); see ``save_tree``.

    Raises:
      ValueError: ``theta`` does not fit ``lopt`` or ``metadata`` is not JSON-serialisable.
      CheckpointError: ``path`` exists and ``overwrite`` is False.
    """
    from metaopt import __version__

    lopt.check_theta(theta)
    content = {"content": LEARNED_OPTIMIZER, "kind": lopt.kind, "config": _to_json(lopt.config(), "lopt.config()"),
               "metaopt_version": __version__, "metadata": _to_json({} if metadata is None else metadata, "metadata")}
    return save_tree(path, theta, content, overwrite=overwrite, before_commit=before_commit)


def _content(path: Path, metadata: Any) -> dict:
    if not isinstance(metadata, dict) or metadata.get("content") != LEARNED_OPTIMIZER:
        raise CheckpointError(f"{path}: not a learned-optimizer checkpoint (use load_tree)")
    return metadata


def load(path: Any, lopt: Optional[_lo.LearnedOptimizer] = None) -> tuple[_lo.LearnedOptimizer, PyTree]:
    """``(lopt, theta)`` of a checkpoint written by ``save`` (or a run folder, or a shipped name): the
    optimizer rebuilt from its stored kind and config, which must equal ``lopt``'s when given.

    Raises:
      CheckpointError: missing or corrupt files, an unknown kind, a config differing from ``lopt``
        (naming the fields and both values), or a theta not fitting the architecture.
    """
    path = resolve_path(path)
    manifest, metadata = open_checkpoint(path)
    content = _content(path, metadata)
    kind = content["kind"]
    try:
        stored = _lo.lookup(kind).from_config(content["config"])
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{path}: cannot rebuild the learned optimizer: {err}") from None
    if lopt is not None:
        if lopt.kind != kind:
            raise CheckpointError(f"kind: checkpoint holds {kind!r}, given {lopt.kind!r}")
        # Fields added since the checkpoint was written take their defaults on both sides.
        config, given = (_to_json(x.config(), "lopt.config()") for x in (stored, lopt))
        absent = object()
        show = lambda v: "absent" if v is absent else repr(v)  # noqa: E731
        diffs = [f"{k} (checkpoint {show(config.get(k, absent))}, given {show(given.get(k, absent))})"
                 for k in sorted(set(config) | set(given)) if config.get(k, absent) != given.get(k, absent)]
        if diffs:
            raise CheckpointError(f"config: checkpoint differs from the given {type(lopt).__name__} in " + "; ".join(diffs))
    theta = _match(path, _tree(path, manifest), jax.eval_shape(stored.init, jax.random.key(0)))
    try:
        stored.check_theta(theta)
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from None
    return (stored if lopt is None else lopt), theta


def load_metadata(path: Any) -> dict:
    """The metadata given to ``save`` (or to ``save_tree``) of a checkpoint, run folder or shipped name.

    Raises:
      CheckpointError: no checkpoint that verifies there.
    """
    path = resolve_path(path)
    metadata = open_checkpoint(path)[1]
    is_lopt = isinstance(metadata, dict) and metadata.get("content") == LEARNED_OPTIMIZER
    return metadata["metadata"] if is_lopt else metadata


def load_kind(path: Any) -> str:
    """The ``kind`` of the learned optimizer saved at ``path``.

    Raises:
      CheckpointError: no checkpoint that verifies there, or not a learned optimizer's.
    """
    path = resolve_path(path)
    return _content(path, open_checkpoint(path)[1])["kind"]
