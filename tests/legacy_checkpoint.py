"""A writer of format 2 checkpoints (``manifest.json`` and ``arrays/``), as metaopt wrote them before
its checkpoints were orbax composites, for the tests that such folders still load."""

import hashlib
import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from metaopt import checkpoint


def _encode(x, counter):
    if x is None:
        return {"t": "none"}
    if jax.tree.structure(x) == jax.tree.structure(0):
        counter[0] += 1
        return {"t": "leaf", "i": counter[0] - 1}
    kids = jax.tree_util.tree_flatten_with_path(x, is_leaf=lambda y: y is not x)[0]
    children = [_encode(child, counter) for _, child in kids]
    keys = [next(getattr(p[0], a) for a in ("key", "idx", "name") if hasattr(p[0], a)) for p, _ in kids]
    if isinstance(x, dict):
        return {"t": "dict", "keys": keys, "c": children}
    if isinstance(x, tuple) and hasattr(x, "_fields"):
        return {"t": "namedtuple", "name": type(x).__name__, "fields": list(x._fields), "c": children}
    if isinstance(x, (tuple, list)):
        return {"t": type(x).__name__, "c": children}
    return {"t": "node", "name": type(x).__name__, "keys": [str(k) for k in keys], "c": children}


def _record(i, key_path, x):
    path = jax.tree_util.keystr(key_path)
    if isinstance(x, str):
        return {"path": path, "kind": "str", "value": x, "shape": [], "dtype": "str"}, None
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return {"path": path, "kind": "key", "impl": str(jax.random.key_impl(x)), "shape": list(x.shape),
                "dtype": str(x.dtype), "name": f"leaf_{i:06d}"}, np.asarray(jax.random.key_data(x))
    kind = next((k for k, t in (("bool", bool), ("int", int), ("float", float)) if type(x) is t), "array")
    array = np.asarray(x)
    return {"path": path, "kind": kind, "shape": list(array.shape), "dtype": str(array.dtype),
            "name": f"leaf_{i:06d}"}, array


def write_format_2(path, tree, metadata, version=2):
    """Writes ``tree`` and ``metadata`` at ``path`` in format 2 (``version=1``: without the manifest's
    own digest)."""
    records, arrays = [], {}
    for i, (key_path, leaf) in enumerate(jax.tree_util.tree_flatten_with_path(tree)[0]):
        record, array = _record(i, key_path, leaf)
        records.append(record)
        if array is not None:
            arrays[record["name"]] = array
    os.makedirs(path)
    ocp.PyTreeCheckpointer().save(os.path.abspath(os.path.join(path, "arrays")), arrays)
    files = {}
    for dirpath, _, names in os.walk(path):
        for name in names:
            full = os.path.join(dirpath, name)
            files[os.path.relpath(full, path)] = hashlib.sha256(open(full, "rb").read()).hexdigest()
    manifest = {"format": "metaopt-checkpoint", "format_version": version, "metadata": metadata,
                "structure": _encode(tree, [0]), "leaves": records, "files": dict(sorted(files.items()))}
    if version == 2:
        manifest[checkpoint.DIGEST] = checkpoint.digest(manifest)
    with open(os.path.join(path, checkpoint.MANIFEST), "w") as f:
        json.dump(manifest, f)
