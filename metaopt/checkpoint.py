"""Checkpoints: pytrees and learned optimizers saved atomically, verified on load, never unpickled.

A checkpoint is a directory::

    PATH/
      arrays/          the array leaves, a flat dict written by orbax (tensorstore, no pickle)
      manifest.json    format version, metadata, the tree's structure (key paths, shapes, dtypes),
                       the sha256 of every file under PATH, and the sha256 of the manifest's own
                       content (``manifest_sha256``); written last

Everything is first written into a hidden temporary sibling directory and renamed into place only
when complete, so a crash mid-save leaves either the previous checkpoint or none, and a directory
without a valid manifest never loads. Loading checks the manifest's own digest before trusting any
of it, then every file's digest, so a changed bit anywhere in a checkpoint is refused (format 1,
written before the manifest carried its digest, is still read, with file checksums only). Python structure (dicts, lists, tuples, named tuples, ``None``,
custom pytree nodes) is recorded as JSON; loading without a template rebuilds it from plain
containers (named tuples as ``collections.namedtuple`` of the same name and fields, other custom
nodes as dicts), loading with a template restores the template's exact pytree types.

A learned optimizer checkpoint (``save`` / ``load``) adds its ``kind`` and ``config()`` to the
metadata, so ``load`` rebuilds the optimizer object through the registry without the code that made
it. ``load`` and ``load_metadata`` also accept a folder holding one checkpoint among its subfolders
(a meta-training run folder, whose checkpoint is ``theta/``).
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
    "FORMAT", "FORMAT_VERSION", "READABLE_VERSIONS", "MANIFEST_DIGEST", "MANIFEST", "ARRAYS",
    "LEARNED_OPTIMIZER", "CheckpointError", "manifest_digest", "file_checksums", "verify_files",
    "check_template", "save_tree", "parse_manifest", "load_tree", "shipped_path", "resolve_path", "save", "load", "load_metadata", "load_kind",
]

PyTree = Any

FORMAT = "metaopt-checkpoint"
FORMAT_VERSION = 2
# Format versions this code reads: 1 lacks the manifest's own digest.
READABLE_VERSIONS = (1, 2)
MANIFEST_DIGEST = "manifest_sha256"
MANIFEST = "manifest.json"
ARRAYS = "arrays"
LEARNED_OPTIMIZER = "learned_optimizer"


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, corrupt, or does not match what it is loaded into."""


# ----------------------------------------------------------------------------------------------
# Structure as JSON


def _is_leaf_node(x: Any) -> bool:
    return jax.tree.structure(x) == jax.tree.structure(0)


def _key_json(entry: Any) -> Any:
    if isinstance(entry, jax.tree_util.DictKey):
        key = entry.key
        if isinstance(key, (str, int)) and not isinstance(key, bool):
            return key
        raise CheckpointError(f"tree: dict key {key!r} is not a str or int; cannot be saved")
    if isinstance(entry, jax.tree_util.SequenceKey):
        return entry.idx
    if isinstance(entry, jax.tree_util.GetAttrKey):
        return entry.name
    if isinstance(entry, jax.tree_util.FlattenedIndexKey):
        return entry.key
    return str(entry)


def _encode(x: Any, counter: list[int]) -> dict:
    """JSON description of ``x``'s containers; leaves get consecutive indices in jax's order."""
    if x is None:
        return {"t": "none"}
    if _is_leaf_node(x):
        counter[0] += 1
        return {"t": "leaf", "i": counter[0] - 1}
    kids, _ = jax.tree_util.tree_flatten_with_path(x, is_leaf=lambda y: y is not x)
    children = [_encode(child, counter) for _, child in kids]
    keys = [_key_json(path[0]) for path, _ in kids]
    if isinstance(x, dict):
        return {"t": "dict", "keys": keys, "c": children}
    if isinstance(x, tuple) and hasattr(x, "_fields"):
        return {"t": "namedtuple", "name": type(x).__name__, "fields": list(x._fields), "c": children}
    if isinstance(x, tuple):
        return {"t": "tuple", "c": children}
    if isinstance(x, list):
        return {"t": "list", "c": children}
    return {"t": "node", "name": type(x).__name__, "keys": [str(k) for k in keys], "c": children}


