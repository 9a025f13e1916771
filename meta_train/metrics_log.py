"""Where meta-training reports go: ``metrics.jsonl``, TensorBoard events, and a progress bar.

``metrics.jsonl`` holds one JSON object per logged outer step (``{"step": ..., "meta_loss": ...}``).
On resume from outer step N, records after N are dropped (they are about to be recomputed) and the
TensorBoard writer purges events after N, so a resumed run's logs read like an uninterrupted one's.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any

__all__ = ["METRICS_FILE", "truncate_metrics", "read_metrics", "MetricsLogger", "progress_bar"]

METRICS_FILE = "metrics.jsonl"


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else (1e308 if value > 0 else -1e308)
    return value


def truncate_metrics(path: str, last_step: int) -> None:
    """Keeps only the records of ``path`` with ``step <= last_step`` (and drops a torn last line)."""
    if not os.path.exists(path):
        return
    kept = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and record.get("step", -1) <= last_step:
                kept.append(line if line.endswith("\n") else line + "\n")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(kept)
    os.replace(tmp, path)


def read_metrics(path: str) -> list[dict]:
    """The records of a ``metrics.jsonl`` file."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class MetricsLogger:
    """Appends metrics records to ``metrics.jsonl`` and TensorBoard; only process 0 writes.

    Args:
      run_dir: the run folder.
      start_step: the outer step the run (re)starts from; later records are dropped.
      enabled: False on processes other than 0 of a multi-host run.
    """

    def __init__(self, run_dir: str, start_step: int, enabled: bool = True):
        self.enabled = enabled
        self._file = None
        self._writer = None
        if not enabled:
            return
        path = os.path.join(run_dir, METRICS_FILE)
        truncate_metrics(path, start_step)
        self._file = open(path, "a", encoding="utf-8")
        from tensorboardX import SummaryWriter  # slow import: only when a run starts

        self._writer = SummaryWriter(logdir=run_dir, purge_step=start_step + 1 if start_step else None,
                                     flush_secs=30)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """Writes one record; ``metrics`` holds Python scalars."""
        if not self.enabled:
            return
        record = {"step": int(step)}
        record.update({k: _finite_or_none(v) for k, v in metrics.items()})
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        for name, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(name, value, global_step=int(step))

    def flush(self) -> None:
        if self.enabled:
            self._file.flush()
            self._writer.flush()

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            self._writer.close()
            self.enabled = False


def progress_bar(total: int, initial: int, name: str, enabled: bool = True):
    """A tqdm bar on stderr counting outer steps (its ETA is the time left)."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=name, unit="step", file=sys.stderr,
                disable=not enabled, dynamic_ncols=True, mininterval=0.5)
