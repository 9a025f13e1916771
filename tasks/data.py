"""Offline datasets for the task families: MNIST-1D, scikit-learn digits, and Python stdlib bytes.

Nothing here touches the network. MNIST-1D is generated locally by the ``mnist1d`` package and cached
on disk (``$METAOPT_CACHE_DIR`` or ``~/.cache/metaopt``) in one ``.npz`` file that carries a SHA-256
of its arrays; a missing, unreadable or mismatching cache file is rebuilt, never used. Digits ships
inside scikit-learn; the text corpus is the standard library's own ``*.py`` files.

Each dataset is loaded once per process (module-level caches keyed by their arguments) and handed to
tasks as device arrays, so tasks stay small hashable configs and batches are gathered inside ``jit``.
Splits are deterministic functions of ``seed``.

References:
  Greydanus & Kobak, "Scaling down deep learning with MNIST-1D", ICML 2024.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import os
import random
import sysconfig
import tempfile
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "MNIST1D_NUM_SAMPLES", "MNIST1D_HELDOUT_FRACTION", "DIGITS_HELDOUT_FRACTION", "EVAL_CAP",
    "NUM_CLASSES", "CORPUS_MAX_BYTES", "CORPUS_VALID_FRACTION", "Split", "Corpus", "cache_dir",
    "mnist1d_path", "load_mnist1d", "mnist1d_split", "digits_split", "DATASETS", "classification_split",
    "stdlib_files", "stdlib_corpus",
]

MNIST1D_NUM_SAMPLES = 5000
MNIST1D_HELDOUT_FRACTION = 0.2
DIGITS_HELDOUT_FRACTION = 0.2
EVAL_CAP = 1024
NUM_CLASSES = 10
CORPUS_MAX_BYTES = 2_000_000
CORPUS_VALID_FRACTION = 0.1
_CACHE_FORMAT = 1


class Split(NamedTuple):
    """A classification dataset as device arrays: train inputs/labels and the fixed held-out set."""

    x_train: jnp.ndarray
    y_train: jnp.ndarray
    x_eval: jnp.ndarray
    y_eval: jnp.ndarray


class Corpus(NamedTuple):
    """A byte corpus split by file: the training stream and the validation stream (uint8)."""

    train: jnp.ndarray
    valid: jnp.ndarray


def cache_dir() -> Path:
    """Where generated data is cached: ``$METAOPT_CACHE_DIR`` or ``~/.cache/metaopt``."""
    env = os.environ.get("METAOPT_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "metaopt"


def _checksum(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        digest.update(name.encode())
        digest.update(str(a.dtype).encode())
        digest.update(str(a.shape).encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def _read_cache(path: Path, expected: dict[str, tuple]) -> dict[str, np.ndarray] | None:
    """The arrays of a cache file, or None when it is missing, unreadable, or fails its checksum."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {name: np.array(f[name]) for name in expected}
            stored = str(f["sha256"])
    except Exception:  # any unreadable file is simply rebuilt
        return None
    if any(arrays[name].shape != shape for name, shape in expected.items()):
        return None
    if _checksum(arrays) != stored:
        return None
    return arrays


def _write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Writes atomically (temporary file, then rename) so readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, sha256=np.array(_checksum(arrays)), **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _generate_mnist1d(num_samples: int) -> dict[str, np.ndarray]:
    import mnist1d.data

    args = mnist1d.data.get_dataset_args()
    args.num_samples = num_samples
    # The generator reseeds the global NumPy and ``random`` states; leave the caller's untouched.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        ds = mnist1d.data.make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    x = np.concatenate([ds["x"], ds["x_test"]]).astype(np.float32)
    y = np.concatenate([ds["y"], ds["y_test"]]).astype(np.int32)
    return {"x": x, "y": y}


def mnist1d_path(num_samples: int = MNIST1D_NUM_SAMPLES) -> Path:
    """The cache file of MNIST-1D with ``num_samples`` samples."""
    return cache_dir() / f"mnist1d_n{num_samples}_v{_CACHE_FORMAT}.npz"


def load_mnist1d(num_samples: int = MNIST1D_NUM_SAMPLES) -> tuple[np.ndarray, np.ndarray]:
    """All MNIST-1D samples (signals of length 40, 10 classes), from the disk cache or generated.

    Args:
      num_samples: number of samples to generate (the generator's own seed is fixed, so the pool is
        the same on every machine; ``seed`` in a task config picks the split).

    Returns:
      ``(x, y)``: float32 ``(num_samples, 40)`` and int32 ``(num_samples,)`` (num_samples rounded
      down to a multiple of 10 by the generator).
    """
    if num_samples < 10:
        raise ValueError(f"num_samples: must be >= 10, got {num_samples}")
    n = (num_samples // 10) * 10
    path = mnist1d_path(num_samples)
    arrays = _read_cache(path, {"x": (n, 40), "y": (n,)})
    if arrays is None:
        arrays = _generate_mnist1d(num_samples)
        _write_cache(path, arrays)
    return arrays["x"], arrays["y"]


def _device(*arrays: np.ndarray) -> tuple[jax.Array, ...]:
    """Concrete device arrays, even when first requested while a function is being traced.

    The module-level caches must hold real arrays: created inside a ``jit`` trace they would be
    tracers and leak into later traces.
    """
    with jax.ensure_compile_time_eval():
        return tuple(jnp.asarray(a) for a in arrays)


def _check_split(x: np.ndarray, y: np.ndarray, num_classes: int) -> None:
    """Fails loudly on data that would silently turn a loss into NaN (non-finite inputs, bad labels)."""
    if not np.all(np.isfinite(x)):
        raise ValueError(f"x: the dataset has {int(np.sum(~np.isfinite(x)))} non-finite input values")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"y: labels must lie in [0, {num_classes}), got [{y.min()}, {y.max()}]")