def _decode(node: dict, leaves: list) -> Any:
    kind = node["t"]
    if kind == "none":
        return None
    if kind == "leaf":
        return leaves[node["i"]]
    children = [_decode(c, leaves) for c in node["c"]]
    if kind == "dict":
        return dict(zip(node["keys"], children))
    if kind == "namedtuple":
        return collections.namedtuple(node["name"], node["fields"], rename=True)(*children)
    if kind == "tuple":
        return tuple(children)
    if kind == "list":
        return children
    if kind == "node":
        return dict(zip(node["keys"], children))
    raise CheckpointError(f"manifest: unknown structure node type {kind!r}")


def _leaf_record(path: str, x: Any) -> tuple[dict, Optional[np.ndarray]]:
    """The manifest entry of one leaf and the numpy array to store for it (None if stored inline)."""
    if isinstance(x, str):
        return {"path": path, "kind": "str", "value": x, "shape": [], "dtype": "str"}, None
    if isinstance(x, (jax.Array, np.ndarray, np.generic)):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            data = np.asarray(jax.random.key_data(x))
            return {"path": path, "kind": "key", "impl": str(jax.random.key_impl(x)),
                    "shape": list(x.shape), "dtype": str(x.dtype)}, data
        array = np.asarray(x)
        return {"path": path, "kind": "array", "shape": list(array.shape), "dtype": str(array.dtype)}, array
    if isinstance(x, (bool, int, float)):
        kind = "bool" if isinstance(x, bool) else "int" if isinstance(x, int) else "float"
        array = np.asarray(x)
        return {"path": path, "kind": kind, "shape": [], "dtype": str(array.dtype)}, array
    raise CheckpointError(f"tree{path}: leaf of type {type(x).__name__} cannot be saved "
                          "(expected arrays, Python scalars or strings)")


def _template_record(path: str, x: Any) -> dict:
    if isinstance(x, str):
        return {"path": path, "shape": [], "dtype": "str"}
    if isinstance(x, (bool, int, float)) and not isinstance(x, np.generic):
        return {"path": path, "shape": [], "dtype": str(np.asarray(x).dtype)}
    shape, dtype = getattr(x, "shape", None), getattr(x, "dtype", None)
    if shape is None or dtype is None:
        raise CheckpointError(f"template{path}: leaf of type {type(x).__name__} has no shape/dtype")
    return {"path": path, "shape": list(shape), "dtype": str(dtype)}


def _json_default(x: Any) -> Any:
    if isinstance(x, (np.generic, jax.Array)) and np.ndim(x) == 0:
        return np.asarray(x).item()
    if isinstance(x, (np.ndarray, jax.Array)):
        return np.asarray(x).tolist()
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, (set, frozenset)):
        return sorted(x)
    raise TypeError(f"{type(x).__name__} is not JSON-serialisable")


def _to_json(value: Any, name: str) -> Any:
    """``value`` normalised to plain JSON types (tuples become lists)."""
    try:
        return json.loads(json.dumps(value, default=_json_default, allow_nan=True))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}: not JSON-serialisable ({err})") from None


# ----------------------------------------------------------------------------------------------
# Files


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_digest(manifest: dict) -> str:
    """SHA-256 of a manifest's content without its own digest field (canonical JSON: sorted keys,
    no spaces), so the digest does not depend on how the file happens to be laid out."""
    body = {k: v for k, v in manifest.items() if k != MANIFEST_DIGEST}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_checksums(root: Path) -> dict[str, str]:
    """The sha256 of every file under ``root``, by relative POSIX path."""
    out = {}
    for dirpath, _, filenames in os.walk(root):
        for filename in filenames:
            full = Path(dirpath) / filename
            out[full.relative_to(root).as_posix()] = _sha256(full)
    return dict(sorted(out.items()))


_CHECKPOINTER = None


