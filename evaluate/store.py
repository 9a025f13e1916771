"""The output folder of an evaluation: its manifest, finished cells, and atomic writes.

``OUT/manifest.json`` says which evaluation a folder holds (the suite, the resolved suite config and
task, and a digest of the learned optimizer's theta). Every finished cell is ``OUT/cells/NAME.json``,
written atomically, so an interrupted evaluation resumes by skipping the cells already there. A folder
holding a different evaluation is refused before anything in it is touched.

The manifest and every cell carry the sha256 of their own content (``record_sha256``): a cell that
does not match it (a changed bit, a hand edit) is run again rather than trusted, and a manifest that
does not match refuses the folder. The temporary files of writes cut short by a kill (``.tmp-*``)
are removed when the evaluation is resumed.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from typing import Any, Optional

import jax
import numpy as np

__all__ = [
    "MANIFEST", "CELLS", "DIGEST", "TMP_PREFIX", "OutputMismatchError", "atomic_write_text",
    "atomic_write_json", "record_digest", "with_digest", "verified", "remove_partial_writes",
    "theta_digest", "fingerprint", "open_output", "cell_path", "load_cell", "save_cell",
]

MANIFEST = "manifest.json"
CELLS = "cells"
DIGEST = "record_sha256"
TMP_PREFIX = ".tmp-"


class OutputMismatchError(ValueError):
    """The output folder already holds a different evaluation."""


def atomic_write_text(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file and a rename (never a partial file)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=folder)
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


def record_digest(record: dict) -> str:
    """SHA-256 of a JSON record without its own digest field (canonical JSON: sorted keys, no spaces)."""
    body = {k: v for k, v in record.items() if k != DIGEST}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def with_digest(record: dict) -> dict:
    """``record`` with its ``record_sha256`` set."""
    out = {k: v for k, v in record.items() if k != DIGEST}
    out[DIGEST] = record_digest(out)
    return out


def verified(record: Any) -> bool:
    """Whether a record read back carries a digest that matches its content."""
    return isinstance(record, dict) and record.get(DIGEST) == record_digest(record)


def remove_partial_writes(out: str) -> list[str]:
    """Deletes the ``.tmp-*`` files that writes killed half-way leave in ``out``, its cells and plots."""
    removed = []
    for folder in (out, os.path.join(out, CELLS), os.path.join(out, "plots")):
        if not os.path.isdir(folder):
            continue
        for name in os.listdir(folder):
            full = os.path.join(folder, name)
            if name.startswith(TMP_PREFIX) and os.path.isfile(full):
                os.remove(full)
                removed.append(full)
    return removed


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
            with open(path, encoding="utf-8") as f:
                existing = json.load(f)
        except (OSError, ValueError):
            raise OutputMismatchError(
                f"out: {out} has an unreadable {MANIFEST}; choose another --out") from None
        if not isinstance(existing, dict):
            raise OutputMismatchError(f"out: {out} has an unreadable {MANIFEST}; choose another --out")
        if DIGEST in existing and not verified(existing):
            raise OutputMismatchError(f"out: {out}/{MANIFEST} does not match its {DIGEST} (changed "
                                      "after it was written); choose another --out or remove that folder")
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
        remove_partial_writes(out)
        return
    if os.path.isdir(out) and os.listdir(out):
        raise OutputMismatchError(f"out: {out} is a non-empty folder that is not an evaluation; "
                                  "choose another --out")
    os.makedirs(os.path.join(out, CELLS), exist_ok=True)
    atomic_write_json(path, with_digest(manifest))


def cell_path(out: str, name: str) -> str:
    return os.path.join(out, CELLS, f"{name}.json")


def load_cell(out: str, name: str, fp: str) -> Optional[dict]:
    """The finished cell ``name`` of this evaluation, or ``None`` when it still has to run.

    A cell file that cannot be read, or whose content does not match its digest, is reported on
    stderr and run again.
    """
    path = cell_path(out, name)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        record = None
    if not verified(record):
        print(f"warning: {path} is unreadable or does not match its {DIGEST}; running the cell again",
              file=sys.stderr)
        return None
    if record.get("fingerprint") != fp:
        return None
    return {k: v for k, v in record.items() if k != DIGEST}


def save_cell(out: str, record: dict) -> None:
    """Writes a finished cell atomically, with its digest."""
    atomic_write_json(cell_path(out, record["name"]), with_digest(record))
