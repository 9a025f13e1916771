"""The output folder of an evaluation: its manifest, finished cells, and atomic writes.

``OUT/manifest.json`` says which evaluation a folder holds (the suite, the resolved suite config and
task, and a digest of the learned optimizer's theta). Every finished cell is ``OUT/cells/NAME.json``,
written atomically, so an interrupted evaluation resumes by skipping the cells already there. A folder
holding a different evaluation is refused before anything in it is touched.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Any, Optional

import jax
import numpy as np

MANIFEST = "manifest.json"
CELLS = "cells"


class OutputMismatchError(ValueError):
    """The output folder already holds a different evaluation."""


def atomic_write_text(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file and a rename (never a partial file)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_json(path: str, data: Any) -> None:
    """``atomic_write_text`` of strict JSON (NaN and infinities are not allowed)."""
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=False, allow_nan=False) + "\n")


def theta_digest(theta: Any) -> str:
    """SHA-256 over theta's leaves (structure, shapes, dtypes and bytes)."""
    h = hashlib.sha256()
    leaves, treedef = jax.tree.flatten(theta)
    h.update(str(treedef).encode())
    for leaf in leaves:
        arr = np.asarray(jax.device_get(leaf))
        h.update(f"{arr.shape}{arr.dtype}".encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def fingerprint(identity: dict) -> str:
    """A short digest of a JSON-ready identity mapping."""
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def open_output(out: str, manifest: dict) -> None:
    """Prepares ``out`` for the evaluation ``manifest`` describes, or refuses a folder holding another.

    Raises:
      OutputMismatchError: ``out`` holds another evaluation (different suite, config or checkpoint), or
        is a non-empty folder that is not an evaluation folder. Nothing is written in that case.
    """
    path = os.path.join(out, MANIFEST)
    if os.path.exists(out) and not os.path.isdir(out):
        raise OutputMismatchError(f"out: {out} exists and is not a folder")
    if os.path.isfile(path):
        try:
            with open(path) as f:
                existing = json.load(f)
        except (OSError, ValueError):
            raise OutputMismatchError(
                f"out: {out} has an unreadable {MANIFEST}; choose another --out") from None
        if existing.get("fingerprint") != manifest["fingerprint"]:
            what = []
            if existing.get("suite") != manifest["suite"]:
                what.append(f"suite {existing.get('suite')!r}, not {manifest['suite']!r}")
            if existing.get("theta_sha256") != manifest["theta_sha256"]:
                what.append(f"another checkpoint ({existing.get('checkpoint')})")
            if not what:
                what.append("the same suite with other settings")
            raise OutputMismatchError(f"out: {out} holds an evaluation of {'; '.join(what)}; "
                                      "choose another --out or remove that folder")
        return
    if os.path.isdir(out) and os.listdir(out):
        raise OutputMismatchError(f"out: {out} is a non-empty folder that is not an evaluation; "
                                  "choose another --out")
    os.makedirs(os.path.join(out, CELLS), exist_ok=True)
    atomic_write_json(path, manifest)


def cell_path(out: str, name: str) -> str:
    return os.path.join(out, CELLS, f"{name}.json")


def load_cell(out: str, name: str, fp: str) -> Optional[dict]:
    """The finished cell ``name`` of this evaluation, or ``None`` when it still has to run."""
    path = cell_path(out, name)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    if record.get("fingerprint") != fp:
        return None
    return record


def save_cell(out: str, record: dict) -> None:
    """Writes a finished cell atomically."""
    atomic_write_json(cell_path(out, record["name"]), record)