def _checkpointer():
    """orbax's checkpointer for whole host arrays, written and read by the calling process alone.

    In a job of several processes a checkpoint of this module is still one process's file
    operation (process 0 writes a run's ``theta/``), so orbax must not wait for the others.
    """
    global _CHECKPOINTER
    if _CHECKPOINTER is None:
        import orbax.checkpoint as ocp
        if jax.process_count() > 1:
            me = jax.process_index()
            alone = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
            _CHECKPOINTER = ocp.Checkpointer(ocp.PyTreeCheckpointHandler(multiprocessing_options=alone),
                                             multiprocessing_options=alone)
        else:
            _CHECKPOINTER = ocp.PyTreeCheckpointer()
    return _CHECKPOINTER


def _leaf_name(i: int) -> str:
    return f"leaf_{i:06d}"


def save_tree(path: Any, tree: PyTree, metadata: Optional[dict] = None, *, overwrite: bool = False,
              before_commit: Optional[Callable[[], None]] = None) -> Path:
    """Saves a pytree and a JSON metadata dict as a checkpoint directory, atomically.

    Args:
      path: the checkpoint directory to create.
      tree: a pytree of arrays (jax or numpy, including typed PRNG keys), Python scalars or strings.
      metadata: a JSON-serialisable dict (numpy scalars and tuples are converted), returned by
        ``load_tree``.
      overwrite: replace an existing checkpoint at ``path``; the old one stays intact until the new
        one is complete.
      before_commit: called once everything is written to the temporary folder, just before it is
        renamed into place (the moment a crash tests of atomicity aim at).

    Returns:
      ``path`` as a ``pathlib.Path``.

    Raises:
      CheckpointError: ``path`` exists and ``overwrite`` is False, or a leaf cannot be saved.
      ValueError: ``metadata`` is not JSON-serialisable.
    """
    path = Path(path)
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise CheckpointError(f"path: {path} already exists; pass overwrite=True to replace it")
    metadata = _to_json({} if metadata is None else metadata, "metadata")
    if not isinstance(metadata, dict):
        raise ValueError(f"metadata: expected a dict, got {type(metadata).__name__}")

    structure = _encode(tree, [0])
    records, arrays = [], {}
    for i, (key_path, leaf) in enumerate(jax.tree_util.tree_flatten_with_path(tree)[0]):
        record, array = _leaf_record(jax.tree_util.keystr(key_path), leaf)
        if array is not None:
            record["name"] = _leaf_name(i)
            arrays[record["name"]] = array
        records.append(record)

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        if arrays:
            _checkpointer().save((tmp / ARRAYS).absolute(), arrays)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "metadata": metadata,
            "structure": structure,
            "leaves": records,
            "files": file_checksums(tmp),
        }
        manifest[MANIFEST_DIGEST] = manifest_digest(manifest)
        partial = tmp / (MANIFEST + ".partial")
        with open(partial, "w") as f:
            json.dump(manifest, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, tmp / MANIFEST)
        if before_commit is not None:
            before_commit()
        if path.exists() or path.is_symlink():
            old = path.parent / f".{path.name}.old-{uuid.uuid4().hex}"
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)
                raise
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink()
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def _read_manifest(path: Path) -> dict:
    if not path.exists():
        raise CheckpointError(f"path: no checkpoint at {path} (it does not exist)")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"path: {path} has no {MANIFEST} (not a checkpoint, or an incomplete save)")
    try:
        data = manifest_path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"{manifest_path}: cannot read the manifest ({err})") from None
    return parse_manifest(data, manifest_path)


