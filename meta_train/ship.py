"""Ships a finished meta-training run as a pretrained learned optimizer inside the package.

``python -m meta_train.ship RUN_DIR NAME --description ... --command ...`` writes the run's theta to
``metaopt/pretrained_weights/NAME`` with a record of what made it: the resolved config, the code
version, the command that reproduces the run and its meta-training time. ``metaopt.pretrained(NAME,
num_steps)`` then loads it (``metaopt.shipped``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

from metaopt import checkpoint, shipped

__all__ = ["package_run", "main"]


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
    that made it, and the cost of the shipped weights it started from, if any).

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
    init_theta = (metadata.get("run_config") or {}).get("init_theta")
    if init_theta:
        cost += f", starting from {init_theta}"
        if checkpoint.shipped_path(init_theta) is not None:
            cost += f" ({shipped.info(init_theta).cost})"
    metadata["pretrained"] = {
        "name": name,
        "description": description,
        "command": command,
        "cost": cost,
        "code_version": _code_version(Path(__file__).resolve().parent.parent),
        "config": config_text,
    }
    root = shipped.weights_root() if out_root is None else Path(out_root)
    return checkpoint.save(root / name, lopt, theta, metadata=metadata, overwrite=overwrite)


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m meta_train.ship RUN_DIR NAME --description ... --command ...``."""
    parser = argparse.ArgumentParser(prog="python -m meta_train.ship",
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


if __name__ == "__main__":
    sys.exit(main())