def _split_indices(n: int, heldout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    num_heldout = int(round(n * heldout_fraction))
    return perm[num_heldout:], perm[:num_heldout]


def _standardize(x_train: np.ndarray, x_eval: np.ndarray, per_feature: bool):
    axis = 0 if per_feature else None
    mean = x_train.mean(axis=axis)
    std = x_train.std(axis=axis)
    # Pixels that never vary (digit borders) would divide by zero.
    std = np.where(std < 1e-6, 1.0, std)
    return (x_train - mean) / std, (x_eval - mean) / std


def _make_split(x: np.ndarray, y: np.ndarray, heldout_fraction: float, seed: int,
                per_feature: bool) -> Split:
    train_idx, eval_idx = _split_indices(len(y), heldout_fraction, seed)
    eval_idx = eval_idx[:EVAL_CAP]
    x_train, x_eval = _standardize(x[train_idx], x[eval_idx], per_feature)
    _check_split(np.concatenate([x_train, x_eval]), y, NUM_CLASSES)
    return Split(*_device(x_train.astype(np.float32), y[train_idx].astype(np.int32),
                          x_eval.astype(np.float32), y[eval_idx].astype(np.int32)))


@functools.lru_cache(maxsize=None)
def mnist1d_split(seed: int, per_feature: bool = True) -> Split:
    """MNIST-1D split by ``seed`` (80/20), inputs standardised with training statistics."""
    x, y = load_mnist1d(MNIST1D_NUM_SAMPLES)
    return _make_split(x, y, MNIST1D_HELDOUT_FRACTION, seed, per_feature)


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.data.astype(np.float32), digits.target.astype(np.int32)


@functools.lru_cache(maxsize=None)
def digits_split(seed: int, per_feature: bool = True) -> Split:
    """scikit-learn digits (1797 8x8 images flattened to 64, 10 classes) split by ``seed`` (80/20).

    ``per_feature=True`` standardises every pixel (for MLPs); ``False`` uses one mean and scale for
    all pixels, keeping the image's spatial contrast (for CNNs).
    """
    x, y = _digits_arrays()
    return _make_split(x, y, DIGITS_HELDOUT_FRACTION, seed, per_feature)


DATASETS = {"mnist1d": (mnist1d_split, 40, 10), "digits": (digits_split, 64, 10)}


def classification_split(dataset: str, seed: int, per_feature: bool = True) -> Split:
    """The split of ``dataset`` (one of ``DATASETS``) for ``seed``."""
    if dataset not in DATASETS:
        raise ValueError(f"dataset: got {dataset!r}, expected one of {tuple(DATASETS)}")
    return DATASETS[dataset][0](seed, per_feature)


def stdlib_files(max_bytes: int = CORPUS_MAX_BYTES) -> list[Path]:
    """The standard library's top-level ``*.py`` files in name order, up to ``max_bytes`` in total."""
    root = sysconfig.get_paths()["stdlib"]
    files, total = [], 0
    for name in sorted(glob.glob(os.path.join(root, "*.py"))):
        size = os.path.getsize(name)
        if total + size > max_bytes and files:
            continue
        files.append(Path(name))
        total += size
    if len(files) < 2:
        raise ValueError(f"max_bytes: the corpus needs at least 2 files, found {len(files)} under {root}")
    return files


@functools.lru_cache(maxsize=None)
def stdlib_corpus(seed: int, max_bytes: int = CORPUS_MAX_BYTES) -> Corpus:
    """Bytes of the standard library's sources, split into train and validation by file.

    ``seed`` permutes the files; the first ``CORPUS_VALID_FRACTION`` of them (at least one) are the
    validation stream. Files are joined with a newline.
    """
    files = stdlib_files(max_bytes)
    perm = np.random.default_rng(seed).permutation(len(files))
    num_valid = max(1, int(round(len(files) * CORPUS_VALID_FRACTION)))
    streams = []
    for idx in (perm[num_valid:], perm[:num_valid]):
        chunks = [files[i].read_bytes() + b"\n" for i in sorted(idx)]
        streams.append(np.frombuffer(b"".join(chunks), dtype=np.uint8))
    return Corpus(*_device(*streams))