def parse_manifest(data: bytes, where: Any = MANIFEST) -> dict:
    """The manifest in ``data`` (a ``manifest.json``'s bytes), checked before anything in it is used.

    Raises:
      CheckpointError: not JSON, not a manifest, an unknown format, or (format 2) content that does
        not match its ``manifest_sha256``.
    """
    manifest_path = where
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{manifest_path}: corrupt or truncated manifest ({err})") from None
    required = ("format", "format_version", "metadata", "structure", "leaves", "files")
    if not isinstance(manifest, dict) or any(k not in manifest for k in required):
        raise CheckpointError(f"{manifest_path}: not a metaopt checkpoint manifest (or a corrupt one)")
    version = manifest["format_version"]
    if (manifest["format"] != FORMAT or isinstance(version, bool)
            or version not in READABLE_VERSIONS):
        raise CheckpointError(f"{manifest_path}: format {manifest['format']!r} version {version!r}; "
                              f"this metaopt reads {FORMAT!r} versions {list(READABLE_VERSIONS)}")
    if version >= 2:
        stored = manifest.get(MANIFEST_DIGEST)
        if not isinstance(stored, str) or stored != manifest_digest(manifest):
            raise CheckpointError(f"{manifest_path}: corrupt manifest (its {MANIFEST_DIGEST} does not "
                                  "match its content)")
    if not isinstance(manifest["files"], dict) or not isinstance(manifest["leaves"], list):
        raise CheckpointError(f"{manifest_path}: not a metaopt checkpoint manifest (or a corrupt one)")
    return manifest


def verify_files(path: Path, manifest: dict) -> None:
    """Raises ``CheckpointError`` unless every file of ``manifest["files"]`` has its checksum."""
    for rel, digest in manifest["files"].items():
        full = path / rel
        if not full.is_file():
            raise CheckpointError(f"{path}: file {rel} is missing")
        if _sha256(full) != digest:
            raise CheckpointError(f"{path}: file {rel} is corrupt or truncated (checksum mismatch)")


