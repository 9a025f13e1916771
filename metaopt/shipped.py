"""Meta-trained learned optimizers shipped inside the package, usable with no network.

Each shipped optimizer is a ``metaopt.save`` folder under ``metaopt/pretrained_weights/NAME`` whose
metadata records what made it: the meta-training config, the code version, the command that
reproduces it and what it cost. ``pretrained(name, num_steps)`` returns the ready optax transform.

Example::

    tx = metaopt.pretrained("mulo-mlp", num_steps=5000)
    tx = optax.chain(optax.clip_by_global_norm(1.0), tx)
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple, Optional

import optax

from metaopt import checkpoint

__all__ = [
    "WEIGHTS_PACKAGE", "PretrainedInfo", "info", "list_pretrained", "load_pretrained", "pretrained",
    "package_run", "main",
]

WEIGHTS_PACKAGE = "metaopt.pretrained_weights"


class PretrainedInfo(NamedTuple):
    """What a shipped learned optimizer is and how it was made."""

    name: str
    description: str
    kind: str
    command: str
    cost: str
    path: Path


def _weights_root() -> Path:
    return Path(str(importlib.resources.files(WEIGHTS_PACKAGE)))


def _names() -> list[str]:
    root = _weights_root()
    return sorted(p.name for p in root.iterdir() if checkpoint.is_checkpoint(p))


def _path(name: str) -> Path:
    """The folder of the shipped learned optimizer ``name``; ``ValueError`` listing the shipped ones."""
    names = _names()
    if name not in names:
        raise ValueError(f"name: no pretrained learned optimizer {name!r}; shipped: {names}")
    return _weights_root() / name


def info(name: str) -> PretrainedInfo:
    """The record of the shipped learned optimizer ``name`` (read from its manifest; theta is not loaded).

    Raises:
      ValueError: ``name`` is not shipped (the message lists the shipped names).
    """
    path = _path(name)
    record = checkpoint.load_metadata(path).get("pretrained", {})
    return PretrainedInfo(name=name, description=record.get("description", ""),
                          kind=checkpoint.load_kind(path), command=record.get("command", ""),
                          cost=record.get("cost", ""), path=path)


def list_pretrained() -> list[PretrainedInfo]:
    """Every shipped learned optimizer, with a one-line description, its command and its cost."""
    return [info(name) for name in _names()]


def load_pretrained(name: str) -> tuple[Any, Any]:
    """``(lopt, theta)`` of the shipped learned optimizer ``name``."""
    return checkpoint.load(_path(name))


def pretrained(name: str, num_steps: int, **transform_kwargs) -> optax.GradientTransformationExtraArgs:
    """The optax transform of a shipped learned optimizer for a run of ``num_steps`` steps.

    Args:
      name: a shipped name (see ``pretrained.list()``).
      num_steps: the length of the training run (the time features use it).
      **transform_kwargs: passed to the learned optimizer's ``transform`` (``param_meta=``,
        ``roles=``, ``multipliers=``, ``base_params=`` for µP roles; ``base=`` for a schedule).

    Returns:
      An ``optax.GradientTransformationExtraArgs``; pass ``loss=`` to ``update`` where the
      optimizer's features use it.
    """
    lopt, theta = load_pretrained(name)
    return lopt.transform(theta, num_steps, **transform_kwargs)


def _code_version(root: Path) -> str:
    from metaopt import __version__

    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return f"metaopt {__version__} (commit {commit})"


def _meta_training_seconds(run_dir: Path) -> Optional[float]:
    """Wall-clock seconds of meta-training, from the last record of the run's metrics.jsonl."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    last = None
    for line in path.read_text().splitlines():
        if line.strip():
            last = json.loads(line)
    if not last:
        return None
    for name in ("elapsed_s", "wall_s", "time_s"):
        if name in last:
            return float(last[name])
    return None


def package_run(run_dir: Any, name: str, description: str, command: str, *,
                out_root: Any = None, overwrite: bool = False) -> Path:
    """Turns a finished meta-training run into a shipped learned optimizer.

    The record stored beside theta names the config (its full resolved text), the code version,
    the command that reproduces the run and its cost (wall-clock meta-training time on the machine
    that made it).

    Args:
      run_dir: a ``meta_train`` run folder.
      name: the shipped name (e.g. ``"mulo-mlp"``).
      description: one line saying what it is.
      command: the exact command that reproduces the run.
      out_root: where to write (default: the package's ``pretrained_weights`` folder).
      overwrite: replace an existing shipped optimizer of that name.

    Returns:
      The written folder.
    """
    run_dir = Path(run_dir)
    lopt, theta = checkpoint.load(run_dir)
    metadata = dict(checkpoint.load_metadata(run_dir))
    seconds = _meta_training_seconds(run_dir)
    config_text = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").is_file() else ""
    cost = (f"{seconds / 60:.0f} minutes of meta-training on 2 CPU cores" if seconds is not None
            else "unknown")
    metadata["pretrained"] = {
        "name": name,
        "description": description,
        "command": command,
        "cost": cost,
        "code_version": _code_version(Path(__file__).resolve().parent.parent),
        "config": config_text,
    }
    root = _weights_root() if out_root is None else Path(out_root)
    return checkpoint.save(root / name, lopt, theta, metadata=metadata, overwrite=overwrite)


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m metaopt.shipped RUN_DIR NAME --description ... --command ...``."""
    parser = argparse.ArgumentParser(prog="python -m metaopt.shipped",
                                     description="Ship a meta-training run as a pretrained learned optimizer.")
    parser.add_argument("run_dir")
    parser.add_argument("name")
    parser.add_argument("--description", required=True)
    parser.add_argument("--command", required=True)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        path = package_run(args.run_dir, args.name, args.description, args.command,
                           overwrite=args.overwrite)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"shipped {args.name} at {path}")
    return 0


pretrained.list = list_pretrained  # type: ignore[attr-defined]
pretrained.info = info  # type: ignore[attr-defined]
pretrained.load = load_pretrained  # type: ignore[attr-defined]


if __name__ == "__main__":
    sys.exit(main())