def check_template(path: Path, manifest: dict, template: PyTree) -> Any:
    """The treedef of ``template`` once its key paths, shapes, dtypes and containers match the
    manifest's; raises ``CheckpointError`` naming the first difference."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(template)
    expected = [_template_record(jax.tree_util.keystr(p), x) for p, x in flat]
    stored = manifest["leaves"]
    for i in range(max(len(expected), len(stored))):
        if i >= len(stored):
            raise CheckpointError(f"{path}: template has {expected[i]['path'] or 'the root'}, "
                                  "which the checkpoint lacks")
        if i >= len(expected):
            raise CheckpointError(f"{path}: checkpoint has {stored[i]['path'] or 'the root'}, "
                                  "which the template lacks")
        want, got = expected[i], stored[i]
        if want["path"] != got["path"]:
            raise CheckpointError(f"{path}: structure differs at {want['path'] or 'the root'} "
                                  f"(checkpoint has {got['path'] or 'the root'} there)")
        if list(want["shape"]) != list(got["shape"]) or want["dtype"] != got["dtype"]:
            raise CheckpointError(f"{path}: {want['path'] or 'the root'} is {got['dtype']}{got['shape']} "
                                  f"in the checkpoint but {want['dtype']}{want['shape']} in the template")
    if _encode(template, [0]) != manifest["structure"]:
        raise CheckpointError(f"{path}: container types differ from the template "
                              "(same leaves, different dicts/tuples/named tuples or empty nodes)")
    return treedef


def _restore_leaves(path: Path, manifest: dict) -> list:
    records = manifest["leaves"]
    names = [r["name"] for r in records if "name" in r]
    arrays = {}
    if names:
        import orbax.checkpoint as ocp
        restore_args = {n: ocp.RestoreArgs(restore_type=np.ndarray) for n in names}
        try:
            arrays = _checkpointer().restore(
                (path / ARRAYS).absolute(), args=ocp.args.PyTreeRestore(restore_args=restore_args))
        except Exception as err:  # orbax/tensorstore raise many types for unreadable data
            raise CheckpointError(f"{path}: cannot read the arrays ({type(err).__name__}: "
                                  f"{str(err).splitlines()[0] if str(err) else ''})") from None
    leaves = []
    for r in records:
        kind = r["kind"]
        if kind == "str":
            leaves.append(r["value"])
            continue
        if r["name"] not in arrays:
            raise CheckpointError(f"{path}: array of {r['path'] or 'the root'} is missing")
        array = np.asarray(arrays[r["name"]])
        if kind == "key":
            key = jax.random.wrap_key_data(jnp.asarray(array), impl=r["impl"])
            got_shape, got_dtype = list(key.shape), str(key.dtype)
            value = key
        else:
            got_shape, got_dtype = list(array.shape), str(array.dtype)
            if kind != "array":
                value = {"bool": bool, "int": int, "float": float}[kind](array.item())
            elif jax.dtypes.canonicalize_dtype(array.dtype) == array.dtype:
                value = jnp.asarray(array)
            else:
                # 64-bit arrays stay numpy when jax runs in 32-bit mode, rather than silently narrowing.
                value = array
        if got_shape != list(r["shape"]) or got_dtype != r["dtype"]:
            raise CheckpointError(f"{path}: {r['path'] or 'the root'} restored as {got_dtype}{got_shape}, "
                                  f"manifest says {r['dtype']}{r['shape']}")
        leaves.append(value)
    return leaves


def load_tree(path: Any, template: PyTree = None) -> tuple[PyTree, dict]:
    """Loads a checkpoint written by ``save_tree``, verifying its manifest and checksums.

    Args:
      path: the checkpoint directory.
      template: optional pytree (arrays or ``jax.ShapeDtypeStruct``s) the checkpoint must match in
        structure, shapes and dtypes; the result then has the template's exact pytree types.

    Returns:
      ``(tree, metadata)``: array leaves as jax arrays (typed PRNG keys restored), and the metadata
      dict given to ``save_tree``.

    Raises:
      CheckpointError: the checkpoint is missing, incomplete, truncated or corrupt, or differs from
        ``template`` (the message names the first differing key path).
    """
    path = Path(path)
    manifest = _read_manifest(path)
    verify_files(path, manifest)
    treedef = check_template(path, manifest, template) if template is not None else None
    leaves = _restore_leaves(path, manifest)
    if treedef is not None:
        tree = jax.tree.unflatten(treedef, leaves)
    else:
        tree = _decode(manifest["structure"], leaves)
    return tree, manifest["metadata"]


# ----------------------------------------------------------------------------------------------
# Learned optimizers


def shipped_path(name: Any) -> Optional[Path]:
    """The folder of the shipped learned optimizer ``name`` (``metaopt.pretrained``), or ``None``
    when ``name`` is an existing path or not a shipped name."""
    import importlib.resources

    if not isinstance(name, str) or os.sep in name or Path(name).exists():
        return None
    folder = Path(str(importlib.resources.files("metaopt.pretrained_weights"))) / name
    return folder if (folder / MANIFEST).is_file() else None


def resolve_path(path: Any) -> Path:
    """The checkpoint directory for ``path``: itself, the one checkpoint among its visible subfolders
    (a meta-training run folder's ``theta/``), or the shipped learned optimizer of that name
    (``"mulo-mlp"``).

    Raises:
      CheckpointError: no checkpoint manifest at ``path``, and not exactly one in its subfolders.
    """
    shipped = shipped_path(path)
    if shipped is not None:
        return shipped
    path = Path(path)
    if (path / MANIFEST).is_file():
        return path
    if not path.exists():
        raise CheckpointError(f"path: no checkpoint at {path} (it does not exist)")
    # Hidden folders are saves in progress (see ``save_tree``).
    inner = sorted(p for p in path.iterdir() if not p.name.startswith(".") and (p / MANIFEST).is_file()
                   ) if path.is_dir() else []
    if len(inner) == 1:
        return inner[0]
    found = f"{len(inner)} in its subfolders ({', '.join(p.name for p in inner)})" if inner else "nor in its subfolders"
    raise CheckpointError(f"path: {path} has no {MANIFEST}, {found} (not a checkpoint, or an incomplete save)")


def save(path: Any, lopt: _lo.LearnedOptimizer, theta: PyTree, *, metadata: Optional[dict] = None,
         overwrite: bool = False, before_commit: Optional[Callable[[], None]] = None) -> Path:
    """Saves a learned optimizer's meta-parameters with what is needed to rebuild it.

    Args:
      path: the checkpoint directory to create.
      lopt: the learned optimizer (its ``kind`` and ``config()`` are stored).
      theta: its meta-parameters; checked with ``lopt.check_theta``.
      metadata: a JSON-serialisable dict of the caller's own (returned by ``load_metadata``).
      overwrite: replace an existing checkpoint.
      before_commit: see ``save_tree``.

    Returns:
      ``path`` as a ``pathlib.Path``.

    Raises:
      ValueError: ``theta`` does not fit ``lopt`` or ``metadata`` is not JSON-serialisable.
      CheckpointError: ``path`` exists and ``overwrite`` is False.
    """
    from metaopt import __version__

    lopt.check_theta(theta)
    content = {
        "content": LEARNED_OPTIMIZER,
        "kind": lopt.kind,
        "config": _to_json(lopt.config(), "lopt.config()"),
        "metaopt_version": __version__,
        "metadata": _to_json({} if metadata is None else metadata, "metadata"),
    }
    return save_tree(path, theta, content, overwrite=overwrite, before_commit=before_commit)


def _config_differences(stored: dict, given: dict) -> list[str]:
    missing = object()
    diffs = []
    for name in sorted(set(stored) | set(given)):
        a, b = stored.get(name, missing), given.get(name, missing)
        if a != b:
            show = lambda v: "absent" if v is missing else repr(v)  # noqa: E731
            diffs.append(f"{name} (checkpoint {show(a)}, given {show(b)})")
    return diffs


def load(path: Any, lopt: Optional[_lo.LearnedOptimizer] = None) -> tuple[_lo.LearnedOptimizer, PyTree]:
    """Loads a learned optimizer saved by ``save`` (or a meta-training run folder's latest one).

    Args:
      path: a checkpoint directory, or a folder holding one (a run folder: its ``theta/``).
      lopt: optional learned optimizer the checkpoint must match (same kind and config).

    Returns:
      ``(lopt, theta)``: the optimizer rebuilt from its stored config via the registry, and theta.

    Raises:
      CheckpointError: missing or corrupt files, an unknown kind, a config differing from ``lopt``
        (naming the fields and both values), or a theta not fitting the architecture.
    """
    path = resolve_path(path)
    manifest = _read_manifest(path)
    content = manifest["metadata"]
    if not isinstance(content, dict) or content.get("content") != LEARNED_OPTIMIZER:
        raise CheckpointError(f"{path}: not a learned-optimizer checkpoint (use load_tree)")
    kind, config = content["kind"], content["config"]
    try:
        cls = _lo.lookup(kind)
        stored = cls.from_config(config)
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{path}: cannot rebuild the learned optimizer: {err}") from None
    if lopt is not None:
        if lopt.kind != kind:
            raise CheckpointError(f"kind: checkpoint holds {kind!r}, given {lopt.kind!r}")
        diffs = _config_differences(config, _to_json(lopt.config(), "lopt.config()"))
        if diffs:
            raise CheckpointError(f"config: checkpoint differs from the given {type(lopt).__name__} in "
                                  + "; ".join(diffs))
    template = jax.eval_shape(stored.init, jax.random.key(0))
    theta, _ = load_tree(path, template)
    try:
        stored.check_theta(theta)
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from None
    return (stored if lopt is None else lopt), theta


def load_metadata(path: Any) -> dict:
    """The metadata dict given to ``save`` (or to ``save_tree``), read from the manifest.

    Args:
      path: a checkpoint directory or a run folder (see ``load``).

    Raises:
      CheckpointError: no readable manifest there.
    """
    manifest = _read_manifest(resolve_path(path))
    content = manifest["metadata"]
    if isinstance(content, dict) and content.get("content") == LEARNED_OPTIMIZER:
        return content["metadata"]
    return content


def load_kind(path: Any) -> str:
    """The ``kind`` of the learned optimizer saved at ``path``, read from the manifest alone.

    Raises:
      CheckpointError: no readable manifest there, or it does not hold a learned optimizer.
    """
    content = _read_manifest(resolve_path(path))["metadata"]
    if not isinstance(content, dict) or content.get("content") != LEARNED_OPTIMIZER:
        raise CheckpointError(f"{path}: not a learned-optimizer checkpoint")
    return content["kind"]
